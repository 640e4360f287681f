"""Contrastive losses: InfoNCE and its cached (GradCache) variant, sharing compute_loss_from_embeddings.

`build_loss(train_config, embedder)` is the one factory: a config's temperature, hard negatives, packing and
token budgets travel from the CLI flag to the loss constructor through it, and nowhere else.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from embedtune.losses.gradcache import CachedInfoNCELoss
from embedtune.losses.infonce import InfoNCELoss, compute_loss_from_embeddings
from embedtune.losses.matryoshka import MatryoshkaObjective, sizes_and_weights

if TYPE_CHECKING:
    from embedtune.config import TrainConfig
    from embedtune.models.embedder import Embedder

__all__ = ["CachedInfoNCELoss", "InfoNCELoss", "MatryoshkaObjective", "build_loss", "compute_loss_from_embeddings"]


def build_loss(t: TrainConfig, embedder: Embedder) -> InfoNCELoss:
    # Packing swaps the attention function only during the forward call; checkpointed blocks recompute in
    # backward, outside it, so the two do not mix.
    options = dict(temperature=t.temperature, learnable_temperature=t.learnable_temperature,
                   hard_negatives=t.hard_negatives, chunk_tokens=t.chunk_tokens,
                   packing=t.packing and not t.gradient_checkpointing, gather_with_grad=t.gather_with_grad,
                   symmetric=t.symmetric, hardness=t.hardness, hardness_mode=t.hardness_mode,
                   all_directions=t.all_directions, cosent=t.cosent, objective=matryoshka_objective(t, embedder))
    if t.loss == "cached":
        return CachedInfoNCELoss(embedder, mini_batch_tokens=t.mini_batch_tokens, **options)
    return InfoNCELoss(embedder, **options)


def matryoshka_objective(t: TrainConfig, embedder: Embedder) -> MatryoshkaObjective | None:
    """The sum over truncated vectors when the config trains Matryoshka sizes (checked against the model's width
    here, once the model is known and before any step), else None: the plain loss."""
    if not t.matryoshka_dims:
        return None
    return MatryoshkaObjective(*sizes_and_weights(t.matryoshka_dims, t.matryoshka_weights, embedder.hidden_size))
