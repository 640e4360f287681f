"""Padding-free packing for causal decoders: all texts of a batch in one row, attention still per text.

A contrastive batch holds ~100-300 texts of 5-60 tokens. Padded chunks waste tokens in every matmul and
elementwise op and pay per-op dispatch once per chunk; one packed row of all texts (position ids restarting at
0 for each text) runs every projection, norm and MLP once over real tokens only. Only attention must not mix
texts: the packed attention function below copies each group of similar-length texts into a small padded
[texts, heads, length, dim] block, attends there with a causal mask, and copies the results back.

The model never sees an attention mask: under `PACKED_NAME` transformers builds none (the name has no mask
function), and the `packing` keyword, which transformers passes down to every attention call, carries the
layout instead.
"""
from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from embedtune.errors import ModelError
from embedtune.models.attention import PACKED_NAME, math_attention, swappable_configs, use_attention


@dataclass
class AttentionGroup:
    """Texts start..end of a packed row (contiguous), attended together padded to `width` tokens."""

    start: int  # first token in the row
    end: int  # one past the last token
    slots: torch.Tensor  # [tokens] index of each token in the [texts * width] padded block
    n_texts: int
    width: int
    allowed: torch.Tensor  # [texts, 1, width, width] causal mask over each text's real keys
    sources: torch.Tensor  # [texts * width] token of each padded slot; padding slots point one past the span

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        """[1, heads, row tokens, dim] -> [texts, heads, width, dim] for this group's span."""
        heads, dim = x.shape[1], x.shape[3]
        span = x[0, :, self.start:self.end].transpose(0, 1)  # [tokens, heads, dim]
        # A gather from the span plus one zero row saves only its index for backward; index_copy into a
        # zeroed block would keep the span itself alive until backward (~100 MB at batch 32 for q, k, v).
        padded = torch.cat([span, span.new_zeros(1, heads, dim)])
        block = padded.index_select(0, self.sources)
        return block.view(self.n_texts, self.width, heads, dim).transpose(1, 2)

    def repack(self, out: torch.Tensor) -> torch.Tensor:
        """[texts, heads, width, dim] -> [tokens, heads, dim] in row order."""
        rows = out.transpose(1, 2).reshape(self.n_texts * self.width, out.shape[1], out.shape[3])
        return rows.index_select(0, self.slots)

    def window_allowed(self, sliding_window: int | None) -> torch.Tensor:
        if sliding_window is None or self.width <= sliding_window:
            return self.allowed
        near = ~torch.ones(self.width, self.width, dtype=torch.bool, device=self.allowed.device).tril(-sliding_window)
        return self.allowed & near


@dataclass
class Packing:
    """Layout of one packed row: its inputs, its attention groups and where each text's last token is."""

    input_ids: torch.Tensor  # [1, tokens]
    position_ids: torch.Tensor  # [1, tokens], restarting at 0 for each text
    last_index: torch.Tensor  # [texts] position of each text's last token in the row
    groups: list[AttentionGroup]
    tail: int = 0  # padding tokens after the last group: in no group, their attention output is zero

    def to(self, device: torch.device) -> Packing:
        groups = [AttentionGroup(g.start, g.end, g.slots.to(device), g.n_texts, g.width, g.allowed.to(device),
                                 g.sources.to(device)) for g in self.groups]
        return Packing(self.input_ids.to(device), self.position_ids.to(device), self.last_index.to(device), groups,
                       self.tail)


def pack(ids: Sequence[Sequence[int]], groups: Sequence[Sequence[int]], multiple: int = 1, pad_id: int = 0) -> Packing:
    """One row holding the texts of `groups` in order (each group: indices into ids, longest first), padded at the
    end to a multiple of `multiple` tokens.

    Why pad at all: oneDNN compiles a kernel per matmul shape and keeps it in a cache. With a new row length every
    step, each step compiled new kernels and the caches grew by ~20 MB a step; rounded lengths recur, so steps
    reuse kernels (the caches' limits: embedtune/runtime.py). Tail tokens belong to no attention group and
    no text; they cost ~2% more tokens at batch 32.
    """
    flat, positions, last, built, start = [], [], [], [], 0
    for group in groups:
        lengths = [len(ids[i]) for i in group]
        width = max(lengths)
        slots = torch.cat([torch.arange(n) + row * width for row, n in enumerate(lengths)])
        keys_real = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]  # [texts, width]
        causal = torch.ones(width, width, dtype=torch.bool).tril()
        allowed = (causal[None] & keys_real[:, None, :])[:, None]
        for i, n in zip(group, lengths, strict=True):
            flat.extend(ids[i])
            positions.extend(range(n))
            last.append(start + n - 1)
            start += n
        tokens = sum(lengths)
        sources = torch.full((len(group) * width,), tokens, dtype=torch.long)
        sources[slots] = torch.arange(tokens)
        built.append(AttentionGroup(start - tokens, start, slots, len(group), width, allowed, sources))
    tail = -start % multiple
    flat.extend([pad_id] * tail)
    positions.extend(range(tail))
    return Packing(torch.tensor([flat]), torch.tensor([positions]), torch.tensor(last), built, tail)


def packed_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             attention_mask: torch.Tensor | None, dropout: float = 0.0,
                             scaling: float | None = None, is_causal: bool | None = None,
                             sliding_window: int | None = None, packing: Packing | None = None,
                             **kwargs) -> tuple[torch.Tensor, None]:
    """transformers attention-interface function for a packed row: per-group padded math attention."""
    if packing is None or query.shape[0] != 1:
        raise ModelError(f"{type(module).__name__} did not pass the packing layout to its attention function; "
                         "train with --no-packing")
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    p = dropout if module.training else 0.0
    parts = [group.repack(math_attention(group.unpack(query), group.unpack(key), group.unpack(value),
                                         group.window_allowed(sliding_window), scale, False, p,
                                         kwargs.get("softcap")))
             for group in packing.groups]
    if packing.tail:
        parts.append(query.new_zeros(packing.tail, query.shape[1], value.shape[-1]))
    return torch.cat(parts).unsqueeze(0), None


def register() -> None:
    from transformers import AttentionInterface

    # Deliberately no mask function under this name: transformers then builds no [tokens x tokens] mask.
    AttentionInterface.register(PACKED_NAME, packed_attention_forward)


def can_pack(model: torch.nn.Module) -> bool:
    """Packing swaps the attention function, which models running transformers' SDPA attention allow (and
    Gemma-2's eager one, which differs only by the softcapping we apply: models/attention.py)."""
    return bool(swappable_configs(model))


def packed_attention(model: torch.nn.Module) -> contextlib.AbstractContextManager:
    register()
    return use_attention(model, PACKED_NAME)
