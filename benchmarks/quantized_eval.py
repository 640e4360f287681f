"""int8 dynamic quantisation for evaluation: nine-set scores and wall time against fp32, in one run.

    .venv/bin/python -m benchmarks.quantized_eval --data-dir ../shared/data [--isa AVX2] [--tasks ...]

Runs `embedtune eval --precision fp32` and `embedtune eval --quantize int8` on the same model and sets, one after
the other. `--isa AVX2` limits oneDNN and MKL to AVX2 (ONEDNN_MAX_CPU_ISA, MKL_ENABLE_INSTRUCTIONS), as on a CPU
without AMX or AVX-512; fbgemm, which runs the int8 matmuls, has no such switch and keeps the CPU's own ISA, so
on an AVX-512 machine the int8 side is measured with its faster kernels. Prints each task's scores, the largest
and the average difference, and the time ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ISA_ENV = {"AVX2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}}


def evaluate(args: argparse.Namespace, extra: list[str], out: Path) -> dict:
    env = {**os.environ, **ISA_ENV.get(args.isa or "", {})}
    command = [sys.executable, "-m", "embedtune", "-q", "eval", "--model", args.model, "--data-dir", args.data_dir,
               "--output", str(out), *extra] + (["--tasks", *args.tasks] if args.tasks else [])
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("EMBEDTUNE_DATA_DIR", "../shared/data"))
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--isa", choices=sorted(ISA_ENV), help="limit oneDNN/MKL to this instruction set")
    parser.add_argument("--tasks", nargs="+", help="default: all nine")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = evaluate(args, ["--precision", "fp32"], Path(tmp) / "fp32.json")
        int8 = evaluate(args, ["--quantize", "int8"], Path(tmp) / "int8.json")
    print(f"isa {args.isa or 'native'}\tmodel {args.model}")
    print("task\tfp32\tint8\tdiff")
    for name, task in fp32["tasks"].items():
        other = int8["tasks"][name]["spearman"]
        print(f"{name}\t{task['spearman']:.2f}\t{other:.2f}\t{other - task['spearman']:+.2f}")
    diffs = [int8["tasks"][n]["spearman"] - t["spearman"] for n, t in fp32["tasks"].items()]
    print(f"average\t{fp32['average']:.2f}\t{int8['average']:.2f}\t{int8['average'] - fp32['average']:+.2f}")
    print(f"largest task difference {max(map(abs, diffs)):.2f}")
    print(f"seconds fp32 {fp32['seconds']:.1f} int8 {int8['seconds']:.1f}")
    print(f"ratio eval_speed int8/fp32 {fp32['seconds'] / int8['seconds']:.2f}")


if __name__ == "__main__":
    main()
