"""Process set-up for CPU speed and memory: a better malloc and bounded kernel caches; and embedtune's cache folder.

The allocator must be preloaded before the process starts, so the `embedtune` command re-executes itself once
with it (`relaunch_with_runtime`); Python API users can start their process the same way (`runtime_environment()`
gives the variables). The rest only needs to happen before the first matmul and the first plot: the command's entry
point (embedtune/launch.py) calls `configure_process()`, which a Python user may call too. Importing embedtune
sets nothing.

- **mimalloc** (PyPI `cmeel-mimalloc`) instead of glibc malloc. Training frees and reallocates ~1 GB of
  activations a step in tensors of a few MB; glibc keeps freed heap pages resident and splits them between
  differently sized requests, so its heap grew step after step (batch 32 on Gemma-3-270M: 2.2 GB after one step,
  3.1 GB after twelve, with ~1.6 GB live). Returning memory to the OS with glibc (a low mmap threshold or
  malloc_trim) costs 1.5-2.5x the step time in page faults. Under mimalloc the peak after twelve steps was
  2.38 GB against 3.14 GB (benchmarks/memory_anatomy.py).
- **Kernel-cache limits** (`configure_process`). oneDNN compiles a kernel per matmul shape and caches up to 1024
  of them, and PyTorch's ideep layer keeps its own LRU cache of 1024. With the shapes of contrastive batches
  changing every step, the two grew by ~20 MB a step (a 150-step run at batch 32 reached 6.4 GB). Packed rows are
  padded to a multiple of 64 tokens so that shapes recur, and the caches are capped below.

- **matplotlib's config and font cache** in embedtune's cache folder (`configure_process`): a run of the command
  writes nothing in ~/.cache or ~/.config besides it.

`EMBEDTUNE_ALLOCATOR=system` keeps glibc malloc (no re-execution); variables already set by the user win.
"""
from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping
from pathlib import Path

ALLOCATOR_ENV = "EMBEDTUNE_ALLOCATOR"  # "mimalloc" (default where installed) or "system"
RELAUNCHED_ENV = "EMBEDTUNE_RELAUNCHED"  # set in the re-executed process, so it never loops
KERNEL_CACHE_LIMITS = {
    "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "256",  # oneDNN's compiled kernels (default 1024)
    "LRU_CACHE_CAPACITY": "64",  # PyTorch ideep's cache of oneDNN computations (default 1024)
}
KERNEL_CACHE_DEFAULTS = {name: "1024" for name in KERNEL_CACHE_LIMITS}  # the libraries' own sizes, for benchmarks
CACHE_ENV = "EMBEDTUNE_CACHE"  # embedtune's cache folder: GGUF conversions, bf16 copies, matplotlib's font cache
MATPLOTLIB_ENV = "MPLCONFIGDIR"  # matplotlib reads it when first imported


def cache_dir(environ: MutableMapping[str, str] | None = None) -> Path:
    """$EMBEDTUNE_CACHE, else ~/.cache/embedtune: what embedtune makes once per machine and reuses."""
    root = (os.environ if environ is None else environ).get(CACHE_ENV) or Path.home() / ".cache" / "embedtune"
    return Path(root).expanduser()


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
    if "LD_PRELOAD" not in extra:  # the cache limits alone apply in-process (configure_process)
        return
    env = {**os.environ, **extra, RELAUNCHED_ENV: "1"}
    sys.stdout.flush()
    sys.stderr.flush()
    # -P (Python 3.11+): do not put the current folder first on sys.path, as `-m` otherwise would; the console
    # script never did, and a user's datasets.py or tokenizers.py must not shadow the libraries.
    safe_path = ["-P"] if sys.version_info >= (3, 11) else []
    os.execve(sys.executable, [sys.executable, *safe_path, "-m", "embedtune", *argv], env)


def process_environment(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """What configure_process adds to `environ` (default os.environ): the variables it lacks."""
    environ = os.environ if environ is None else environ
    wanted = {**KERNEL_CACHE_LIMITS, MATPLOTLIB_ENV: str(cache_dir(environ) / "matplotlib")}
    return {name: value for name, value in wanted.items() if name not in environ}


def configure_process(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set this process up as the `embedtune` command does (embedtune/launch.py), for a Python user who wants the
    same: the oneDNN/ideep kernel-cache limits (memory stays flat over a long run) and matplotlib's font cache in
    embedtune's cache folder. Variables already set win. Call it before torch runs its first matmul and before
    matplotlib is imported (best: first thing); importing embedtune does none of this. The allocator cannot change
    in a running process: `runtime_environment()` gives its variables for a new one. Returns what it set."""
    environ = os.environ if environ is None else environ
    added = process_environment(environ)
    environ.update(added)
    return added

