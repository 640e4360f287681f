"""InfoNCE over cosine similarity / temperature, with in-batch and hard negatives (the paper's loss).

Each anchor is scored against every positive and every hard negative in the batch; its own positive is the
target class. With temperature 0.05 this equals sentence-transformers' MultipleNegativesRankingLoss (scale 20).
`symmetric` adds the reverse direction (each positive against every anchor, its own anchor the target) and
averages the two, as sentence-transformers' MultipleNegativesSymmetricRankingLoss does: the same vectors, a
second set of negatives (the other anchors) at the cost of one more small matrix product.
`all_directions` is GTE's improved contrastive loss (arXiv 2308.03281): one softmax per triplet over the anchor's
candidates, the other anchors, every anchor against the positive, and the other triplets' texts against the
positive; its negatives cost no extra forward pass either.
`hardness` weights negatives by how hard they already are (EmbeddingGemma, arXiv 2509.20354; Lan et al. 2025):
each chosen negative's logit gains hardness x its cosine, without gradient through that weight.
`cosent` adds that weight x CoSENT's ranking term (losses/cosent.py): every (anchor, positive) cosine of the batch
above every (anchor, hard negative) cosine, across triplets, as STS's rankings of unrelated pairs ask.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from embedtune.config import HARDNESS_MODES, MAX_TEMPERATURE, MIN_TEMPERATURE
from embedtune.data.sampling import TripletBatch
from embedtune.losses.cosent import ranked_groups_loss
from embedtune.models.embedder import Embedder


class _GatherWithGrad(torch.autograd.Function):
    """All ranks' rows (rank r's at r * n); backward sums every rank's gradient for this rank's rows.

    Each rank's loss uses all ranks' candidates, so the gradient of the global loss with respect to this rank's
    rows is the sum over ranks; the engine's mean over ranks then yields the single-process gradient.
    """

    @staticmethod
    def forward(ctx, rows: torch.Tensor) -> torch.Tensor:
        gathered = [torch.empty_like(rows) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, rows.contiguous())
        return torch.cat(gathered)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)  # every backend has all_reduce (gloo lacks reduce_scatter)
        n = grad.shape[0] // dist.get_world_size()
        return grad[dist.get_rank() * n:(dist.get_rank() + 1) * n]


def gather_candidates(candidates: torch.Tensor, gather_with_grad: bool) -> torch.Tensor:
    """All ranks' candidates in rank order (rank r's rows at r * n); the local rows keep their graph either way."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return candidates
    if gather_with_grad:
        return _GatherWithGrad.apply(candidates)
    gathered = [torch.zeros_like(candidates) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, candidates.contiguous())
    gathered[dist.get_rank()] = candidates  # keep the local rows in the graph
    return torch.cat(gathered)


def compute_loss_from_embeddings(
    anchors: torch.Tensor,
    positives: torch.Tensor,
    negatives: torch.Tensor | None,
    temperature: torch.Tensor | float,
    gather_with_grad: bool = False,
    symmetric: bool = False,
    hardness: float = 0.0,
    hardness_mode: str = "hard_negatives",
    all_directions: bool = False,
    cosent: float = 0.0,
) -> torch.Tensor:
    """Mean cross-entropy of each anchor over [all positives; all hard negatives]; inputs are L2-normalised.
    With `symmetric`, the mean of that and of each positive's cross-entropy over all anchors. With `hardness`,
    the anchor's negatives picked by `hardness_mode` get hardness x their (detached) cosine added to their logit.
    With `all_directions`, one cross-entropy over [that row; the other anchors; all anchors against the positive;
    the other triplets' texts against the positive] (GTE). With `cosent` (hard negatives needed), plus that weight x
    CoSENT over every rank's (anchor, positive) and (anchor, hard negative) cosines, the same on every rank.

    Across ranks (local_loss style): local anchors against every rank's candidates, so memory grows with the
    local batch only; `gather_with_grad` lets gradients flow into other ranks' candidates too.
    """
    n = positives.shape[0]
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    world_positives = gather_candidates(positives, gather_with_grad)
    candidates = [world_positives]
    if negatives is not None:
        candidates.append(gather_candidates(negatives, gather_with_grad))
    all_candidates = torch.cat(candidates)
    cosines = anchors @ all_candidates.T
    targets = torch.arange(n, device=anchors.device) + rank * n
    logits = cosines / temperature
    if hardness:
        weighted = hardness_weighted_columns(cosines.shape, targets, negatives is not None, hardness_mode)
        logits = logits + torch.where(weighted, hardness * cosines.detach(), 0.0)
    if all_directions:
        logits = torch.cat([logits, *_other_directions(anchors, positives, all_candidates, targets,
                                                       gather_with_grad, temperature)], dim=1)
    loss = F.cross_entropy(logits.float(), targets)
    if symmetric:
        reverse = positives @ gather_candidates(anchors, gather_with_grad).T / temperature
        loss = (loss + F.cross_entropy(reverse.float(), targets)) / 2
    if cosent and negatives is not None:
        pairs = [gather_candidates((anchors * texts).sum(-1), gather_with_grad) for texts in (positives, negatives)]
        loss = loss + cosent * ranked_groups_loss(pairs, 1 / temperature)
    return loss


def _other_directions(anchors: torch.Tensor, positives: torch.Tensor, candidates: torch.Tensor, targets: torch.Tensor,
                      gather_with_grad: bool, temperature: torch.Tensor | float) -> list[torch.Tensor]:
    """GTE's extra logits: anchor vs other anchors, positive vs all anchors, positive vs other triplets' texts.

    The anchor itself and the positive's own triplet (itself, its hard negative) are masked out, since they are not
    negatives; the positive's own anchor stays, as in GTE's partition function.
    """
    rows = torch.arange(anchors.shape[0], device=anchors.device)
    world_anchors = gather_candidates(anchors, gather_with_grad)
    anchor_anchor = _masked(anchors @ world_anchors.T / temperature, rows, targets)
    positive_anchor = positives @ world_anchors.T / temperature
    positive_text = positives @ candidates.T / temperature
    world_n = world_anchors.shape[0]
    for offset in range(0, candidates.shape[0], world_n):  # its own positive, then its own hard negative
        positive_text = _masked(positive_text, rows, targets + offset)
    return [anchor_anchor, positive_anchor, positive_text]


def _masked(logits: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """The logits with (rows[i], columns[i]) set to -inf: out of every softmax, without touching the graph's input."""
    return logits.index_put((rows, columns), logits.new_full((), -torch.inf))


def hardness_weighted_columns(shape: torch.Size, targets: torch.Tensor, has_negatives: bool,
                              mode: str) -> torch.Tensor:
    """True where an anchor's logit gets the hardness term; columns are [all positives; all negatives].

    hard_negatives: the anchor's own hard negative only (EmbeddingGemma); in_batch: every other triplet's positive
    and hard negative; all: every candidate but the anchor's own positive.
    """
    if mode not in HARDNESS_MODES:
        raise ValueError(f"hardness_mode must be one of {', '.join(HARDNESS_MODES)}, got '{mode}'")
    rows = torch.arange(shape[0], device=targets.device)
    world_n = shape[1] // 2 if has_negatives else shape[1]
    own = torch.zeros(shape, dtype=torch.bool, device=targets.device)
    own[rows, targets] = True
    own_negative = torch.zeros_like(own)
    if has_negatives:
        own_negative[rows, targets + world_n] = True
    if mode == "hard_negatives":
        chosen = own_negative
    elif mode == "in_batch":
        chosen = ~(own | own_negative)
    else:
        chosen = ~own
    return chosen


class InfoNCELoss(nn.Module):
    """forward(batch) embeds the batch's texts once each, then hands the vectors to compute_loss_from_embeddings.

    The temperature is kept as log(1/temperature), as CLIP keeps its logit scale: positive by construction and
    well-scaled for the optimiser. A learnable one is clamped to [MIN_TEMPERATURE, MAX_TEMPERATURE] by
    `clamp_temperature()` after each optimiser step, outside the loss; a fixed one is used exactly as given.
    """

    def __init__(self, embedder: Embedder, temperature: float = 0.05, learnable_temperature: bool = False,
                 hard_negatives: bool = True, chunk_tokens: int = 4096, gather_with_grad: bool = True,
                 packing: bool = True, symmetric: bool = False, hardness: float = 0.0,
                 hardness_mode: str = "hard_negatives", all_directions: bool = False, cosent: float = 0.0,
                 objective: Callable[..., torch.Tensor] | None = None):
        super().__init__()
        self.embedder = embedder
        # The loss over the vectors: compute_loss_from_embeddings, or a wrapper with its arguments (Matryoshka's
        # sum over truncated vectors, losses/matryoshka.py).
        self.objective = objective or compute_loss_from_embeddings
        self.hard_negatives = hard_negatives
        self.symmetric = symmetric
        self.hardness = hardness
        self.hardness_mode = hardness_mode
        self.all_directions = all_directions
        self.cosent = cosent
        self.chunk_tokens = chunk_tokens
        self.gather_with_grad = gather_with_grad
        self.packing = packing
        log_scale = torch.tensor(math.log(1.0 / temperature), device=embedder.device)
        if learnable_temperature:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale, persistent=False)

    @property
    def learnable(self) -> bool:
        return isinstance(self.log_scale, nn.Parameter)

    @property
    def temperature(self) -> torch.Tensor:
        return torch.exp(-self.log_scale)

    @torch.no_grad()
    def clamp_temperature(self) -> None:
        """Keep a learnable temperature in range (called by the trainer after optimizer.step())."""
        if self.learnable:
            self.log_scale.clamp_(math.log(1.0 / MAX_TEMPERATURE), math.log(1.0 / MIN_TEMPERATURE))

    def embed_unique(self, unique: list[list[int]]) -> torch.Tensor:
        """Vectors of distinct token lists, in order; the cached variant overrides only this."""
        return self.embedder.embed_tokens(unique, max_tokens=self.chunk_tokens, packing=self.packing)

    def embed(self, batch: TripletBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        unique, inverse = _deduplicate(batch.texts())
        vectors = self.embed_unique(unique)[inverse]
        n = len(batch.anchors)
        negatives = vectors[2 * n:] if batch.negatives is not None and self.hard_negatives else None
        return vectors[:n], vectors[n:2 * n], negatives

    def forward(self, batch: TripletBatch) -> torch.Tensor:
        anchors, positives, negatives = self.embed(batch)
        return self.objective(anchors, positives, negatives, self.temperature, self.gather_with_grad,
                              self.symmetric, self.hardness, self.hardness_mode, self.all_directions, self.cosent)


def _deduplicate(texts: list[list[int]]) -> tuple[list[list[int]], torch.Tensor]:
    """Each distinct token list once (a premise shared by several triplets is encoded once)."""
    index: dict[tuple[int, ...], int] = {}
    inverse = [index.setdefault(tuple(t), len(index)) for t in texts]
    return [list(k) for k in index], inverse
