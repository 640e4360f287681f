"""Score an embedder on BEIR-format retrieval as MTEB does (pytrec_eval's nDCG, recall and MAP; MTEB's own MRR):
ndcg@10 (the main score), recall@10, recall@100, mrr@10 and map@10, x 100.

The corpus is encoded once; each query's exact top-k comes from chunked matrix products (queries x a slice of
the corpus at a time), so memory stays at one chunk of scores whatever the corpus size. Ranks follow
trec_eval: score descending, ties by document id descending, a total order, so the top-k is exact and the same
as pytrec_eval and MTEB would rank.
"""
from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from embedtune.data.retrieval import RetrievalData
from embedtune.distributed import encode_across_ranks, is_main
from embedtune.models.embedder import Embedder

TOP_K = 100  # the deepest cut a reported metric looks at (recall@100)
METRICS = ("ndcg@10", "recall@10", "recall@100", "mrr@10", "map@10")


def id_ranks(ids: Sequence[str]) -> np.ndarray:
    """Each id's position in string order: the tie-break key (a higher id ranks first among equal scores)."""
    order = sorted(range(len(ids)), key=ids.__getitem__)
    ranks = np.empty(len(ids), dtype=np.int64)
    ranks[order] = np.arange(len(ids))
    return ranks


def _best_k(scores: np.ndarray, index: np.ndarray, tie_key: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the k best (score desc, tie_key desc) of the candidates `index` holding `scores`, in rank order."""
    keep = min(k, scores.shape[1])
    if scores.shape[1] > keep:
        # Everything scoring at least the k-th best is a candidate (ties at the cut included), then the total order.
        kth = -np.partition(-scores, keep - 1, axis=1)[:, keep - 1 : keep]
        rows = []
        for r in range(scores.shape[0]):
            cand = np.flatnonzero(scores[r] >= kth[r])
            rows.append(cand[np.lexsort((-tie_key[index[r, cand]], -scores[r, cand]))][:keep])
        pick = np.stack(rows)
    else:
        pick = np.lexsort((-tie_key[index], -scores), axis=1)
    take = np.take_along_axis
    return take(scores, pick, 1), take(index, pick, 1)


def top_k(queries: np.ndarray, documents: np.ndarray, k: int, tie_key: np.ndarray,
          excluded: Sequence[int | None] | None = None, query_chunk: int = 256,
          doc_chunk: int = 16384) -> tuple[np.ndarray, np.ndarray]:
    """(scores, document indices), each (n_queries, min(k, n_docs)), best first; `excluded[q]` is a document
    index query q must not retrieve (MTEB's ignore_identical_ids): it scores -inf, and comes last if at all."""
    n_docs = len(documents)
    k = min(k, n_docs)
    out_scores, out_index = [], []
    for q0 in range(0, len(queries), query_chunk):
        q = queries[q0 : q0 + query_chunk]
        best_s = np.empty((len(q), 0), dtype=np.float32)
        best_i = np.empty((len(q), 0), dtype=np.int64)
        for d0 in range(0, n_docs, doc_chunk):
            chunk = (q @ documents[d0 : d0 + doc_chunk].T).astype(np.float32)
            if excluded is not None:
                for r, e in enumerate(excluded[q0 : q0 + len(q)]):
                    if e is not None and d0 <= e < d0 + chunk.shape[1]:
                        chunk[r, e - d0] = -np.inf
            index = np.broadcast_to(np.arange(d0, d0 + chunk.shape[1]), chunk.shape)
            best_s, best_i = _best_k(np.hstack([best_s, chunk]), np.hstack([best_i, index]), tie_key, k)
        out_scores.append(best_s)
        out_index.append(best_i)
    return np.vstack(out_scores), np.vstack(out_index)


def query_metrics(ranked: Sequence[str], relevant: Mapping[str, int]) -> dict[str, float]:
    """One query's metrics (fractions) from its ranked document ids, as trec_eval (relevance >= 1 counts as
    relevant; nDCG gains are the grades) and MTEB's MRR (grade > 0) define them."""
    hits = [relevant.get(d, 0) for d in ranked]
    n_relevant = sum(1 for g in relevant.values() if g >= 1)
    ideal = sorted((g for g in relevant.values() if g > 0), reverse=True)

    def dcg(gains: Sequence[int], k: int) -> float:
        return sum(g / math.log2(i + 2) for i, g in enumerate(gains[:k]) if g > 0)

    def recall(k: int) -> float:
        return sum(1 for g in hits[:k] if g >= 1) / n_relevant if n_relevant else 0.0

    idcg = dcg(ideal, 10)
    precisions, found = [], 0
    for i, g in enumerate(hits[:10]):
        if g >= 1:
            found += 1
            precisions.append(found / (i + 1))
    first = next((i for i, g in enumerate(hits[:10]) if g > 0), None)
    return {"ndcg@10": dcg(hits, 10) / idcg if idcg > 0 else 0.0, "recall@10": recall(10), "recall@100": recall(100),
            "mrr@10": 1.0 / (first + 1) if first is not None else 0.0,
            "map@10": sum(precisions) / n_relevant if n_relevant else 0.0}


def retrieval_metrics(run: Mapping[str, Sequence[str]], qrels: Mapping[str, Mapping[str, int]]) -> dict[str, float]:
    """Mean over the queries of `run` (query id -> ranked document ids) of each metric, x 100; main_score beside."""
    per_query = [query_metrics(run[q], qrels[q]) for q in run]
    means = {m: 100.0 * sum(p[m] for p in per_query) / len(per_query) for m in METRICS}
    return {"kind": "retrieval", "main_score": means["ndcg@10"], **means}


@dataclass
class RetrievalEvaluator:
    """A callable: Embedder -> {"tasks": {name: metrics}, "average": mean nDCG@10 x 100, ...}.

    `query_prompt` / `document_prompt`, when given, replace the embedder's own prompt for queries / documents
    (a template with '{}', like --prompt); None keeps the embedder's.
    """

    datasets: list[RetrievalData]
    batch_size: int = 64
    show_progress: bool = True
    query_prompt: str | None = None
    document_prompt: str | None = None
    top_k: int = TOP_K
    primary_metric: str = "average"

    def primary_score(self, result: dict) -> float:
        return float(result[self.primary_metric])

    def _encode(self, embedder: Embedder, texts: list[str], prompt: str | None, what: str) -> np.ndarray:
        saved = embedder.prompt
        embedder.prompt = saved if prompt is None else prompt
        try:
            # Under torchrun each rank encodes a share and all get every vector (distributed.encode_across_ranks).
            return encode_across_ranks(lambda share: embedder.encode(
                share, batch_size=self.batch_size, show_progress=self.show_progress and is_main(),
                desc=f"encoding {len(share)} {what}"), texts)
        finally:
            embedder.prompt = saved

    def run(self, embedder: Embedder, data: RetrievalData) -> dict[str, list[str]]:
        """Query id -> its top-k document ids, best first."""
        documents = self._encode(embedder, data.documents, self.document_prompt, f"documents ({data.name})")
        queries = self._encode(embedder, data.queries, self.query_prompt, f"queries ({data.name})")
        position = {d: i for i, d in enumerate(data.doc_ids)}
        excluded = [position.get(q) for q in data.query_ids] if data.ignore_identical_ids else None
        scores, index = top_k(queries, documents, self.top_k, id_ranks(data.doc_ids), excluded)
        return {q: [data.doc_ids[i] for i, s in zip(row, row_scores, strict=True) if s > -np.inf]
                for q, row, row_scores in zip(data.query_ids, index, scores, strict=True)}

    def __call__(self, embedder: Embedder) -> dict:
        start = time.perf_counter()
        tasks = {}
        for data in self.datasets:
            metrics = retrieval_metrics(self.run(embedder, data), data.qrels)
            tasks[data.name] = {**metrics, "queries": len(data.query_ids), "documents": len(data.doc_ids),
                                **data.skipped}
        return {"tasks": tasks, "average": float(np.mean([t["main_score"] for t in tasks.values()])),
                "seconds": round(time.perf_counter() - start, 2),
                "query_prompt": self.query_prompt, "document_prompt": self.document_prompt}
