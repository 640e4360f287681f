"""Fused RMSNorm and GeGLU for Gemma-family models: same forward values, leaner backward.

With LoRA on attention, most of a training step's memory is activations saved for backward, and in eager
PyTorch Gemma's RMSNorm saves an fp32 copy of its input (2.5 KB per token at width 640) and its GeGLU saves
four [tokens, 2048] tensors. Measured on Gemma-3-270M that was ~25 of ~55 KB per token and layer. These
autograd functions save only their bf16 inputs (and the per-token inverse RMS), recompute the cheap parts in
backward, and run fewer elementwise ops. With the eager kernels forward values are bit-identical to
transformers' modules; the compiled ones round GeGLU's product once instead of twice (bf16).

`fuse_gemma(model, compile_kernels)` swaps the forward of every matching module (the Embedder does it on load
where its backend says so, for inference and training alike); other architectures and other activations are
left alone. The pointwise work runs in compiled kernels where the backend compiles (models/kernels.py).
"""
from __future__ import annotations

import functools
import types

import torch
import torch.nn.functional as F

from embedtune.models import kernels
from embedtune.models.kernels import RowLayout

GEMMA_NORMS = {"GemmaRMSNorm", "Gemma2RMSNorm", "Gemma3RMSNorm"}  # y = x / rms(x) * (1 + w), in fp32
GEMMA_MLPS = {"GemmaMLP", "Gemma2MLP", "Gemma3MLP"}  # down(act(gate(x)) * up(x))


class GemmaRMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: torch.Tensor, eps: float, compiled: bool) -> torch.Tensor:
        y, rows, rstd, ctx.layout = _normalize(x, scale, eps, compiled)
        ctx.save_for_backward(rows, rstd, scale)
        ctx.compiled = compiled
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, None, None]:
        rows, rstd, scale = ctx.saved_tensors
        grad_rows = ctx.layout.rows(grad)
        dx = ctx.layout.restore(kernels.RMS_NORM_BACKWARD(ctx.compiled, grad_rows, rows, rstd, scale))
        # Norm weights train only when a user makes them trainable (LoRA freezes them): the eager sum suffices.
        d_scale = (grad_rows.float() * rows.float() * rstd).sum(0) if ctx.needs_input_grad[1] else None
        return dx, d_scale, None, None


class GeGLUFunction(torch.autograd.Function):
    """gelu_tanh(gate) * up, saving only gate and up."""

    @staticmethod
    def forward(ctx, gate: torch.Tensor, up: torch.Tensor, compiled: bool) -> torch.Tensor:
        ctx.save_for_backward(gate, up)
        ctx.compiled = compiled
        return _geglu(gate, up, compiled)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        gate, up = ctx.saved_tensors
        d_gate, d_up = kernels.GEGLU_BACKWARD(ctx.compiled, *_as_rows(grad, gate, up))
        return d_gate.view(gate.shape), d_up.view(gate.shape), None


def _normalize(x: torch.Tensor, scale: torch.Tensor, eps: float,
               compiled: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, RowLayout]:
    """The norm's output in x's shape and layout, plus what backward needs: x as rows, 1 / rms, the layout."""
    layout = RowLayout(x)
    rows = layout.rows(x)
    y, rstd = kernels.RMS_NORM_FORWARD(compiled, rows, scale, eps)
    return layout.restore(y), rows, rstd, layout


def _as_rows(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """[..., width] tensors as [rows, width] (the kernels' shape)."""
    return [t.reshape(-1, t.shape[-1]) for t in tensors]


def _geglu(gate: torch.Tensor, up: torch.Tensor, compiled: bool) -> torch.Tensor:
    return kernels.GEGLU_FORWARD(compiled, *_as_rows(gate, up)).view(gate.shape)


def _needs_graph(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _norm_forward(self, x: torch.Tensor) -> torch.Tensor:
    scale = 1.0 + self.weight.float()
    if _needs_graph(x, scale):
        return GemmaRMSNormFunction.apply(x, scale, self.eps, self.compile_kernels)
    # Inference: the kernel alone, without an autograd node per call.
    return _normalize(x, scale, self.eps, self.compile_kernels)[0]


def _mlp_forward(self, x: torch.Tensor) -> torch.Tensor:
    gate, up = self.gate_proj(x), self.up_proj(x)
    if _needs_graph(gate, up):
        return self.down_proj(GeGLUFunction.apply(gate, up, self.compile_kernels))
    return self.down_proj(_geglu(gate, up, self.compile_kernels))


def _is_tanh_gelu(mlp: torch.nn.Module) -> bool:
    """transformers' gelu_pytorch_tanh: torch's C tanh-GELU (not the pure-Python variant, which rounds apart)."""
    act = getattr(mlp, "act_fn", None)
    inner = getattr(act, "act", None)
    return (type(act).__name__ in {"GELUTanh", "PytorchGELUTanh"} and isinstance(inner, functools.partial)
            and inner.func is F.gelu and inner.keywords.get("approximate") == "tanh")


def fuse_gemma(model: torch.nn.Module, compile_kernels: bool = False) -> int:
    """Swap in the fused forwards where they apply, their pointwise loops compiled when `compile_kernels` (the
    backend's choice); returns how many modules changed."""
    changed = 0
    for module in model.modules():
        name = type(module).__name__
        if name in GEMMA_NORMS and hasattr(module, "eps"):
            module.forward = types.MethodType(_norm_forward, module)
        elif name in GEMMA_MLPS and _is_tanh_gelu(module):
            module.forward = types.MethodType(_mlp_forward, module)
        else:
            continue
        module.compile_kernels = compile_kernels
        changed += 1
    return changed


def unfuse_gemma(model: torch.nn.Module) -> None:
    """Back to transformers' own forwards (benchmarks compare both)."""
    for module in model.modules():
        forward = module.__dict__.get("forward")
        if getattr(forward, "__func__", None) in (_norm_forward, _mlp_forward):
            del module.forward
