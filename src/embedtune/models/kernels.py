"""Pointwise kernels of the fused Gemma ops (models/fused.py), compiled by torch.compile on CPU.

Why: eager PyTorch runs Gemma's RMSNorm as ~7 passes over memory (a fp32 copy, a square, a mean, two
multiplies, a cast) and its GeGLU as 3-4; on a CPU these passes are limited by memory bandwidth, not by
arithmetic, and in a LoRA training step of Gemma-3-270M they took about 40% of the time (profile in
docs/PERFORMANCE.md). Compiled, each becomes one or two loops over the data that read bf16 and write bf16.

Each kernel is written once as plain torch code (the eager reference); `Kernel` compiles it on first use
(inductor, dynamic shapes, cached on disk by torch across processes) and falls back to the eager code for good,
with one warning, if compiling fails (no C++ compiler, an unsupported platform). Kernels take contiguous 2-D
[rows, width] tensors, so a handful of compiled variants (per dtype) serve every layer and batch shape.
Whether to compile is the backend's choice (models/backend.py: on CPU, unless `EMBEDTUNE_COMPILE_KERNELS=0`;
a GPU's elementwise passes are cheap next to its matmuls, so CUDA runs the eager code).

Values: the compiled code computes the same functions in fp32, but it may order a row's sum differently (the
norm's bf16 output differed from eager in ~4 of a million values), it rounds GeGLU's product to bf16 once where
eager rounds gelu(gate) first, and it evaluates tanh-GELU through exp (below). Through Gemma-3-270M's 18 layers,
bf16 embeddings of 400 STSBenchmark sentences stayed as close to fp32 ones as eager bf16's, slightly closer:
mean cosine 0.99744 (min 0.98692) against 0.99734 (min 0.98033).
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)
ENV = "EMBEDTUNE_COMPILE_KERNELS"
RECOMPILE_LIMIT = 64
# A first call slower than this was a real compile (not torch's cache): say what it cost, once per kernel.
SHOW_COMPILE_SECONDS = 1.0


def rms_norm_forward(x: torch.Tensor, scale: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Gemma's RMSNorm on [rows, width]: x / rms(x) * scale in fp32, cast back; also the per-row 1 / rms."""
    x32 = x.float()
    rstd = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return (x32 * rstd * scale).to(x.dtype), rstd


def rms_norm_backward(grad: torch.Tensor, x: torch.Tensor, rstd: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """d/dx of x * rstd(x) * scale: rstd * (g - normed * mean(g * normed)) with g = grad * scale."""
    normed = x.float() * rstd
    g = grad.float() * scale
    return ((g - normed * (g * normed).mean(-1, keepdim=True)) * rstd).to(x.dtype)


def geglu_forward(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.gelu(gate, approximate="tanh") * up


def geglu_backward(grad: torch.Tensor, gate: torch.Tensor, up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    d_up = grad * F.gelu(gate, approximate="tanh")
    d_gate = torch.ops.aten.gelu_backward(grad * up, gate, approximate="tanh")
    return d_gate, d_up


# tanh-GELU(x) = x * sigmoid(2 * sqrt(2 / pi) * (x + 0.044715 x^3)), the same function through exp instead of
# tanh: compiled, the tanh form took 6.2 ms for 4M bf16 values here, this one 2.6 ms (1.6% of bf16 outputs one
# step apart, fp32 rounding). Only the compiled kernels use it; the eager ones call torch's tanh-GELU.
GELU_SCALE, GELU_CUBIC = 1.5957691216057308, 0.044715


def _gelu_sigmoid(x32: torch.Tensor) -> torch.Tensor:
    return 1.0 / (1.0 + torch.exp(-GELU_SCALE * (x32 + GELU_CUBIC * x32 * x32 * x32)))


def geglu_forward_by_exp(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    x = gate.float()
    return (x * _gelu_sigmoid(x) * up.float()).to(gate.dtype)


def geglu_backward_by_exp(grad: torch.Tensor, gate: torch.Tensor,
                          up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x, g = gate.float(), grad.float()
    s = _gelu_sigmoid(x)
    slope = s + x * s * (1.0 - s) * GELU_SCALE * (1.0 + 3.0 * GELU_CUBIC * x * x)  # d/dx of x * s(x)
    return (g * up.float() * slope).to(gate.dtype), (g * x * s).to(gate.dtype)


def compiling_enabled() -> bool:
    """The user's switch, read by the CPU backend (models/backend.py), which decides whether to compile."""
    return os.environ.get(ENV, "1") != "0"


class Kernel:
    """An eager function and its compiled twin; a failed compile means eager from then on."""

    def __init__(self, eager: Callable, compile_from: Callable | None = None):
        self.eager = eager
        self.source = compile_from or eager  # an equal formula that compiles to faster code, where there is one
        self.compiled: Callable | None = None
        self.failed = False

    def __call__(self, compiled: bool, *args):
        """Run on `args`, compiled when `compiled` (the backend's choice) and compiling has not failed. Under
        torch.jit tracing (the ONNX export) eager: a trace cannot hold a compiled function, and the eager ops are
        what the exported graph should record."""
        if not compiled or self.failed or torch.jit.is_tracing():
            return self.eager(*args)
        if self.compiled is None:
            return self._compile_and_run(*args)
        return self._run_compiled(*args)

    def _compile_and_run(self, *args):
        # Each dtype, grad mode and inference-tensor state is its own compiled variant; a process that trains,
        # evaluates and serves in two dtypes needs more than dynamo's default limit of 8, past which a fullgraph
        # function fails for good.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
        self.compiled = torch.compile(self.source, dynamic=True, fullgraph=True)
        start = time.perf_counter()  # torch compiles on this first call
        result = self._run_compiled(*args)
        if not self.failed:
            self._report_first_use(time.perf_counter() - start)
        return result

    def _run_compiled(self, *args):
        try:
            # Grad mode and autocast are part of what dynamo specialises on; the kernels need neither (backward is
            # written by hand in models/fused.py, dtypes are explicit), so one state serves every caller.
            with torch.no_grad(), torch.autocast(args[0].device.type, enabled=False):
                return self.compiled(*args)
        except Exception as err:  # noqa: BLE001 - any compiler failure: the eager code computes the same
            self.failed = True
            log.warning("compiling %s failed (%s: %s); using eager PyTorch ops (slower, same values). Set %s=0 "
                        "to skip the attempt.", self.eager.__name__, type(err).__name__, str(err)[:200], ENV)
            return self.eager(*args)

    def _report_first_use(self, seconds: float) -> None:
        level = logging.INFO if seconds >= SHOW_COMPILE_SECONDS else logging.DEBUG
        log.log(level, "compiled %s on first use in %.1f s (torch caches it for later runs; %s=0 skips compiling)",
                self.eager.__name__, seconds, ENV)


RMS_NORM_FORWARD = Kernel(rms_norm_forward)
RMS_NORM_BACKWARD = Kernel(rms_norm_backward)
GEGLU_FORWARD = Kernel(geglu_forward, compile_from=geglu_forward_by_exp)
GEGLU_BACKWARD = Kernel(geglu_backward, compile_from=geglu_backward_by_exp)


class RowLayout:
    """How to read a tensor as contiguous [rows, last dim] rows in its memory order, and to put rows back.

    Gemma-3 normalises q and k as [batch, heads, tokens, dim] views of [batch, tokens, heads, dim] memory: eager
    ops on such permuted views ran ~3x slower than on contiguous rows, so they are read in memory order here
    (a view, no copy). The gradient coming back is read in the same order (copied if it is laid out otherwise).
    """

    def __init__(self, x: torch.Tensor):
        last = x.dim() - 1
        self.order = sorted(range(last), key=lambda d: x.stride(d), reverse=True) + [last]
        self.inverse = [self.order.index(d) for d in range(x.dim())]
        self.shape = [x.shape[d] for d in self.order]

    def rows(self, t: torch.Tensor) -> torch.Tensor:
        return t.permute(self.order).reshape(-1, self.shape[-1])

    def restore(self, rows: torch.Tensor) -> torch.Tensor:
        return rows.view(self.shape).permute(self.inverse)
