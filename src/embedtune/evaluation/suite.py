"""Evaluation over tasks of any kind: STS, pair classification and retrieval, in one result.

The STS part of the result is exactly what STSEvaluator returns (`tasks`, `average` ± `std` over the STS tasks
only: the paper's nine-set summary); each other kind adds its own section (`pair_classification`, `retrieval`)
with its tasks and their average main score. Every task entry carries `kind` and `main_score` (x 100).
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from embedtune.data.sts import resolve_data_dir
from embedtune.data.tasks import kind_of, load_task, resolve_any_tasks
from embedtune.errors import ConfigError
from embedtune.evaluation.pairs import PairEvaluator
from embedtune.evaluation.retrieval import RetrievalEvaluator
from embedtune.evaluation.sts import STSEvaluator
from embedtune.models.embedder import Embedder

SECTIONS = ("pair_classification", "retrieval")  # result keys of the kinds other than STS, in report order


@dataclass
class EvaluationSuite:
    """A callable: Embedder -> the `embedtune eval` JSON. Only the kinds asked for are evaluated."""

    sts: STSEvaluator | None = None
    pairs: PairEvaluator | None = None
    retrieval: RetrievalEvaluator | None = None

    @classmethod
    def from_tasks(cls, tasks: Sequence[str] | None = None, data_dir: str | Path | None = None, *,
                   batch_size: int = 64, show_progress: bool = True, query_prompt: str | None = None,
                   document_prompt: str | None = None, dims: Sequence[int] = ()) -> EvaluationSuite:
        # Every file of every task is read and checked before any model work starts.
        root = resolve_data_dir(data_dir)
        by_kind: dict[str, list] = {"sts": [], "pair_classification": [], "retrieval": []}
        for task in resolve_any_tasks(list(tasks) if tasks else None, root):
            by_kind[kind_of(task)].append(load_task(task, root))
        if dims and not by_kind["sts"]:
            raise ConfigError(f"eval.dims {list(dims)}: truncated vectors are scored on STS tasks, and none is asked "
                              "for")
        common = {"batch_size": batch_size, "show_progress": show_progress}
        return cls(
            sts=STSEvaluator(by_kind["sts"], dims=tuple(dims), **common) if by_kind["sts"] else None,
            pairs=PairEvaluator(by_kind["pair_classification"], **common) if by_kind["pair_classification"] else None,
            retrieval=RetrievalEvaluator(by_kind["retrieval"], query_prompt=query_prompt,
                                         document_prompt=document_prompt, **common) if by_kind["retrieval"] else None)

    def __call__(self, embedder: Embedder) -> dict:
        start = time.perf_counter()
        result = self.sts(embedder) if self.sts is not None else _no_sts(embedder)
        for section, evaluator in zip(SECTIONS, (self.pairs, self.retrieval), strict=True):
            if evaluator is not None:
                result[section] = evaluator(embedder)
        if self.pairs is not None or self.retrieval is not None:
            result["seconds"] = round(time.perf_counter() - start, 2)  # all kinds; each section has its own
        return result


def _no_sts(embedder: Embedder) -> dict:
    """The STS keys of the result when no STS task was asked for: nothing scored, so no average."""
    return {"model": embedder.name, "pooling": embedder.pooling, "prompt": embedder.prompt, "tasks": {},
            "average": None, "std": None, "seconds": 0.0, "sentences": 0, "unique_sentences": 0,
            "sentences_per_s": None}
