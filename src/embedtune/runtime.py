"""Process set-up for CPU speed and memory: a better malloc and bounded kernel caches.

The allocator must be preloaded before the process starts, so the `embedtune` command re-executes itself once
with it (`relaunch_with_runtime`); Python API users can start their process the same way (`runtime_environment()`
gives the variables). The cache limits only need to be set before the first matmul: importing embedtune does it.

- **mimalloc** (PyPI `cmeel-mimalloc`) instead of glibc malloc. Training frees and reallocates ~1 GB of
  activations a step in tensors of a few MB; glibc keeps freed heap pages resident and splits them between
  differently sized requests, so its heap grew step after step (batch 32 on Gemma-3-270M: 2.2 GB after one step,
  3.1 GB after twelve, with ~1.6 GB live). Returning memory to the OS with glibc (a low mmap threshold or
  malloc_trim) costs 1.5-2.5x the step time in page faults. Under mimalloc the peak after twelve steps was
  2.38 GB against 3.14 GB (benchmarks/memory_anatomy.py).
- **Kernel-cache limits.** oneDNN compiles a kernel per matmul shape and caches up to 1024 of them, and
  PyTorch's ideep layer keeps its own LRU cache of 1024. With the shapes of contrastive batches changing every
  step, the two grew by ~20 MB a step (a 150-step run at batch 32 reached 6.4 GB). Packed rows are padded to
  a multiple of 64 tokens so that shapes recur, and the caches are capped below.

`EMBEDTUNE_ALLOCATOR=system` keeps glibc malloc (no re-execution); variables already set by the user win.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

ALLOCATOR_ENV = "EMBEDTUNE_ALLOCATOR"  # "mimalloc" (default where installed) or "system"
RELAUNCHED_ENV = "EMBEDTUNE_RELAUNCHED"  # set in the re-executed process, so it never loops
KERNEL_CACHE_LIMITS = {
    "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "256",  # oneDNN's compiled kernels (default 1024)
    "LRU_CACHE_CAPACITY": "64",  # PyTorch ideep's cache of oneDNN computations (default 1024)
}
KERNEL_CACHE_DEFAULTS = {name: "1024" for name in KERNEL_CACHE_LIMITS}  # the libraries' own sizes, for benchmarks


def mimalloc_library() -> Path | None:
    """libmimalloc.so from the cmeel-mimalloc wheel, wherever site-packages is; None when absent or not Linux."""
    if not sys.platform.startswith("linux"):
        return None
    for entry in sys.path:
        folder = Path(entry) / "cmeel.prefix" / "lib"
        found = sorted(folder.glob("libmimalloc.so*")) if folder.is_dir() else []
        if found:
            return found[0]
    return None


def runtime_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Variables to add to `environ` (default os.environ) for a fast, bounded-memory embedtune process."""
    environ = dict(os.environ if environ is None else environ)
    extra = {name: value for name, value in KERNEL_CACHE_LIMITS.items() if name not in environ}
    library = mimalloc_library() if environ.get(ALLOCATOR_ENV, "mimalloc") == "mimalloc" else None
    preload = environ.get("LD_PRELOAD", "")
    if library is not None and "mimalloc" not in preload:
        extra["LD_PRELOAD"] = f"{library}:{preload}" if preload else str(library)
    return extra


def relaunch_with_runtime(argv: list[str]) -> None:
    """Re-execute this command (`python -m embedtune ARGV`) with runtime_environment() applied, once.

    Returns without doing anything when there is no allocator to preload or this process is the relaunched one.
    """
    if os.environ.get(RELAUNCHED_ENV) or not sys.executable:
        return
    extra = runtime_environment()
    if "LD_PRELOAD" not in extra:  # the cache limits alone apply in-process (apply_kernel_cache_limits)
        return
    env = {**os.environ, **extra, RELAUNCHED_ENV: "1"}
    sys.stdout.flush()
    sys.stderr.flush()
    # -P (Python 3.11+): do not put the current folder first on sys.path, as `-m` otherwise would; the console
    # script never did, and a user's datasets.py or tokenizers.py must not shadow the libraries.
    safe_path = ["-P"] if sys.version_info >= (3, 11) else []
    os.execve(sys.executable, [sys.executable, *safe_path, "-m", "embedtune", *argv], env)


def apply_kernel_cache_limits() -> None:
    """In-process fallback: the caches read these when first used, so this works if no matmul ran yet."""
    for name, value in KERNEL_CACHE_LIMITS.items():
        os.environ.setdefault(name, value)
