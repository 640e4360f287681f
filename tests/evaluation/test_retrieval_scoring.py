"""Retrieval metrics: a hand-computed query, pytrec_eval and MTEB's MRR on random runs with ties, and the
chunked exact top-k against a full sort."""
from __future__ import annotations

import math
import random

import numpy as np
import pytest

from embedtune.data.retrieval import RetrievalData
from embedtune.evaluation.retrieval import RetrievalEvaluator, id_ranks, query_metrics, retrieval_metrics, top_k


def test_hand_computed_query():
    # Ranked d2 d3 d1 d4; d3 has grade 2 and d1 grade 1.
    metrics = query_metrics(["d2", "d3", "d1", "d4"], {"d1": 1, "d3": 2, "d9": 0})
    dcg = 2 / math.log2(3) + 1 / math.log2(4)
    ideal = 2 / math.log2(2) + 1 / math.log2(3)
    assert metrics["ndcg@10"] == pytest.approx(dcg / ideal)
    assert metrics["mrr@10"] == pytest.approx(1 / 2)
    assert metrics["map@10"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert metrics["recall@10"] == metrics["recall@100"] == 1.0
    # A relevant document past the cut: counted by recall@100 only.
    far = query_metrics([f"x{i}" for i in range(10)] + ["d1"], {"d1": 1, "d3": 1})
    assert (far["recall@10"], far["recall@100"], far["mrr@10"], far["ndcg@10"]) == (0.0, 0.5, 0.0, 0.0)


def test_means_over_queries_x100_with_the_main_score():
    result = retrieval_metrics({"q1": ["a", "b"], "q2": ["b", "a"]}, {"q1": {"a": 1}, "q2": {"a": 1}})
    assert result["kind"] == "retrieval" and result["main_score"] == result["ndcg@10"]
    assert result["mrr@10"] == pytest.approx(75.0) and result["recall@10"] == pytest.approx(100.0)
    assert result["ndcg@10"] == pytest.approx(50 * (1 + 1 / math.log2(3)))


def ranked(run: dict[str, float]) -> list[str]:
    """trec_eval's order: score descending, ties by document id descending."""
    return [d for d, _ in sorted(run.items(), key=lambda item: (item[1], item[0]), reverse=True)]


def test_matches_pytrec_eval_and_mtebs_mrr_on_random_runs():
    pytrec_eval = pytest.importorskip("pytrec_eval")
    from mteb._evaluators.retrieval_metrics import mrr

    rng = random.Random(0)
    for trial in range(100):
        docs = [f"d{i}" for i in range(rng.randint(1, 120))]
        judged = [rng.sample(docs, rng.randint(1, min(9, len(docs)))) for _ in range(4)]
        qrels = {f"q{q}": {d: rng.choice([0, 1, 1, 2, 3, -1]) for d in sample} for q, sample in enumerate(judged)}
        runs = {q: {d: rng.choice([0.1, 0.2, 0.3, 0.5, 0.9]) for d in docs} for q in qrels}  # many ties
        trec = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.10,100", "map_cut.10"}).evaluate(runs)
        theirs_mrr = mrr(qrels, runs, [10])["MRR@10"]
        for i, q in enumerate(qrels):
            ours = query_metrics(ranked(runs[q])[:100], qrels[q])
            assert ours["ndcg@10"] == pytest.approx(trec[q]["ndcg_cut_10"], abs=1e-12), trial
            assert ours["recall@10"] == pytest.approx(trec[q]["recall_10"], abs=1e-12), trial
            assert ours["recall@100"] == pytest.approx(trec[q]["recall_100"], abs=1e-12), trial
            assert ours["map@10"] == pytest.approx(trec[q]["map_cut_10"], abs=1e-12), trial
            assert ours["mrr@10"] == pytest.approx(theirs_mrr[i], abs=1e-12), trial


def test_chunked_top_k_is_the_exact_total_order():
    rng = np.random.default_rng(0)
    # Few distinct values: ties across chunk borders and at the cut.
    documents = rng.integers(-2, 3, (70, 4)).astype(np.float32)
    queries = rng.integers(-2, 3, (9, 4)).astype(np.float32)
    ids = [f"doc{rng.integers(0, 10**6)}-{i}" for i in range(70)]
    ranks = id_ranks(ids)
    excluded = [None, 3, None, 69, None, None, 0, None, None]
    scores, index = top_k(queries, documents, 12, ranks, excluded, query_chunk=4, doc_chunk=8)
    full = queries @ documents.T
    for q in range(len(queries)):
        order = sorted((d for d in range(70) if d != excluded[q]), key=lambda d: (full[q, d], ids[d]), reverse=True)
        assert index[q].tolist() == order[:12], q
        assert scores[q].tolist() == [full[q, d] for d in order[:12]]
    small_scores, small_index = top_k(queries, documents[:5], 12, id_ranks(ids[:5]))  # k above the corpus size
    assert small_index.shape == (9, 5)


class TextEmbedder:
    """Vectors by text (the prompt is applied first, so a prompt changes the vector): a stand-in for a model."""

    name, pooling = "fixed", "eos"

    def __init__(self, vectors: dict[str, list[float]]):
        self.vectors, self.prompt, self.seen = vectors, None, []

    def encode(self, texts, **kwargs):
        shown = [self.prompt.replace("{}", t) if self.prompt else t for t in texts]
        self.seen.append(shown)
        v = np.array([self.vectors[t] for t in shown], dtype=np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_evaluator_encodes_the_corpus_once_with_its_prompts_and_ignores_identical_ids():
    data = RetrievalData("toy", ["q1", "d1", "d2"], ["the q1 text", "cats", "dogs"], ["q1", "q2"], ["purr", "bark"],
                         {"q1": {"d1": 1}, "q2": {"d2": 1, "d1": 0}}, ignore_identical_ids=True)
    vectors = {"doc: the q1 text": [1, 0.05], "doc: cats": [1, 0.2], "doc: dogs": [0, 1], "query: purr": [1, 0.06],
               "query: bark": [0.3, 1]}
    embedder = TextEmbedder(vectors)
    evaluator = RetrievalEvaluator([data], show_progress=False, query_prompt="query: {}", document_prompt="doc: {}")
    assert evaluator.run(embedder, data) == {"q1": ["d1", "d2"], "q2": ["d2", "d1", "q1"]}  # q1 never finds q1
    result = evaluator(embedder)
    assert embedder.seen[0] == ["doc: the q1 text", "doc: cats", "doc: dogs"] and embedder.prompt is None
    task = result["tasks"]["toy"]
    assert task["ndcg@10"] == task["main_score"] == pytest.approx(100.0) and task["mrr@10"] == pytest.approx(100.0)
    assert (task["queries"], task["documents"]) == (2, 3) and result["average"] == pytest.approx(100.0)
