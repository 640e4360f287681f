"""CoSENT's ranking loss (Su 2022; beside InfoNCE in AnglE, arXiv 2309.12871) over pairs that come in ranked groups.

InfoNCE ranks one anchor's candidates against each other; STS scores rank pairs of *different* sentences, which
InfoNCE never asks for. CoSENT asks it directly: every pair of a more similar group (anchor, positive) must score
above every pair of a less similar one (anchor, hard negative), across the whole batch:
log(1 + sum over higher pair i, lower pair j of exp(scale x (cos_j - cos_i))).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch


def ranked_groups_loss(groups: Sequence[torch.Tensor], scale: torch.Tensor | float) -> torch.Tensor:
    """CoSENT over pair cosines given as groups, most similar first.

    The double sum over a higher and a lower group factors into two log-sum-exps, so the cost is linear in the
    number of pairs (sentence-transformers' CoSENTLoss over the same pairs and 0/1 labels gives the same value).
    """
    scaled = [g.float() * scale for g in groups]
    terms = [torch.logsumexp(lower, 0) + torch.logsumexp(-higher, 0)
             for k, higher in enumerate(scaled) for lower in scaled[k + 1:]]
    return torch.logsumexp(torch.stack([scaled[0].new_zeros(()), *terms]), 0)
