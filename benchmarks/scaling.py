"""Scaling: real tokens/s and peak memory of one process against K ranks (torchrun, DDP) on the same machine.

On a CPU the comparison is at equal total threads: one process with T threads against K ranks with T/K each,
all on the same global batch and steps. On a GPU (`--device cuda`) it measures the cost of the DDP wrapper: one
plain process against `torchrun --nproc_per_node 1` (the same training through DDP and its all-reduce), and
against K ranks when the machine has K GPUs.

    .venv/bin/python -m benchmarks.scaling --data-dir ../shared/data [--model gemma3-270m] [--ranks 2]
        [--threads 2] [--batch 32] [--steps 8] [--device cpu|cuda]

Tokens/s are the global batch's real tokens over the step time, as metrics.jsonl logs them, median over the
steps after the first two (warm-up); peak memory is the largest sum of the resident memory of every process of a
run (the launcher included), sampled every 0.1 s. It prints one line per setting and the ratios against one
process; it asserts nothing.
"""
from __future__ import annotations

if not __package__:  # started as a file (python benchmarks/X.py): re-run as python -m benchmarks.X
    import _bootstrap  # noqa: F401

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks import harness

WARMUP_STEPS = 2


def training_command(args: argparse.Namespace, out: Path) -> list[str]:
    return ["-m", "embedtune", "train", "--model", args.model, "--data-dir", args.data_dir, "--output-dir", str(out),
            "--batch-size", str(args.batch), "--max-steps", str(args.steps), "--eval-steps", "0",
            "--save-steps", str(10 ** 9), "--device", args.device, "--max-train-samples", str(args.batch * args.steps)]


def peak_tree_rss_gb(process: subprocess.Popen, stop: threading.Event, result: dict) -> None:
    import psutil

    root = psutil.Process(process.pid)
    while not stop.is_set():
        try:
            tree = [root, *root.children(recursive=True)]
            total = sum(p.memory_info().rss for p in tree if p.is_running())
            result["peak"] = max(result.get("peak", 0.0), total / 2 ** 30)
        except psutil.Error:
            pass
        time.sleep(0.1)


def measure(args: argparse.Namespace, name: str, ranks: int | None, threads: int) -> dict:
    """One training run: `ranks` None is a plain process, else torchrun with that many ranks."""
    with tempfile.TemporaryDirectory(prefix="scaling-") as folder:
        out = Path(folder) / "run"
        launcher = [] if ranks is None else ["-m", "torch.distributed.run", "--standalone",
                                             f"--nproc_per_node={ranks}"]
        command = [sys.executable, *launcher, *training_command(args, out)]
        print(f"  running {name} ({threads} thread(s) per process)", flush=True)
        started = time.perf_counter()
        process = subprocess.Popen(command, env=harness.child_env(harness.embedtune_runtime(), threads=threads),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        stop, memory = threading.Event(), {}
        sampler = threading.Thread(target=peak_tree_rss_gb, args=(process, stop, memory), daemon=True)
        sampler.start()
        _, err = process.communicate()
        stop.set()
        sampler.join()
        if process.returncode:
            raise SystemExit(f"{name} failed:\n{err[-3000:]}")
        events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [e for e in events if "tokens_per_s" in e][WARMUP_STEPS:]
    return {"name": name, "tokens_per_s": statistics.median(e["tokens_per_s"] for e in steps),
            "step_s": statistics.median(e["seconds"] for e in steps), "peak_gb": memory.get("peak", float("nan")),
            "wall_s": time.perf_counter() - started}


def settings(args: argparse.Namespace) -> list[tuple[str, int | None, int]]:
    if args.device == "cpu":
        per_rank = max(1, args.threads // args.ranks)
        return [("1 process", None, args.threads), (f"{args.ranks} ranks", args.ranks, per_rank)]
    found = [("1 process", None, args.threads), ("DDP, 1 rank", 1, args.threads)]
    return found + ([(f"DDP, {args.ranks} ranks", args.ranks, args.threads)] if args.ranks > 1 else [])


def main() -> None:
    parser = harness.add_common_options(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="CPU: total threads, shared equally by the ranks")
    parser.add_argument("--batch", type=int, default=32, help="global batch (triplets per step)")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    if args.batch % args.ranks:
        parser.error(f"--batch {args.batch} must be divisible by --ranks {args.ranks}")
    print(f"scaling: {args.model}, global batch {args.batch}, {args.steps} steps, device {args.device}")
    results = [measure(args, *setting) for setting in settings(args)]
    base = results[0]
    print(f"{'setting':<16} {'tokens/s':>10} {'step s':>8} {'peak GB':>8} {'wall s':>8}")
    for r in results:
        print(f"{r['name']:<16} {r['tokens_per_s']:>10.0f} {r['step_s']:>8.2f} {r['peak_gb']:>8.2f} "
              f"{r['wall_s']:>8.1f}")
    for r in results[1:]:
        print(f"ratio {r['name'].replace(' ', '_').replace(',', '')}_vs_1_process tokens_per_s "
              f"{r['tokens_per_s'] / base['tokens_per_s']:.2f} peak_memory {r['peak_gb'] / base['peak_gb']:.2f}")


if __name__ == "__main__":
    main()
