"""Two versions of embedtune on the same machine in one run: training steps and evaluation, alternated.

    .venv/bin/python -m benchmarks.paired_versions --before main --data-dir ../shared/data [--rounds 3]

`--before` is a git revision (checked out once as a worktree under /tmp) or a folder holding another checkout, and
`--after` the working tree (default).
Each round runs a short `embedtune train` and an `embedtune eval` with each version, the order flipping every
round, so that a machine that slows down or speeds up mid-run hurts both alike. Both run under the same process
set-up (the allocator and kernel-cache limits of the after version's runtime) and the same explicit precision.
Printed: per version the median step seconds (steps after the first two), peak RSS and evaluation seconds, the
ratios after/before, and both versions' losses and scores (equal up to rounding when behaviour is unchanged).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SKIPPED_STEPS = 2  # kernel compiles and allocator warm-up


def worktree(revision: str) -> Path:
    """A checkout of `revision`: the folder itself when it is one, else a worktree of this repository."""
    if (Path(revision) / "src" / "embedtune").is_dir():
        return Path(revision).resolve()
    sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", revision], check=True,
                         capture_output=True, text=True).stdout.strip()
    path = Path(tempfile.gettempdir()) / f"embedtune-{sha}"
    if not (path / "src" / "embedtune").is_dir():
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(path), sha], check=True,
                       capture_output=True)
    return path


def environment(tree: Path) -> dict[str, str]:
    from embedtune.runtime import RELAUNCHED_ENV, runtime_environment

    # Both versions relaunch themselves under the allocator; setting it here and marking the process as relaunched
    # gives both exactly the same set-up.
    return {**os.environ, **runtime_environment(), RELAUNCHED_ENV: "1", "PYTHONPATH": str(tree / "src")}


def embedtune(tree: Path, args: list[str]) -> None:
    command = [sys.executable, "-P", "-m", "embedtune", *args]
    done = subprocess.run(command, env=environment(tree), cwd=tree, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{tree.name}: {' '.join(args[:1])} failed:\n{done.stderr[-2000:]}")


def train_once(tree: Path, work: Path, args: argparse.Namespace) -> dict:
    out = work / "train"
    embedtune(tree, ["train", "--model", args.model, "--data-dir", args.data_dir, "--output-dir", str(out),
                     "--max-steps", str(args.steps), "--batch-size", str(args.batch), "--eval-steps", "0",
                     "--save-steps", "100000", "--precision", args.precision, "--lr", "1e-4"])
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    return {"step_s": statistics.median(e["seconds"] for e in steps[SKIPPED_STEPS:]),
            "peak_rss_gb": max(e["peak_rss_gb"] for e in steps), "losses": [e["loss"] for e in steps]}


def eval_once(tree: Path, work: Path, args: argparse.Namespace) -> dict:
    out = work / "eval.json"
    embedtune(tree, ["eval", "--model", args.model, "--data-dir", args.data_dir, "--tasks", *args.tasks,
                     "--precision", args.precision, "--output", str(out)])
    result = json.loads(out.read_text())
    return {"eval_s": result["seconds"], "average": result["average"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="git revision (or checkout folder) of the reference version")
    parser.add_argument("--after", default=str(REPO), help="folder of the version to compare (default: this tree)")
    parser.add_argument("--data-dir", default=os.environ.get("EMBEDTUNE_DATA_DIR", "../shared/data"))
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--tasks", nargs="+", default=["stsbenchmark", "biosses"])
    args = parser.parse_args()
    args.data_dir = str(Path(args.data_dir).resolve())
    trees = {"before": worktree(args.before), "after": Path(args.after).resolve()}
    runs: dict[str, list[dict]] = {name: [] for name in trees}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            order = list(trees) if round_ % 2 == 0 else list(trees)[::-1]
            for name in order:
                work = Path(tmp) / f"{name}-{round_}"
                result = train_once(trees[name], work, args) | eval_once(trees[name], work, args)
                runs[name].append(result)
                print(f"round {round_ + 1} {name}: {result['step_s']:.3f} s/step, peak RSS "
                      f"{result['peak_rss_gb']:.2f} GB, eval {result['eval_s']:.1f} s", flush=True)
    summary = {name: {key: statistics.median(r[key] for r in rs) for key in ("step_s", "peak_rss_gb", "eval_s")}
               for name, rs in runs.items()}
    for name, values in summary.items():
        print(f"{name}\t" + "\t".join(f"{k} {v:.3f}" for k, v in values.items()))
    for key in ("step_s", "peak_rss_gb", "eval_s"):
        print(f"ratio after/before {key} {summary['after'][key] / summary['before'][key]:.3f}")
    for name, rs in runs.items():
        print(f"{name} losses {rs[0]['losses']} eval average {rs[0]['average']:.4f}")


if __name__ == "__main__":
    main()
