"""Matryoshka representation learning (Kusupati et al. 2022): one loss over several prefixes of the embedding.

The contrastive loss (compute_loss_from_embeddings) is computed on the first D dimensions of every vector,
re-normalised, for each trained size D, and the losses are summed with their weights, as sentence-transformers'
MatryoshkaLoss does. Truncation only slices the vectors the loss already has, so the plain loss, the cached one
(GradCache: its cached gradient is taken with respect to the full vectors, through the slices) and the gather
across ranks (a slice of gathered rows is the gathered slices) all work unchanged. The sizes are exactly the ones
given: the full width is not added implicitly (as in sentence-transformers); list it to keep training it.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from embedtune.errors import ConfigError
from embedtune.losses.infonce import compute_loss_from_embeddings


def truncated(vectors: torch.Tensor, dim: int) -> torch.Tensor:
    """The first `dim` dimensions of each row, L2-normalised again (cosine is scale-free, a prefix is not)."""
    return F.normalize(vectors[..., :dim], dim=-1)


def sizes_and_weights(dims: Sequence[int], weights: Sequence[float] | None = None,
                      width: int | None = None) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """The sizes in increasing order with their weights (1 each when none are given), checked against each other
    and against the model's `width`; a ConfigError naming the bad value otherwise."""
    weights = list(weights) if weights else [1.0] * len(dims)
    if not dims:
        raise ConfigError("train.matryoshka_dims is empty: give at least one size")
    if len(weights) != len(dims):
        raise ConfigError(f"train.matryoshka_weights needs one weight per size: got {list(weights)} for {list(dims)}")
    if len(set(dims)) != len(dims) or min(dims) < 1:
        raise ConfigError(f"train.matryoshka_dims must be distinct whole numbers >= 1, got {list(dims)}")
    if width is not None and max(dims) > width:
        raise ConfigError(f"train.matryoshka_dims: {max(dims)} is above the model's width {width}")
    pairs = sorted(zip(dims, weights, strict=True))
    return tuple(d for d, _ in pairs), tuple(float(w) for _, w in pairs)


@dataclass(frozen=True)
class MatryoshkaObjective:
    """A drop-in for compute_loss_from_embeddings (same arguments): the weighted sum over the trained sizes."""

    dims: tuple[int, ...]
    weights: tuple[float, ...]

    def __call__(self, anchors: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor | None,
                 temperature: torch.Tensor | float, *args, **kwargs) -> torch.Tensor:
        total = anchors.new_zeros((), dtype=torch.float32)
        for dim, weight in zip(self.dims, self.weights, strict=True):
            cut_negatives = truncated(negatives, dim) if negatives is not None else None
            loss = compute_loss_from_embeddings(truncated(anchors, dim), truncated(positives, dim), cut_negatives,
                                                temperature, *args, **kwargs)
            total = total + weight * loss
        return total
