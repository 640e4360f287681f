"""NLI training triplets: readers, raw-pair conversion, cleaning with counts, decontamination.

A triplet is (anchor, positive, hard negative): the premise, an entailed hypothesis and a contradicted one,
as in SimCSE's `nli_for_simcse.csv` (columns `sent0, sent1, hard_neg`).
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from embedtune.config import DataConfig
from embedtune.data.sts import STSTask, load_sts
from embedtune.data.tables import TABLE_SUFFIXES, Row, read_table, require_columns
from embedtune.errors import DataError

log = logging.getLogger(__name__)

SIMCSE_HUB_REPO = "princeton-nlp/datasets-for-simcse"
SIMCSE_HUB_FILE = "nli_for_simcse.csv"
PAIR_COLUMNS = ("premise", "hypothesis", "label")


@dataclass(frozen=True)
class Triplet:
    anchor: str
    positive: str
    negative: str


@dataclass
class CleaningReport:
    """How many rows each cleaning rule removed; `kept` is what training sees."""

    read: int = 0
    empty_field: int = 0
    degenerate: int = 0
    duplicate: int = 0
    contaminated: int = 0
    kept: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def summary(self) -> str:
        return (f"{self.read} rows read; dropped {self.empty_field} with an empty field, {self.degenerate} degenerate, "
                f"{self.duplicate} duplicates, {self.contaminated} overlapping the STS sets; {self.kept} kept")


def training_files(config: DataConfig, data_dir: Path | None) -> list[str]:
    """Explicit files, else every table in DATA_DIR/nli/triplets/, else SimCSE's file on the hub."""
    if config.train_files:
        return list(config.train_files)
    if data_dir is not None:
        folder = data_dir / "nli" / "triplets"
        files = sorted(str(p) for p in folder.glob("*") if p.suffix.lower() in TABLE_SUFFIXES)
        if not files:
            raise DataError("no training data (no .tsv/.csv/.jsonl/.parquet files)", file=str(folder))
        return files
    return [f"hf://{SIMCSE_HUB_REPO}/{SIMCSE_HUB_FILE}"]


def read_training_file(spec: str, config: DataConfig) -> list[tuple[str, str, str] | None]:
    """Raw (anchor, positive, negative) rows; None marks a row with an empty field (counted, then dropped)."""
    path = _local_copy(spec)
    rows = read_table(path, [])
    header = rows[0].values.keys()
    if all(c in header for c in PAIR_COLUMNS) and config.anchor_column not in header:
        return [(t.anchor, t.positive, t.negative) for t in pairs_to_triplets(rows)]
    columns = [config.anchor_column, config.positive_column, config.negative_column]
    require_columns(path, rows, columns)
    return [_cells(row.values, columns) for row in rows]


def _cells(values: dict, columns: list[str]) -> tuple[str, str, str] | None:
    cells = [values.get(c) for c in columns]
    if any(not isinstance(c, str) or not c.strip() for c in cells):
        return None
    return tuple(c.strip() for c in cells)  # type: ignore[return-value]


def pairs_to_triplets(rows: list[Row]) -> list[Triplet]:
    """Premise; its first entailed hypothesis as positive; its first contradicted one as hard negative."""
    entailed: dict[str, str] = {}
    contradicted: dict[str, str] = {}
    for row in rows:
        premise, hypothesis, label = (str(row.values[c] or "").strip() for c in PAIR_COLUMNS)
        if not premise or not hypothesis:
            continue
        if label == "entailment":
            entailed.setdefault(premise, hypothesis)
        elif label == "contradiction":
            contradicted.setdefault(premise, hypothesis)
    return [Triplet(p, entailed[p], contradicted[p]) for p in entailed if p in contradicted]


def _local_copy(spec: str) -> Path:
    if not spec.startswith("hf://"):
        return Path(spec)
    repo, _, filename = spec[len("hf://"):].rpartition("/")
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(repo, filename, repo_type="dataset"))
    except Exception as err:
        raise DataError(f"cannot download {spec} ({type(err).__name__}); offline, pass --data-dir or --train-file") \
            from None


def normalise(text: str) -> str:
    """Key for duplicate and contamination checks: case and spacing do not make a sentence new."""
    return " ".join(text.casefold().split())


def clean_triplets(rows: Iterable[tuple[str, str, str] | None], eval_sentences: set[str] | None = None
                   ) -> tuple[list[Triplet], CleaningReport]:
    """Drop empty, degenerate, duplicate and (when eval sentences are given) contaminated rows, counting each."""
    report = CleaningReport()
    kept: list[Triplet] = []
    seen: set[tuple[str, str, str]] = set()
    blocked = {normalise(s) for s in eval_sentences} if eval_sentences else set()
    for row in rows:
        report.read += 1
        if row is None:
            report.empty_field += 1
            continue
        keys = tuple(normalise(s) for s in row)
        if keys[0] == keys[1] or keys[1] == keys[2] or keys[0] == keys[2]:
            report.degenerate += 1
        elif keys in seen:
            report.duplicate += 1
        elif blocked and any(k in blocked for k in keys):
            report.contaminated += 1
        else:
            seen.add(keys)  # type: ignore[arg-type]
            kept.append(Triplet(*row))
    report.kept = len(kept)
    return kept, report


def load_triplets(config: DataConfig, data_dir: Path | None, eval_sentences: set[str] | None
                  ) -> tuple[list[Triplet], CleaningReport]:
    """Read every training file, then clean; fails up front when nothing usable is left."""
    rows: list[tuple[str, str, str] | None] = []
    for spec in training_files(config, data_dir):
        rows.extend(read_training_file(spec, config))
    triplets, report = clean_triplets(rows, eval_sentences if config.decontaminate else None)
    if config.max_train_samples is not None:
        triplets = triplets[: config.max_train_samples]
        report.kept = len(triplets)
    if len(triplets) < 2:
        raise DataError(f"no training data left after cleaning ({report.summary()})")
    return triplets, report


def evaluation_sentences(data_dir: Path | None, tasks: Iterable[STSTask], splits: Iterable[str | None] = (None,)
                         ) -> set[str]:
    """Every sentence of the given evaluation tasks and splits: training rows holding one are contamination."""
    sentences: set[str] = set()
    for task in tasks:
        for split in splits:
            data = load_sts(task, data_dir, split)
            sentences.update(data.sentences1, data.sentences2)
    return sentences
