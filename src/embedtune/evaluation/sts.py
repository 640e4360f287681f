"""Score an embedder on STS tasks exactly as MTEB does: Spearman (x 100) of cosine similarity vs gold.

Each unique sentence is encoded once across all tasks (the nine sets hold 48,400 sentences, 27,640 unique).
Progress: that one encoding is nearly all of an evaluation's time, so its bar's ETA is the whole evaluation's;
then each task's score gets a line of its own as it is computed (none with show_progress=False).
"""
from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr
from tqdm.auto import tqdm

from embedtune.data.sts import STSData, load_sts, resolve_data_dir, resolve_tasks
from embedtune.distributed import encode_across_ranks, is_main
from embedtune.models.embedder import Embedder, check_dims, truncate_vectors
from embedtune.progress import progress_bar


def spearman_x100(predicted: Sequence[float], gold: Sequence[float]) -> float:
    return float(spearmanr(predicted, gold).statistic) * 100.0


def paired_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity computed as MTEB's scorer does (sklearn's paired_cosine_distances):
    1 - |a/|a| - b/|b||^2 / 2 in the embeddings' own float32. Near-identical vectors then tie exactly as they
    do in MTEB, which keeps our Spearman equal to MTEB's main score (cosine_spearman)."""
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), np.finfo(np.float32).tiny)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), np.finfo(np.float32).tiny)
    diff = a - b
    return 1.0 - 0.5 * np.einsum("ij,ij->i", diff, diff)


def unique_sentences(datasets: Sequence) -> list[str]:
    """Every sentence of the pair sets' two sides once, in first-seen order (each is encoded once)."""
    seen: dict[str, None] = {}
    for data in datasets:
        seen.update(dict.fromkeys(data.sentences1))
        seen.update(dict.fromkeys(data.sentences2))
    return list(seen)


def report_task(name: str, score: float, pairs: int, position: tuple[int, int], start: float) -> None:
    """One line as a task's score is computed: `sts12: Spearman 72.31 (3108 pairs) [1/9, 41.2 s in all]`.
    Written through tqdm, so that a bar drawn on the terminal stays below it."""
    done, total = position
    tqdm.write(f"{name}: Spearman {score:.2f} ({pairs} pairs) [{done}/{total}, "
               f"{time.perf_counter() - start:.1f} s in all]", file=sys.stderr)


def average_and_std(scores: Sequence[float]) -> tuple[float, float]:
    """The paper's convention: mean and population standard deviation over the tasks."""
    values = np.asarray(scores, dtype=np.float64)
    return float(values.mean()), float(values.std(ddof=0))


@dataclass
class STSEvaluator:
    """A callable: Embedder -> metrics dict (the JSON written by `embedtune eval`).

    As in sentence-transformers, `primary_metric` names the one number that ranks models (the trainer keeps the
    checkpoint that maximises it): here the average Spearman x100 over the evaluator's tasks.
    """

    datasets: list[STSData]
    batch_size: int = 64
    show_progress: bool = True
    name_suffix: str = ""
    primary_metric: str = "average"
    # Under torchrun: every rank encodes a share of the sentences and all get all vectors (same scores as one
    # process). Off for an evaluation that rank 0 runs alone (the dev evaluation inside training).
    across_ranks: bool = True
    # Matryoshka sizes: the vectors truncated to each and re-normalised are scored too ("dims" in the result).
    dims: Sequence[int] = ()
    unique_sentences: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.unique_sentences = unique_sentences(self.datasets)

    @classmethod
    def from_tasks(cls, tasks: Sequence[str] | None = None, data_dir: str | Path | None = None,
                   split: str | None = None, **kwargs) -> STSEvaluator:
        # Every file is read and checked before any model work starts.
        records = resolve_tasks(list(tasks) if tasks else None)
        root = resolve_data_dir(data_dir)
        return cls([load_sts(task, root, split) for task in records], **kwargs)

    def primary_score(self, result: dict) -> float:
        return float(result[self.primary_metric])

    @property
    def n_sentences(self) -> int:
        return sum(2 * len(d) for d in self.datasets)

    def __call__(self, embedder: Embedder) -> dict:
        check_dims(self.dims, embedder.hidden_size)  # a size above the width fails before the encoding
        start = time.perf_counter()

        def encode(texts: list[str]) -> np.ndarray:
            return embedder.encode(texts, batch_size=self.batch_size, show_progress=self.show_progress and is_main(),
                                   desc=f"STS, {len(self.datasets)} tasks: encoding {len(texts)} unique sentences")

        vectors = encode_across_ranks(encode, self.unique_sentences) if self.across_ranks else encode(
            self.unique_sentences)
        tasks = self.score_vectors(vectors, start)
        by_dim = self.score_truncations(vectors)
        seconds = time.perf_counter() - start
        average, std = average_and_std([t["spearman"] for t in tasks.values()])
        result = {
            "model": embedder.name,
            "pooling": embedder.pooling,
            "prompt": embedder.prompt,
            "tasks": tasks,
            "average": average,
            "std": std,
            "seconds": round(seconds, 2),
            "sentences": self.n_sentences,
            "unique_sentences": len(self.unique_sentences),
            "sentences_per_s": round(self.n_sentences / seconds, 1) if seconds > 0 else None,
        }
        if by_dim:
            result["dims"] = by_dim
        return result

    def score_vectors(self, vectors: np.ndarray, started: float | None = None) -> dict[str, dict]:
        """Each task's entry from the unique sentences' vectors (rows in unique_sentences order); with `started`
        (the evaluation's start), a line per task as it is scored."""
        row = {text: i for i, text in enumerate(self.unique_sentences)}
        tasks = {}
        for done, data in enumerate(self.datasets, 1):
            a = vectors[[row[t] for t in data.sentences1]]
            b = vectors[[row[t] for t in data.sentences2]]
            score = spearman_x100(paired_cosine(a, b), data.scores)
            # Full precision in the JSON (display rounds): MTEB agreement is checked to 1e-4.
            tasks[data.name + self.name_suffix] = {"spearman": score, "n": len(data), "kind": "sts",
                                                   "main_score": score}
            if started is not None and self.show_progress and is_main():
                report_task(data.name + self.name_suffix, score, len(data), (done, len(self.datasets)), started)
        return tasks

    def score_truncations(self, vectors: np.ndarray) -> dict[str, dict]:
        """{"64": {"tasks", "average", "std"}, ...} for each size, increasing: the vectors encoded once, truncated
        and re-normalised per size (cheap next to the encoding, yet a bar with ETA on thousands of sentences)."""
        by_dim: dict[str, dict] = {}
        dims = sorted(self.dims)
        with progress_bar(total=len(dims), unit="size", desc="scoring truncated vectors",
                          disable=not (self.show_progress and is_main() and dims)) as bar:
            for dim in dims:
                tasks = self.score_vectors(truncate_vectors(vectors, dim))
                average, std = average_and_std([t["spearman"] for t in tasks.values()])
                by_dim[str(dim)] = {"tasks": tasks, "average": average, "std": std}
                bar.update(1)
        return by_dim
