"""Where training memory goes, step by step: peak RSS against live malloc bytes, per allocator.

Trains Gemma-3-270M with embedtune's defaults for a few steps in one subprocess per allocator setting and prints,
for each step, the step time, the process's peak RSS so far and the largest number of bytes malloc had handed
out at once (glibc only: mallinfo2). The gap between the two is heap memory that freed tensors left resident.

    .venv/bin/python benchmarks/memory_anatomy.py --data-dir ../shared/data [--batch 32] [--steps 12]

Settings, run one after the other: `mimalloc` (what the `embedtune` command does) and `glibc` (EMBEDTUNE_ALLOCATOR=
system), both with embedtune's kernel-cache limits; `glibc-default-caches` adds the libraries' default cache sizes.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def live_malloc_gb(libc) -> float:
    info = libc.mallinfo2()
    return (info.uordblks + info.hblkhd) / 2 ** 30


def worker(args) -> None:
    """Train in this process; a sampler thread records the largest live malloc figure per step."""
    sys.path.insert(0, str(HERE))
    from compare_peer import shared_triplets, write_triplets

    from embedtune.config import Config
    from embedtune.training import trainer

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    glibc = "mimalloc" not in os.environ.get("LD_PRELOAD", "")
    live_peak = [0.0]

    def sample() -> None:
        while True:
            live_peak[0] = max(live_peak[0], live_malloc_gb(libc))
            time.sleep(0.005)

    if glibc:
        threading.Thread(target=sample, daemon=True).start()
    work = Path(args.out_dir)
    write_triplets(work / "triplets.tsv", shared_triplets(args.data_dir, args.batch * args.steps))
    config = Config.from_dict({
        "model": {"name": args.model},
        "data": {"train_files": [str(work / "triplets.tsv")], "decontaminate": False},
        "train": {"output_dir": str(work / "run"), "batch_size": args.batch, "max_steps": args.steps,
                  "precision": "bf16", "eval_steps": 0, "save_steps": args.steps, "seed": 0},
    }).validate()
    peaks: list[float] = []
    original = trainer.MetricsLog.write

    def write(self, event: dict) -> None:  # called once per step, after the optimiser step
        peaks.append(round(live_peak[0], 3) if glibc else None)
        live_peak[0] = 0.0
        original(self, event)

    trainer.MetricsLog.write = write
    trainer.train(config)
    steps = [json.loads(line) for line in (work / "run" / trainer.METRICS).read_text().splitlines()]
    Path(args.result).write_text(json.dumps([{**e, "live_gb": p} for e, p in zip(steps, peaks)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--out-dir")
    parser.add_argument("--result")
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    from embedtune.runtime import KERNEL_CACHE_DEFAULTS, runtime_environment

    base = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    settings = {
        "mimalloc": {**base, **runtime_environment(base)},
        "glibc": {**base, **runtime_environment({**base, "EMBEDTUNE_ALLOCATOR": "system"})},
        "glibc-default-caches": {**base, **KERNEL_CACHE_DEFAULTS},
    }
    for name, env in settings.items():
        with tempfile.TemporaryDirectory() as out:
            result = Path(out) / "result.json"
            subprocess.run([sys.executable, __file__, "--worker", "--out-dir", out, "--result", str(result),
                            "--data-dir", args.data_dir, "--model", args.model, "--batch", str(args.batch),
                            "--steps", str(args.steps)], env=env, check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            steps = json.loads(result.read_text())
        print(f"\n{name} (batch {args.batch})")
        print(f"{'step':>5}{'s/step':>9}{'peak RSS GB':>13}{'live malloc GB':>16}")
        for e in steps:
            live = f"{e['live_gb']:.2f}" if e["live_gb"] is not None else "-"
            print(f"{e['step']:>5}{e['seconds']:>9.2f}{e['peak_rss_gb']:>13.2f}{live:>16}")
        seconds = sorted(e["seconds"] for e in steps[2:])
        print(f"{name}: median s/step (steps 3+) {seconds[len(seconds) // 2]:.2f}, "
              f"peak RSS {max(e['peak_rss_gb'] for e in steps):.2f} GB")


if __name__ == "__main__":
    main()
