"""Which triplets each step trains on: tokenised once up front, a fixed shuffle per epoch, exact on resume."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from embedtune.data.nli import Triplet
from embedtune.errors import TrainingError


@dataclass(frozen=True)
class TripletBatch:
    """Token ids of one contrastive batch; `negatives` is None for the no-hard-negative ablation."""

    anchors: list[list[int]]
    positives: list[list[int]]
    negatives: list[list[int]] | None

    def texts(self) -> list[list[int]]:
        return self.anchors + self.positives + (self.negatives or [])

    @property
    def n_tokens(self) -> int:
        return sum(len(x) for x in self.texts())


@dataclass
class TokenizedTriplets:
    anchors: list[list[int]]
    positives: list[list[int]]
    negatives: list[list[int]] | None  # None when hard negatives are off: never tokenised

    def batch(self, rows: Sequence[int]) -> TripletBatch:
        negatives = [self.negatives[i] for i in rows] if self.negatives is not None else None
        return TripletBatch([self.anchors[i] for i in rows], [self.positives[i] for i in rows], negatives)

    def __len__(self) -> int:
        return len(self.anchors)


def tokenize_triplets(tokenize: Callable[[list[str]], list[list[int]]], triplets: Sequence[Triplet],
                      hard_negatives: bool = True) -> TokenizedTriplets:
    """Tokenise every text once, so that steps do no tokenizer work (`tokenize` is Embedder.tokenize)."""
    return TokenizedTriplets(tokenize([t.anchor for t in triplets]), tokenize([t.positive for t in triplets]),
                             tokenize([t.negative for t in triplets]) if hard_negatives else None)


def batch_rows(step: int, n_rows: int, batch_size: int, seed: int) -> list[int]:
    """Rows of global step `step`: a fixed shuffle per epoch, so a resumed run sees the same batches."""
    per_epoch = n_rows // batch_size
    epoch, position = divmod(step, per_epoch)
    order = torch.randperm(n_rows, generator=torch.Generator().manual_seed(seed + epoch))
    return order[position * batch_size:(position + 1) * batch_size].tolist()


def total_steps(n_rows: int, batch_size: int, epochs: int, max_steps: int | None) -> int:
    per_epoch = n_rows // batch_size
    if per_epoch == 0:
        raise TrainingError(f"{n_rows} training rows cannot fill one batch of {batch_size}")
    return max_steps or per_epoch * epochs
