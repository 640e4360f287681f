"""Pair-classification metrics: hand-computed cases, then MTEB's own code on random scores with ties."""
from __future__ import annotations

import numpy as np
import pytest

from embedtune.data.pairs import PairData
from embedtune.evaluation.pairs import PairEvaluator, average_precision, best_accuracy, best_f1, pair_metrics


def test_hand_computed_metrics():
    scores, labels = [0.9, 0.8, 0.7, 0.6, 0.5], [1, 0, 1, 1, 0]
    # Positives at ranks 1, 3 and 4: precisions 1, 2/3, 3/4.
    assert average_precision(scores, labels) == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)
    # Predicting 1 above 0.55 gets 3 positives right and 1 negative: 4 of 5.
    assert best_accuracy(scores, labels) == pytest.approx((0.8, 0.55))
    # The same cut: precision 3/4, recall 1, F1 6/7.
    assert best_f1(scores, labels) == pytest.approx((6 / 7, 0.75, 1.0, 0.55))
    metrics = pair_metrics(scores, labels)
    assert metrics["kind"] == "pair_classification" and metrics["main_score"] == metrics["ap"]
    assert metrics["ap"] == pytest.approx(100 * 29 / 36) and metrics["f1"] == pytest.approx(600 / 7)
    assert metrics["accuracy"] == pytest.approx(80.0) and metrics["f1_threshold"] == pytest.approx(0.55)


def test_tied_scores_share_one_threshold():
    scores, labels = [0.9, 0.9, 0.5, 0.5], [1, 0, 1, 0]
    assert average_precision(scores, labels) == pytest.approx(0.5)  # one threshold per tie group: P 1/2 at R 1/2, 1
    assert best_accuracy(scores, labels) == pytest.approx((0.5, 0.7))  # only the cut between the groups
    assert best_f1(scores, labels) == pytest.approx((0.5, 0.5, 0.5, 0.7))
    assert best_accuracy([0.3, 0.3], [1, 0]) == (0.0, -1.0)  # nothing to cut: MTEB's defaults


def test_matches_mtebs_pair_classification_metrics():
    import mteb

    task = mteb.get_task("SprintDuplicateQuestions")  # only its metric code runs: no data is loaded
    rng = np.random.default_rng(0)
    for trial in range(200):
        n = int(rng.integers(2, 40))
        scores = rng.choice(np.linspace(-1, 1, int(rng.integers(2, 12))), n).tolist()  # many ties
        labels = rng.integers(0, 2, n)
        labels[:2] = [0, 1]
        rng.shuffle(labels)
        theirs = task._compute_metrics_values(scores, labels, True)
        accuracy, accuracy_threshold = best_accuracy(scores, labels)
        f1, precision, recall, _ = best_f1(scores, labels)
        ours = {"ap": average_precision(scores, labels), "accuracy": accuracy, "f1": f1, "precision": precision,
                "recall": recall}
        assert ours == pytest.approx(theirs, abs=1e-12), trial


class FixedEmbedder:
    """Vectors by text: a stand-in for a model, so that the cosines are known."""

    name, pooling, prompt = "fixed", "eos", None

    def __init__(self, vectors: dict[str, list[float]]):
        self.vectors = vectors
        self.calls: list[list[str]] = []

    def encode(self, texts, **kwargs):
        self.calls.append(list(texts))
        v = np.array([self.vectors[t] for t in texts], dtype=np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_evaluator_encodes_each_sentence_once_and_scores_cosines():
    vectors = {"a": [1, 0], "b": [1, 0], "c": [0, 1], "d": [1, 1]}
    first = PairData("first", ["a", "a", "c"], ["b", "c", "d"], [1, 0, 1])  # cosines 1, 0, 0.707
    second = PairData("second", ["a", "d"], ["d", "c"], [0, 1])  # cosines 0.707, 0.707
    embedder = FixedEmbedder(vectors)
    result = PairEvaluator([first, second], show_progress=False)(embedder)
    assert len(embedder.calls) == 1 and sorted(embedder.calls[0]) == ["a", "b", "c", "d"]
    assert result["tasks"]["first"]["ap"] == pytest.approx(100.0) and result["tasks"]["first"]["n"] == 3
    assert result["tasks"]["second"]["ap"] == pytest.approx(50.0) and result["tasks"]["second"]["positives"] == 1
    assert result["average"] == pytest.approx(75.0)
