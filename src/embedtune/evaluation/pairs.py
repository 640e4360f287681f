"""Score an embedder on pair-classification tasks as MTEB does: average precision of cosine similarity (the main
score), and the best F1 and best accuracy over thresholds, with those thresholds (x 100, like Spearman; the
thresholds stay cosines).

The metric code follows mteb's AbsTaskPairClassification (2.x) line for line in what it computes: sklearn's
average precision (ties share one threshold), and threshold scans that never split tied scores.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from embedtune.data.pairs import PairData
from embedtune.distributed import encode_across_ranks, is_main
from embedtune.evaluation.sts import paired_cosine, unique_sentences
from embedtune.models.embedder import Embedder


def _sorted_desc(scores: Sequence[float], labels: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-s, kind="stable")
    return s[order], np.asarray(labels, dtype=np.int64)[order]


def average_precision(scores: Sequence[float], labels: Sequence[int]) -> float:
    """sklearn's average_precision_score: sum over distinct thresholds of (recall step) x precision there."""
    s, y = _sorted_desc(scores, labels)
    ends = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last row of each group of tied scores
    tps = np.cumsum(y)[ends]
    if tps[-1] == 0:
        return 0.0
    precision = tps / (ends + 1)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _cuts(s: np.ndarray) -> np.ndarray:
    """Positions i where a threshold between row i and i + 1 separates them (no tie split), the last row excluded."""
    return np.flatnonzero(s[:-1] != s[1:])


def best_accuracy(scores: Sequence[float], labels: Sequence[int]) -> tuple[float, float]:
    """(best accuracy, its threshold): predict 1 above the threshold; MTEB's scan (0, -1 when nothing splits)."""
    s, y = _sorted_desc(scores, labels)
    cuts = _cuts(s)
    if len(cuts) == 0:
        return 0.0, -1.0
    positives_above = np.cumsum(y)[cuts]
    negatives_below = int((y == 0).sum()) - np.cumsum(1 - y)[cuts]
    accuracy = (positives_above + negatives_below) / len(y)
    best = int(np.argmax(accuracy))  # the first of equal maxima, as MTEB's strict '>' keeps
    if accuracy[best] <= 0:
        return 0.0, -1.0
    return float(accuracy[best]), float((s[cuts[best]] + s[cuts[best] + 1]) / 2)


def best_f1(scores: Sequence[float], labels: Sequence[int]) -> tuple[float, float, float, float]:
    """(best F1, its precision, its recall, its threshold); MTEB's scan (zeros when no cut finds a positive)."""
    s, y = _sorted_desc(scores, labels)
    cuts = _cuts(s)
    correct = np.cumsum(y)[cuts].astype(np.float64)
    keep = correct > 0
    cuts, correct = cuts[keep], correct[keep]
    if len(cuts) == 0:
        return 0.0, 0.0, 0.0, 0.0
    precision = correct / (cuts + 1)
    recall = correct / y.sum()
    f1 = 2 * precision * recall / (precision + recall)
    best = int(np.argmax(f1))
    return float(f1[best]), float(precision[best]), float(recall[best]), float((s[cuts[best]] + s[cuts[best] + 1]) / 2)


def pair_metrics(scores: Sequence[float], labels: Sequence[int]) -> dict[str, float]:
    """The task's JSON entry (without n): ap is the main score; every rate x 100."""
    ap = average_precision(scores, labels) * 100.0
    accuracy, accuracy_threshold = best_accuracy(scores, labels)
    f1, precision, recall, f1_threshold = best_f1(scores, labels)
    return {"kind": "pair_classification", "main_score": ap, "ap": ap, "f1": f1 * 100.0,
            "f1_threshold": f1_threshold, "precision": precision * 100.0, "recall": recall * 100.0,
            "accuracy": accuracy * 100.0, "accuracy_threshold": accuracy_threshold}


@dataclass
class PairEvaluator:
    """A callable: Embedder -> {"tasks": {name: metrics}, "average": mean AP x 100, ...}; each unique sentence is
    encoded once across its tasks."""

    datasets: list[PairData]
    batch_size: int = 64
    show_progress: bool = True
    primary_metric: str = "average"
    unique_sentences: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.unique_sentences = unique_sentences(self.datasets)

    def primary_score(self, result: dict) -> float:
        return float(result[self.primary_metric])

    def __call__(self, embedder: Embedder) -> dict:
        start = time.perf_counter()
        # Under torchrun each rank encodes a share and all get every vector (distributed.encode_across_ranks).
        vectors = encode_across_ranks(lambda texts: embedder.encode(
            texts, batch_size=self.batch_size, show_progress=self.show_progress and is_main(),
            desc=f"encoding {len(texts)} unique sentences (pairs)"), self.unique_sentences)
        row = {text: i for i, text in enumerate(self.unique_sentences)}
        tasks = {}
        for data in self.datasets:
            a, b = vectors[[row[t] for t in data.sentences1]], vectors[[row[t] for t in data.sentences2]]
            cosine = paired_cosine(a, b)
            tasks[data.name] = {**pair_metrics(cosine.tolist(), data.labels), "n": len(data),
                                "positives": int(sum(data.labels))}
        return {"tasks": tasks, "average": float(np.mean([t["main_score"] for t in tasks.values()])),
                "seconds": round(time.perf_counter() - start, 2), "unique_sentences": len(self.unique_sentences)}
