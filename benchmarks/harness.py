"""What the benchmark scripts share, written once.

- command line: the common options (`--data-dir`, `--model`, `--device`) and the worker options;
- processes: worker subprocesses (`spawn`: `python -m benchmarks.X --worker KIND --result FILE ...`), their
  environment (embedtune's runtime set-up from `embedtune.runtime`, or the libraries' defaults) and thread
  settings;
- measurements: the bf16 matmul probe that efficiency figures are rated against, peak RSS and GPU memory, a
  training callback that keeps each step's event;
- files: result JSON, TSV tables and the shared triplets (read with csv, never by splitting lines).

Importing this module is cheap (no torch): a worker's environment is decided before torch loads.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from embedtune.training.callbacks import Callback, TrainState

ROOT = Path(__file__).resolve().parent.parent  # the repository root, whose `benchmarks` package this is
PACKAGE = Path(__file__).resolve().parent.name
DEFAULT_DATA_DIR = "../shared/data"
DEFAULT_MODEL = "gemma3-270m"
QUICK_TASKS = ["sts17", "biosses", "stsbenchmark"]  # the quick quality check: the three smallest-to-load sets
TRIPLET_COLUMNS = ("sent0", "sent1", "hard_neg")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
Workers = Mapping[str, Callable[[argparse.Namespace], Any]]


# ---- command line ------------------------------------------------------------------------------------------

def add_common_options(parser: argparse.ArgumentParser, *, data_dir: str | None = DEFAULT_DATA_DIR,
                       model: str | None = DEFAULT_MODEL, device: str | None = None,
                       device_help: str | None = None) -> argparse.ArgumentParser:
    """--data-dir (default None: $EMBEDTUNE_DATA_DIR), --model unless `model` is None, --device when
    `device_help` is given."""
    parser.add_argument("--data-dir", default=data_dir,
                        help="holds sts/<task>/<split>.tsv and nli/triplets/" + (
                            "" if data_dir else " (default: $EMBEDTUNE_DATA_DIR)"))
    if model is not None:
        parser.add_argument("--model", default=model, help=f"model alias, folder or hub id (default {model})")
    if device_help is not None:
        parser.add_argument("--device", default=device, help=device_help)
    return parser


def add_worker_options(parser: argparse.ArgumentParser, workers: Workers) -> None:
    """--worker KIND and --result FILE: how `spawn` starts one of this script's workers (hidden from --help)."""
    parser.add_argument("--worker", choices=list(workers), help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)


def run_worker(args: argparse.Namespace, workers: Workers) -> bool:
    """In a worker process: run the worker named by --worker and write its result; False when not a worker."""
    if not getattr(args, "worker", None):
        return False
    write_json(args.result, workers[args.worker](args))
    return True


def option_flags(options: Mapping[str, Any]) -> list[str]:
    """{"out_dir": p, "tasks": [a, b], "x": None} -> ["--out-dir", p, "--tasks", a, b] (None: left out)."""
    flags: list[str] = []
    for key, value in options.items():
        if value is None:
            continue
        flags.append(f"--{key.replace('_', '-')}")
        flags += [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]
    return flags


# ---- processes ---------------------------------------------------------------------------------------------

def embedtune_runtime(base: Mapping[str, str] | None = None, allocator: str | None = None) -> dict[str, str]:
    """`base` (default os.environ) plus what the `embedtune` command sets up: mimalloc preloaded (unless
    `allocator` is "system") and bounded kernel caches (embedtune/runtime.py)."""
    from embedtune.runtime import ALLOCATOR_ENV, runtime_environment

    base = dict(os.environ if base is None else base)
    probe = {**base, ALLOCATOR_ENV: allocator} if allocator else base
    return {**base, **runtime_environment(probe)}


def library_defaults(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """`base` (default os.environ) with the libraries' own kernel-cache sizes, as a peer's users run it
    (importing embedtune in a process would otherwise cap them)."""
    from embedtune.runtime import KERNEL_CACHE_DEFAULTS

    return {**(os.environ if base is None else base), **KERNEL_CACHE_DEFAULTS}


def child_env(env: Mapping[str, str] | None = None, threads: int | None = None) -> dict[str, str]:
    """A worker's environment: `env` (default os.environ), the repository root importable (so that
    `-m benchmarks.X` works from any folder), and `threads` intra-op threads when given."""
    env = dict(os.environ if env is None else env)
    paths = [str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(ROOT)]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    if threads is not None:
        env.update({name: str(threads) for name in THREAD_VARIABLES})
    return env


def module_name(script_module: str) -> str:
    """'benchmarks.levers' for a script's __name__ ('__main__' when started with -m) or a short name."""
    if script_module == "__main__":
        spec = sys.modules["__main__"].__spec__
        return spec.name if spec is not None else f"{PACKAGE}.{Path(sys.argv[0]).stem}"
    return script_module if "." in script_module else f"{PACKAGE}.{script_module}"


def module_command(module: str, *args: str) -> list[str]:
    """The command line that runs benchmark `module` (e.g. 'compare_peer') with this Python."""
    return [sys.executable, "-m", module_name(module), *args]


def spawn(module: str, kind: str, env: Mapping[str, str] | None = None, threads: int | None = None,
          quiet: bool = True, **options: Any) -> dict:
    """Run worker `kind` of benchmark `module` in its own process (so that its peak memory is its own);
    `options` become its flags. Its stdout is dropped when `quiet`; a failure raises CalledProcessError."""
    with tempfile.TemporaryDirectory(prefix="benchmark-worker-") as folder:
        result = Path(folder) / "result.json"
        command = module_command(module, "--worker", kind, "--result", str(result), *option_flags(options))
        print(f"  running {kind} {options.get('side', '')} {options.get('batch', '')}".rstrip(), flush=True)
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL if quiet else None,
                       env=child_env(env, threads))
        return read_json(result)


# ---- measurements ------------------------------------------------------------------------------------------

def peak_rss_gb() -> float:
    """Peak resident memory of this process so far, GiB."""
    from embedtune.training.metrics import peak_rss_gb as peak

    return peak()


def cuda_in_use() -> bool:
    """Whether this process has used CUDA (never true with the CPU build of torch)."""
    import torch

    return torch.cuda.is_available() and torch.cuda.is_initialized()


def synchronize() -> None:
    """Wait for queued GPU work, so that wall-clock timings include it (CUDA kernels run asynchronously)."""
    import torch

    if cuda_in_use():
        torch.cuda.synchronize()


def peak_gpu_memory() -> dict[str, float]:
    """Peak GPU memory of this process in GiB: held by tensors (max_memory_allocated) and by the caching
    allocator (max_memory_reserved); empty when the process never used CUDA."""
    import torch

    if not cuda_in_use():
        return {}
    return {"peak_gpu_gb": torch.cuda.max_memory_allocated() / 1024 ** 3,
            "peak_gpu_reserved_gb": torch.cuda.max_memory_reserved() / 1024 ** 3}


def matmul_probe_rates(seconds: float = 3.0, device: str = "cpu") -> list[float]:
    """GFLOP/s of single square bf16 products on `device`, looped for `seconds` (two sizes, half the time each)."""
    import torch

    rates = []
    wait = synchronize if device != "cpu" else lambda: None
    for n in ((1024, 2048) if device == "cpu" else (4096, 8192)):
        a = torch.randn(n, n, dtype=torch.bfloat16, device=device)
        b = torch.randn(n, n, dtype=torch.bfloat16, device=device)
        a @ b
        end = time.perf_counter() + seconds / 2
        while True:
            wait()
            start = time.perf_counter()
            a @ b
            wait()
            rates.append(2 * n ** 3 / (time.perf_counter() - start) / 1e9)
            if time.perf_counter() >= end:  # at least one timed product per size, however short the budget
                break
    return rates


def matmul_peak_gflops(seconds: float = 3.0, device: str = "cpu") -> float:
    """bf16 matmul peak of this machine's `device`, measured now (best of several square products)."""
    return max(matmul_probe_rates(seconds, device))


def timed_evaluation(evaluator, embedder) -> dict:
    """An STSEvaluator's result with "seconds" timed here, unrounded (the evaluator rounds to 10 ms, which reads
    0 for a small set)."""
    start = time.perf_counter()
    result = evaluator(embedder)
    return {**result, "seconds": time.perf_counter() - start}


class StepLog(Callback):
    """Keeps every training step's event (what metrics.jsonl gets), plus `extra(event)` merged into it."""

    def __init__(self, extra: Callable[[dict], dict] | None = None):
        self.steps: list[dict] = []
        self.extra = extra

    def on_step_end(self, state: TrainState, event: dict) -> None:
        self.steps.append({**event, **(self.extra(event) if self.extra else {})})


# ---- files -------------------------------------------------------------------------------------------------

def write_json(path: str | Path, value: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2, default=str) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def write_tsv(path: str | Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """A tab-separated table with a header row, as the shared data is written (csv module, QUOTE_MINIMAL)."""
    with Path(path).open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(header)
        writer.writerows(rows)


def read_tsv(path: str | Path) -> list[dict[str, str]]:
    with Path(path).open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def shared_triplets(data_dir: str | Path | None, limit: int) -> list:
    """The first `limit` cleaned triplets of the data dir's nli/triplets/ (not decontaminated): the same rows
    for every side of a comparison."""
    from embedtune.config import DataConfig
    from embedtune.data.nli import load_triplets
    from embedtune.data.sts import resolve_data_dir

    triplets, _ = load_triplets(DataConfig(decontaminate=False), resolve_data_dir(data_dir), None)
    return triplets[:limit]


def write_triplets(path: str | Path, triplets: Iterable) -> None:
    write_tsv(path, TRIPLET_COLUMNS, ([t.anchor, t.positive, t.negative] for t in triplets))


def read_triplet_rows(path: str | Path) -> list[tuple[str, str, str]]:
    """(anchor, positive, negative) rows of a file written by `write_triplets`."""
    return [tuple(row[c] for c in TRIPLET_COLUMNS) for row in read_tsv(path)]  # type: ignore[misc]


def sts_sets(data_dir: str | Path | None, tasks: Sequence[str] | None) -> list:
    """The STS test sets named (all nine when none) from `data_dir` (or $EMBEDTUNE_DATA_DIR)."""
    from embedtune.data.sts import load_sts, resolve_data_dir, resolve_tasks

    root = resolve_data_dir(data_dir)
    return [load_sts(task, root) for task in resolve_tasks(list(tasks) if tasks else None)]
