"""Cached InfoNCE (GradCache, Gao et al. 2021): contrastive batches larger than activation memory allows.

Pass 1 embeds the batch in small chunks without a graph; the loss is computed on those vectors and its
gradient with respect to them is cached; pass 2 (inside backward) re-embeds each chunk with a graph, under
the same RNG state as pass 1 so that dropout masks match, and back-propagates the cached gradient.
Loss and gradients equal the plain InfoNCELoss; memory holds one chunk's activations at a time.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

from embedtune.losses.infonce import InfoNCELoss
from embedtune.models.batching import padding_aware_chunks, restore_order


class _ReplayChunks(torch.autograd.Function):
    """Identity on the detached vectors; its backward replays the chunks with a graph."""

    @staticmethod
    def forward(ctx, anchor: torch.Tensor, vectors: torch.Tensor, replay: Callable[[torch.Tensor], None]):
        ctx.replay = replay
        return vectors.clone()

    @staticmethod
    def backward(ctx, grad_vectors: torch.Tensor):
        with torch.enable_grad():
            ctx.replay(grad_vectors)
        return torch.zeros(()), None, None


class CachedInfoNCELoss(InfoNCELoss):
    def __init__(self, embedder, mini_batch_tokens: int = 1024, **kwargs):
        super().__init__(embedder, **kwargs)
        self.mini_batch_tokens = mini_batch_tokens
        # Gives autograd a reason to call _ReplayChunks.backward; its own gradient is always zero.
        self._anchor = torch.zeros((), requires_grad=True)
        # Across ranks the trainer sets this to the engine's no_sync: every replayed chunk but the last skips
        # the gradient all-reduce, which then runs once over the accumulated gradients.
        self.chunk_sync: Callable[[bool], contextlib.AbstractContextManager] = lambda skip: contextlib.nullcontext()

    def embed_chunk(self, ids: list[list[int]]) -> torch.Tensor:
        """One mini-batch (its real tokens fit the budget), the same call in both passes."""
        return self.embedder.embed_tokens(ids, max_tokens=self.mini_batch_tokens, packing=self.packing)

    def embed_unique(self, unique: list[list[int]]) -> torch.Tensor:
        chunks = padding_aware_chunks([len(x) for x in unique], self.mini_batch_tokens)
        rng_states, parts = [], []
        with torch.no_grad():
            for chunk in chunks:
                rng_states.append(_rng_state())
                parts.append(self.embed_chunk([unique[i] for i in chunk]))
        cached = torch.cat(parts)

        def replay(grad: torch.Tensor) -> None:
            start = 0
            for number, (chunk, state) in enumerate(zip(chunks, rng_states, strict=True)):
                _set_rng_state(state)
                with self.chunk_sync(number < len(chunks) - 1):
                    vectors = self.embed_chunk([unique[i] for i in chunk])
                    vectors.backward(grad[start:start + len(chunk)])
                start += len(chunk)

        return _ReplayChunks.apply(self._anchor, cached, replay)[restore_order(chunks)]


def _rng_state() -> tuple:
    return torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None


def _set_rng_state(state: tuple) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state_all(state[1])
