"""What the benchmark scripts share, written once.

- command line: the common options (`--data-dir`, `--model`, `--device`) and the worker options;
- processes: worker subprocesses (`spawn`: `python -m benchmarks.X --worker KIND --result FILE ...`), their
  environment (embedtune's runtime set-up from `embedtune.runtime`, or the libraries' defaults) and thread
  settings;
- measurements: the bf16 matmul probe that efficiency figures are rated against, peak RSS and GPU memory, a
  training callback that keeps each step's event;
- the machine: which CPU and ISA a figure was measured on, the precision both sides run (`--precision`), and a
  fresh kernel cache for first-use (cold) figures;
- files: result JSON, TSV tables and the shared triplets (read with csv, never by splitting lines).

Importing this module is cheap (no torch): a worker's environment is decided before torch loads.
"""
from __future__ import annotations

import argparse
import atexit
import csv
import json
import os
import platform
import shutil
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
PRECISIONS = ("auto", "fp32", "bf16")
# CPU flags that decide which kernels run: AVX2 only, AVX-512, bf16 dot products, AMX tiles
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
# switches that limit oneDNN / MKL below the CPU's own ISA (set them and the flags above overstate the kernels)
ISA_LIMITS = ("ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "ATEN_CPU_CAPABILITY")
INDUCTOR_CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"
WARMUP_TEXTS = 64  # texts encoded before an evaluation is timed (first-use cost, reported apart)
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


def add_precision_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="both sides' precision (default auto: what embedtune's --precision auto picks on this "
                             "machine, bf16 only where a measured matmul probe finds it faster than fp32)")


def add_cold_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cold", action="store_true",
                        help="embedtune starts with an empty torch inductor cache, so that its first-use figures "
                             "include compiling the kernels as on a fresh machine")


# ---- the machine -------------------------------------------------------------------------------------------

def cpu_info(cpuinfo: str | Path = "/proc/cpuinfo") -> dict[str, Any]:
    """This CPU's name, logical CPU count and the ISA flags that matter (from /proc/cpuinfo, else `platform`),
    torch's detected CPU capability and any ISA limit set in the environment. Importing torch is not needed."""
    name, flags = "", set()
    try:
        for line in Path(cpuinfo).read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and not name:
                name = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    info: dict[str, Any] = {"name": name or platform.processor() or platform.machine() or "unknown CPU",
                            "logical_cpus": os.cpu_count(),
                            "flags": {flag: flag in flags for flag in ISA_FLAGS} if flags else {},
                            "limits": {k: os.environ[k] for k in ISA_LIMITS if os.environ.get(k)}}
    if "torch" in sys.modules:
        info["torch_capability"] = sys.modules["torch"].backends.cpu.get_cpu_capability()
    return info


def describe_cpu(info: Mapping[str, Any] | None = None) -> str:
    """One line: 'cpu AMD EPYC, 2 logical CPUs; avx2 yes, avx512f no, ...; torch capability AVX2'."""
    info = cpu_info() if info is None else info
    parts = [f"cpu {info['name']}, {info['logical_cpus']} logical CPUs"]
    if info["flags"]:
        parts.append(", ".join(f"{k} {'yes' if v else 'no'}" for k, v in info["flags"].items()))
    else:
        parts.append("ISA flags unknown (no /proc/cpuinfo)")
    if "torch_capability" in info:
        parts.append(f"torch capability {info['torch_capability']}")
    if info["limits"]:
        parts.append("limited by " + " ".join(f"{k}={v}" for k, v in info["limits"].items()))
    threads = {k: os.environ[k] for k in THREAD_VARIABLES if os.environ.get(k)}
    if threads:
        parts.append(" ".join(f"{k}={v}" for k, v in threads.items()))
    return "; ".join(parts)


def resolve_precision(precision: str, device: str | None = None) -> tuple[str, str]:
    """`precision` as both sides will run it ("fp32" or "bf16") and why: "auto" is embedtune's own choice on
    `device` (its matmul probe on a CPU), so the peer runs at the precision this machine runs best too."""
    if precision != "auto":
        return precision, "asked for"
    import torch

    from embedtune.models.backend import cpu_bf16_speedup, resolve_device, resolve_dtype

    resolved = resolve_device(device)
    chosen = "bf16" if resolve_dtype("auto", resolved) == torch.bfloat16 else "fp32"
    if resolved.type == "cpu":
        return chosen, f"auto: bf16 matmul {cpu_bf16_speedup():.2f}x the speed of fp32 on this CPU"
    return chosen, f"auto on {resolved}"


def fresh_kernel_cache(prefix: str = "inductor-cold-") -> str:
    """An empty folder for torch inductor's compiled kernels (set as TORCHINDUCTOR_CACHE_DIR before the first
    compile): a process using it pays the whole compile, as on a fresh machine. Removed when this process
    exits (workers given it in their environment have finished by then)."""
    folder = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def warmup_sample(texts: Sequence[str], n: int = WARMUP_TEXTS) -> list[str]:
    """`n` texts spread evenly over the length range of `texts`: a warm-up that meets short and long batches."""
    ordered = sorted(texts, key=len)
    if len(ordered) <= n:
        return ordered
    return [ordered[round(i * (len(ordered) - 1) / (n - 1))] for i in range(n)]


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


def matmul_probe_rates(seconds: float = 3.0, device: str = "cpu", precision: str = "bf16") -> list[float]:
    """GFLOP/s of single square products in `precision` (bf16 or fp32) on `device`, looped for `seconds` (two
    sizes, half the time each)."""
    import torch

    rates = []
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[precision]
    wait = synchronize if device != "cpu" else lambda: None
    for n in ((1024, 2048) if device == "cpu" else (4096, 8192)):
        a = torch.randn(n, n, dtype=dtype, device=device)
        b = torch.randn(n, n, dtype=dtype, device=device)
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


def matmul_peak_gflops(seconds: float = 3.0, device: str = "cpu", precision: str = "bf16") -> float:
    """Matmul peak of this machine's `device` in `precision`, measured now (best of several square products)."""
    return max(matmul_probe_rates(seconds, device, precision))


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
