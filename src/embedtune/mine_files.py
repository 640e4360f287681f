"""`embedtune mine`: (anchor, positive) pairs and a corpus -> (anchor, positive, hard negative) rows that `train`
reads (columns sent0, sent1, hard_neg), and the counts of what was kept and dropped beside them (OUTPUT.json).

Two steps, so that every bad input fails before the model loads: `prepare_mining` checks the settings and paths
and reads the pairs (the formats `train` reads, raw NLI pairs included: their (premise, entailed hypothesis)
pairs) and the corpus (`data/mining.read_corpus`); `mine_negatives` encodes the unique anchors and the corpus
once, retrieves each anchor's candidates (exact top-k by chunked matrix products, `evaluation/retrieval.top_k`,
or a faiss flat inner-product index when faiss is installed), applies the guards (`data/mining.py`) and writes
both files atomically: a failed or killed mine leaves no half-written output, and an older output stays whole.
"""
from __future__ import annotations

import csv
import io
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

import numpy as np

import embedtune.extras as extras
from embedtune.config import DataConfig
from embedtune.data.mining import MiningData, MiningSettings, build_mining_data, read_corpus, select_negatives
from embedtune.data.nli import CleaningReport, clean_triplets, read_training_file
from embedtune.errors import ConfigError, DataError
from embedtune.evaluation.retrieval import top_k
from embedtune.files import write_file_atomically, write_text_atomically
from embedtune.progress import progress_bar

OUTPUT_SUFFIXES = (".tsv", ".csv", ".jsonl")
OUTPUT_COLUMNS = ("sent0", "sent1", "hard_neg")  # what `train` reads by default (data/nli.py)
SEARCHES = ("auto", "exact", "faiss")  # auto: faiss when it is installed, else exact
SEARCH_CHUNK = 1024  # anchors per retrieval call: the progress bar's step, and at most this x corpus scores in memory


@dataclass
class MiningPlan:
    """Everything checked and read, ready for a model."""

    data: MiningData
    cleaning: CleaningReport
    settings: MiningSettings
    range_max: int
    search: str  # exact | faiss
    output: Path


def counts_path(output: str | Path) -> Path:
    """Where the counts go: beside the output, its name plus .json (triplets.tsv -> triplets.tsv.json)."""
    output = Path(output)
    return output.with_name(output.name + ".json")


def check_paths(input: str | Path, output: str | Path, corpus: str | Path | None) -> None:
    output = Path(output)
    if output.suffix.lower() not in OUTPUT_SUFFIXES:
        raise DataError(f"unsupported output type '{output.suffix}' (use one of {', '.join(OUTPUT_SUFFIXES)})",
                        file=str(output))
    for source in (input, corpus):
        if source is not None and Path(source).resolve() in (output.resolve(), counts_path(output).resolve()):
            raise DataError("the output would overwrite an input", file=str(output))


def choose_search(search: str) -> str:
    if search not in SEARCHES:
        raise ConfigError(f"--search must be one of {', '.join(SEARCHES)}, got {search!r}")
    if search == "auto":
        return "faiss" if extras.available("mining") else "exact"
    if search == "faiss":
        extras.require("mining", "--search faiss")
    return search


def prepare_mining(input: str | Path, output: str | Path, corpus: str | Path | None = None,
                   settings: MiningSettings | None = None, *, search: str = "auto", corpus_column: str = "text",
                   anchor_column: str = "sent0", positive_column: str = "sent1",
                   all_entailed: bool = False) -> MiningPlan:
    """Check everything and read the texts: a bad value or file fails here, in one line, before any model."""
    settings = (settings or MiningSettings()).validate()
    check_paths(input, output, corpus)
    method = choose_search(search)
    config = DataConfig(anchor_column=anchor_column, positive_column=positive_column, all_entailed=all_entailed)
    report = CleaningReport()
    rows = read_training_file(str(input), config, hard_negatives=False, report=report)
    pairs, report = clean_triplets(rows, None, report)
    if not pairs:
        raise DataError(f"no (anchor, positive) pairs left ({report.summary()})", file=str(input))
    texts = read_corpus(corpus, corpus_column) if corpus is not None else None
    data = build_mining_data([(t.anchor, t.positive) for t in pairs], texts)
    range_max = settings.derived_range_max(data.max_positives)
    settings.check_range(range_max)
    return MiningPlan(data, report, settings, range_max, method, Path(output))


def search_candidates(queries: np.ndarray, documents: np.ndarray, k: int, method: str,
                      show_progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(scores, corpus indices), (queries, min(k, documents)), best first; exact ties go to the earlier text."""
    k = min(k, len(documents))
    if method == "faiss":
        faiss = extras.load("faiss", "mining", "--search faiss")
        flat = faiss.IndexFlatIP(documents.shape[1])
        flat.add(np.ascontiguousarray(documents, dtype=np.float32))
        run = lambda chunk: flat.search(np.ascontiguousarray(chunk, dtype=np.float32), k)  # noqa: E731
    else:
        earlier_first = np.arange(len(documents), 0, -1)  # top_k breaks ties by the higher key
        run = lambda chunk: top_k(chunk, documents, k, earlier_first)  # noqa: E731
    scores, index = [], []
    with progress_bar(total=len(queries), desc=f"searching {len(documents)} texts ({method})", unit="anchor",
                      disable=not show_progress) as bar:
        for start in range(0, len(queries), SEARCH_CHUNK):
            chunk_scores, chunk_index = run(queries[start : start + SEARCH_CHUNK])
            scores.append(np.asarray(chunk_scores, dtype=np.float32))
            index.append(np.asarray(chunk_index, dtype=np.int64))
            bar.update(len(chunk_scores))
    return np.vstack(scores), np.vstack(index)


def lowest_positive_scores(data: MiningData, anchors: np.ndarray, corpus: np.ndarray) -> np.ndarray:
    """Per anchor, the lowest similarity of its positives (the margin guards' reference)."""
    return np.array([min(float(anchors[a] @ corpus[p]) for p in positives)
                     for a, positives in enumerate(data.positives)], dtype=np.float32)


def mine_negatives(embedder, plan: MiningPlan, *, batch_size: int = 64, show_progress: bool = True) -> dict:
    """Encode, retrieve, choose, write; returns the counts written beside the output."""
    data, settings = plan.data, plan.settings
    start = time.perf_counter()
    corpus = embedder.encode(data.corpus, batch_size=batch_size, show_progress=show_progress,
                             desc=f"encoding {len(data.corpus)} corpus texts")
    anchors = embedder.encode(data.anchors, batch_size=batch_size, show_progress=show_progress,
                              desc=f"encoding {len(data.anchors)} anchors")
    encoded = time.perf_counter()
    k = settings.candidates_to_retrieve(data.max_positives)
    scores, index = search_candidates(anchors, corpus, k, plan.search, show_progress)
    positive_scores = lowest_positive_scores(data, anchors, corpus)
    negatives, negative_scores, counts = select_negatives(scores, index, positive_scores, data.exclusions(),
                                                          settings, plan.range_max)
    rows = [(data.anchors[a], data.corpus[p], data.corpus[n]) for a, p in data.pairs for n in negatives[a]]
    counts.pairs = len(data.pairs)
    counts.rows = len(rows)
    counts.pairs_without_negative = sum(1 for a, _ in data.pairs if not negatives[a])
    if not rows:
        raise DataError(f"no negatives found, nothing written ({counts.summary()}): widen --range-max or loosen "
                        "the margins")
    report = {
        "output": str(plan.output), "rows": len(rows), "search": plan.search,
        "settings": {**asdict(settings), "range_max": plan.range_max, "candidates_retrieved": k},
        "input": plan.cleaning.as_dict(), "texts": data.counts(), "counts": counts.as_dict(),
        "scores": score_summary(positive_scores, [s for row in negative_scores for s in row]),
        "seconds": {"encoding": round(encoded - start, 2),
                    "search_and_selection": round(time.perf_counter() - encoded, 2)},
    }
    write_file_atomically(plan.output, _row_writer(plan.output, rows), "mine")
    write_text_atomically(counts_path(plan.output), json.dumps(report, indent=2) + "\n", "mine")
    report["summary"] = counts.summary()
    return report


def score_summary(positive: np.ndarray, negative: list[float]) -> dict[str, float]:
    """Mean and median similarity of the positives and of the negatives taken: how hard the negatives are."""
    def described(values) -> dict[str, float]:
        values = [float(v) for v in values]
        return {"mean": round(statistics.fmean(values), 4), "median": round(statistics.median(values), 4)}
    return {"positive": described(positive), "negative": described(negative)}


def _row_writer(path: Path, rows: list[tuple[str, str, str]]) -> Callable[[IO[bytes]], None]:
    def write(f: IO[bytes]) -> None:
        text = io.TextIOWrapper(f, encoding="utf-8", newline="")
        if path.suffix.lower() == ".jsonl":
            for row in rows:
                text.write(json.dumps(dict(zip(OUTPUT_COLUMNS, row, strict=True)), ensure_ascii=False) + "\n")
        else:
            writer = csv.writer(text, delimiter="\t" if path.suffix.lower() == ".tsv" else ",", lineterminator="\n")
            writer.writerow(OUTPUT_COLUMNS)
            writer.writerows(rows)
        text.flush()
        text.detach()  # the caller still owns (fsyncs, closes) the file
    return write
