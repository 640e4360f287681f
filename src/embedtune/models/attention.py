"""Attention for training on short texts: plain matmul + softmax instead of SDPA's flash kernel.

On CPU, SDPA's flash-attention backward is slow for the short sequences of contrastive training (NLI sentences
are 10-60 tokens): measured on this project's 2-core AMX CPU with Gemma-3's shapes (4 query heads, 1 KV head,
head dim 256), forward + backward took 6-13 ms a call with flash and 2-3 ms with the math below, which was
~10% of a training step. For inference, and past `MAX_MATH_LENGTH` tokens, flash is as fast or faster, so the
function hands those calls to transformers' own SDPA attention unchanged.

`training_attention(model)` switches a transformers model to this function for the duration of a block (the CPU
backend does so for training steps, models/backend.py); the model's saved config never names it, so exports
stay loadable anywhere.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

NAME = "embedtune_sdpa"
PACKED_NAME = "embedtune_packed"  # see models/packing.py
ATTENTION_NAMES = ("sdpa", NAME, PACKED_NAME)  # attention functions we may swap between
# Model types whose eager attention we swap too: transformers runs Gemma-2 eager only because SDPA cannot apply its
# attention-logit softcapping, and the functions here apply the `softcap` (and `sliding_window`) it passes them.
EAGER_SWAPPABLE_TYPES = frozenset({"gemma2"})
MAX_MATH_LENGTH = 256  # measured crossover: math wins below ~256 keys, flash above


def math_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None,
                   scaling: float, is_causal: bool, dropout: float = 0.0,
                   softcap: float | None = None) -> torch.Tensor:
    """softmax(q k^T * scaling + mask) v for [batch, heads, length, dim] inputs with grouped KV heads."""
    batch, heads, q_len, dim = query.shape
    kv_heads, kv_len = key.shape[1], key.shape[2]
    groups = heads // kv_heads
    # Fold the query heads that share a KV head into rows: one matmul per KV head, no repeated K/V copies.
    q = query.reshape(batch, kv_heads, groups * q_len, dim)
    scores = torch.matmul(q, key.transpose(-1, -2)).view(batch, heads, q_len, kv_len).float() * scaling
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    allowed = _allowed(mask, is_causal, q_len, kv_len, query.device)
    if allowed is not None:
        # finfo.min rather than -inf: a fully masked (padding) row becomes uniform instead of NaN.
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    elif mask is not None:
        scores = scores + mask.float()
    probs = torch.softmax(scores, dim=-1).to(value.dtype)
    if dropout > 0:
        probs = torch.nn.functional.dropout(probs, p=dropout)
    out = torch.matmul(probs.view(batch, kv_heads, groups * q_len, kv_len), value)
    return out.view(batch, heads, q_len, value.shape[-1])


def _allowed(mask: torch.Tensor | None, is_causal: bool, q_len: int, kv_len: int,
             device: torch.device) -> torch.Tensor | None:
    """Boolean 'may attend' mask, or None when the mask is absent-and-not-causal or additive (float)."""
    if mask is not None:
        return mask if mask.dtype == torch.bool else None
    if not is_causal or q_len == 1:
        return None
    return torch.ones(q_len, kv_len, dtype=torch.bool, device=device).tril(kv_len - q_len)


def training_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                               value: torch.Tensor, attention_mask: torch.Tensor | None, dropout: float = 0.0,
                               scaling: float | None = None, is_causal: bool | None = None,
                               **kwargs) -> tuple[torch.Tensor, None]:
    """transformers attention-interface function: math attention when it is faster, SDPA otherwise."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    # SDPA has no softcapping: softcapped models (Gemma-2) always take the math path, which applies it.
    use_math = kwargs.get("position_bias") is None and (kwargs.get("softcap") is not None or (
        torch.is_grad_enabled() and query.requires_grad and key.shape[2] <= MAX_MATH_LENGTH))
    if not use_math:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    out = math_attention(query, key, value, attention_mask, scale, bool(causal) and attention_mask is None,
                         dropout if module.training else 0.0, kwargs.get("softcap"))
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(NAME, training_attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)  # same masks as SDPA, including the is_causal skip


@contextlib.contextmanager
def use_attention(model: torch.nn.Module, name: str) -> Iterator[None]:
    """Run every config of the model that uses SDPA (or one of ours) with attention function `name` in the block;
    the previous names come back afterwards."""
    configs = swappable_configs(model)
    before = [c._attn_implementation for c in configs]
    for config in configs:
        config._attn_implementation = name
    try:
        yield
    finally:
        for config, previous in zip(configs, before, strict=True):
            config._attn_implementation = previous


def swappable_configs(model: torch.nn.Module) -> list:
    found = {id(m.config): m.config for m in model.modules() if _swappable(getattr(m, "config", None))}
    return list(found.values())


def _swappable(config) -> bool:
    name = getattr(config, "_attn_implementation", None)
    return name in ATTENTION_NAMES or (name == "eager" and getattr(config, "model_type", None) in EAGER_SWAPPABLE_TYPES)


def training_attention(model: torch.nn.Module) -> contextlib.AbstractContextManager:
    """Use the short-text attention inside the block for models that run SDPA; others are left alone."""
    register()
    return use_attention(model, NAME)
