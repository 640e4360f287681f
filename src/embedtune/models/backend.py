"""What each device runs best, decided in one place: `Backend.for_device(device, precision)`.

Every speed path the Embedder, the losses and the trainer take is read from the backend they are given:

| choice | CPU | CUDA |
|---|---|---|
| dtype (`precision=auto`) | bf16 only where a measured matmul probe finds it faster than fp32 | bf16 if supported |
| Gemma norms/GeGLU fused (`models/fused.py`) | yes, pointwise loops compiled (`models/kernels.py`) | yes, eager loops |
| training attention for short texts | matmul + softmax (`models/attention.py`) | transformers' SDPA |
| packed rows (`models/packing.py`) | per-group matmul attention | the same function |
| packed row length multiple | 64 tokens, so oneDNN's per-shape kernels recur | 64 tokens |
| LoRA dropout | one shared 16-bit mask for q/k/v (`models/lora.py`) | peft's own dropout |

Process set-up (the allocator and kernel-cache limits) happens before any device is known, in `runtime.py`.
A GPU path is one more row in that table: a new `Backend` instance and, where it wins, one attention function.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import time
from dataclasses import dataclass

import torch

from embedtune.config import DEVICES, PRECISIONS, is_device
from embedtune.distributed import join, launched_ranks, same_on_every_rank
from embedtune.errors import ConfigError

log = logging.getLogger(__name__)
PACKED_ROW_MULTIPLE = 64
# rows x inner x out: large enough to reach the fast kernels, small enough for ~1 s where bf16 is emulated
PROBE_SHAPE = (256, 512, 512)
PROBE_ROUNDS = 3
BF16_MIN_SPEEDUP = 1.2  # bf16 must beat fp32 by this much to be chosen: it also costs accuracy


@dataclass(frozen=True)
class Backend:
    device: torch.device
    dtype: torch.dtype
    fuse_gemma: bool = True
    compile_kernels: bool = False
    short_text_attention: bool = False
    row_multiple: int = PACKED_ROW_MULTIPLE
    shared_dropout: bool = False

    @classmethod
    def for_device(cls, device: str | torch.device | None = "auto", precision: str = "auto") -> Backend:
        resolved = resolve_device(device)
        dtype = resolve_dtype(precision, resolved)
        if resolved.type == "cpu":
            from embedtune.models.kernels import compiling_enabled

            return cls(resolved, dtype, fuse_gemma=True, compile_kernels=compiling_enabled(),
                       short_text_attention=True, shared_dropout=True)
        return cls(resolved, dtype)

    @classmethod
    def for_launch(cls, device: str | torch.device | None = "auto", precision: str = "auto") -> Backend:
        """`for_device` for this process of a launched run (torchrun, accelerate launch): each rank on its own GPU
        (cuda:LOCAL_RANK), in the process group, and one precision for all ranks (rank 0's probe decides: ranks
        probing alone under load could choose differently). One process: exactly `for_device`."""
        ranks = launched_ranks()
        if not ranks.distributed:
            return cls.for_device(device, precision)
        resolved = resolve_device(device)
        if resolved.type == "cuda" and resolved.index is None:
            resolved = torch.device("cuda", ranks.local_rank)
        if resolved.type == "cuda":
            torch.cuda.set_device(resolved)
        join(resolved)
        if precision == "auto":
            probed = resolve_dtype(precision, resolved) if ranks.is_main else None
            precision = {torch.float32: "fp32", torch.bfloat16: "bf16"}[same_on_every_rank(probed)[0]]
        return cls.for_device(resolved, precision)

    @property
    def name(self) -> str:
        return f"{self.device.type}/{str(self.dtype).removeprefix('torch.')}"

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision for the forward pass when the working dtype is not fp32."""
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def training_attention(self, model: torch.nn.Module) -> contextlib.AbstractContextManager:
        """The attention function for training steps (short texts): math attention on CPU, SDPA elsewhere."""
        if not self.short_text_attention:
            return contextlib.nullcontext()
        from embedtune.models.attention import training_attention

        return training_attention(model)

    def synchronize(self) -> None:
        """Wait for queued kernels (CUDA runs asynchronously): before reading a step's wall time."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def resolve_device(device: str | torch.device | None) -> torch.device:
    if isinstance(device, torch.device):
        return device
    name = device or "auto"
    if not is_device(name):
        raise ConfigError(f"device must be one of {', '.join(DEVICES)} or cuda:N, not '{name}'")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' asked for, but this torch build sees no CUDA GPU "
                          f"(torch {torch.__version__})")
    return torch.device(name)


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, not '{precision}'")
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if cpu_bf16_speedup() >= BF16_MIN_SPEEDUP else torch.float32


@functools.cache
def cpu_bf16_speedup() -> float:
    """fp32 time / bf16 time of one small matmul on this CPU, measured once per process.

    CPU flags are not enough: ARM, Apple silicon and virtual machines hide or lack them, and where bf16 is
    emulated (AVX2-only CPUs) a bf16 matmul ran ~100x slower than fp32, which made runs crawl.
    """
    seconds = {torch.float32: float("inf"), torch.bfloat16: float("inf")}
    for _ in range(PROBE_ROUNDS):  # interleaved, best of each: a busy neighbour slows both alike
        for dtype in seconds:
            seconds[dtype] = min(seconds[dtype], _matmul_seconds(dtype))
    speedup = seconds[torch.float32] / seconds[torch.bfloat16]
    log.info("precision probe: bf16 matmul %.2fx the speed of fp32 on this CPU", speedup)
    return speedup


def _matmul_seconds(dtype: torch.dtype, repeats: int = 3, budget_s: float = 0.2) -> float:
    rows, inner, out = PROBE_SHAPE
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(rows, inner, generator=generator).to(dtype)
    b = torch.randn(inner, out, generator=generator).to(dtype)
    torch.matmul(a, b)  # warm-up: kernel selection and first-touch costs
    best, spent = float("inf"), 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        elapsed = time.perf_counter() - start
        best, spent = min(best, elapsed), spent + elapsed
        if spent > budget_s:  # an emulated dtype: one slow sample says enough
            break
    return max(best, 1e-9)
