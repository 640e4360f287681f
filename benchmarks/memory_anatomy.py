"""Where training memory goes, step by step: peak RSS against live malloc bytes, per allocator.

Trains Gemma-3-270M with embedtune's defaults for a few steps in one subprocess per allocator setting and prints,
for each step, the step time, the process's peak RSS so far and the largest number of bytes malloc had handed
out at once (glibc only: mallinfo2). The gap between the two is heap memory that freed tensors left resident.

    .venv/bin/python -m benchmarks.memory_anatomy --data-dir ../shared/data [--batch 32] [--steps 12]

Settings, run one after the other: `mimalloc` (what the `embedtune` command does) and `glibc` (EMBEDTUNE_ALLOCATOR=
system), both with embedtune's kernel-cache limits; `glibc-default-caches` adds the libraries' default cache sizes.
The per-step figures come from a training callback (`embedtune.training.callbacks.Callback.on_step_end`, called
after each optimiser step with the step's metrics event).
"""
from __future__ import annotations

if not __package__:  # started as a file (python benchmarks/X.py): re-run as python -m benchmarks.X
    import _bootstrap  # noqa: F401

import argparse
import ctypes
import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from benchmarks import harness


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def live_malloc_gb(libc) -> float:
    info = libc.mallinfo2()
    return (info.uordblks + info.hblkhd) / 2 ** 30


class LiveMalloc:
    """The largest number of bytes glibc's malloc had handed out at once since the last `take()`, sampled every
    5 ms by a thread; None under another allocator (mallinfo2 describes glibc's heap only)."""

    def __init__(self):
        self.glibc = "mimalloc" not in os.environ.get("LD_PRELOAD", "")
        self.peak = 0.0
        if self.glibc:
            self.libc = ctypes.CDLL("libc.so.6")
            self.libc.mallinfo2.restype = MallInfo2
            threading.Thread(target=self.sample, daemon=True).start()

    def sample(self) -> None:
        while True:
            self.peak = max(self.peak, live_malloc_gb(self.libc))
            time.sleep(0.005)

    def take(self, event: dict) -> dict:
        """For harness.StepLog: this step's live peak, then start the next step's from zero."""
        peak, self.peak = self.peak, 0.0
        return {"live_gb": round(peak, 3) if self.glibc else None}


def worker(args) -> list[dict]:
    """Train in this process; a callback keeps each step's event with the largest live malloc figure."""
    from embedtune.config import Config
    from embedtune.training.trainer import train

    live = LiveMalloc()
    work = Path(args.out_dir)
    harness.write_triplets(work / "triplets.tsv", harness.shared_triplets(args.data_dir, args.batch * args.steps))
    config = Config.from_dict({
        "model": {"name": args.model},
        "data": {"train_files": [str(work / "triplets.tsv")], "decontaminate": False},
        "train": {"output_dir": str(work / "run"), "batch_size": args.batch, "max_steps": args.steps,
                  "precision": "bf16", "eval_steps": 0, "save_steps": args.steps, "seed": 0},
    }).validate()
    log = harness.StepLog(extra=live.take)
    train(config, callbacks=[log])
    return log.steps


WORKERS = {"train": worker}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.add_common_options(parser)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=12)
    harness.add_worker_options(parser, WORKERS)
    parser.add_argument("--out-dir", help=argparse.SUPPRESS)
    return parser


def settings() -> dict[str, dict[str, str]]:
    """The three process environments, from this one without any preloaded allocator."""
    base = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    return {
        "mimalloc": harness.embedtune_runtime(base),
        "glibc": harness.embedtune_runtime(base, allocator="system"),
        "glibc-default-caches": harness.library_defaults(base),
    }


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if harness.run_worker(args, WORKERS):
        return
    for name, env in settings().items():
        with tempfile.TemporaryDirectory() as out:
            result = Path(out) / "result.json"
            command = harness.module_command(__name__, "--worker", "train", "--out-dir", out, "--result", str(result),
                                             "--data-dir", args.data_dir, "--model", args.model,
                                             "--batch", str(args.batch), "--steps", str(args.steps))
            subprocess.run(command, env=harness.child_env(env), check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            steps = harness.read_json(result)
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
