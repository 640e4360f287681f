"""NLI training triplets: readers, raw-pair conversion, cleaning with counts, decontamination.

A triplet is (anchor, positive, hard negative): the premise, an entailed hypothesis and a contradicted one,
as in SimCSE's `nli_for_simcse.csv` (columns `sent0, sent1, hard_neg`). Without hard negatives
(`train.hard_negatives=false`) only (anchor, positive) is read, so pairs-only files train too, and the cleaning
rules look at those two fields only.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from embedtune.config import DataConfig
from embedtune.data.sts import STSTask, load_sts
from embedtune.data.tables import TABLE_SUFFIXES, Row, check_unicode, read_table, require_columns, shown, shown_names
from embedtune.errors import DataError

log = logging.getLogger(__name__)

SIMCSE_HUB_REPO = "princeton-nlp/datasets-for-simcse"
SIMCSE_HUB_FILE = "nli_for_simcse.csv"
PAIR_COLUMNS = ("premise", "hypothesis", "label")
# Raw NLI labels by name ('-' is SNLI's "no gold label"), and as the hub's SNLI/MultiNLI store them (class ids).
NLI_LABELS: dict[str, str | None] = {"entailment": "entailment", "neutral": "neutral",
                                     "contradiction": "contradiction", "-": None, "": None}
NUMERIC_NLI_LABELS: dict[str, str | None] = {"0": "entailment", "1": "neutral", "2": "contradiction", "-1": None}
# The texts of one training row as training sees them: (anchor, positive) or (anchor, positive, negative).
RawRow = tuple[str, ...]


@dataclass(frozen=True)
class Triplet:
    anchor: str
    positive: str
    negative: str | None = None  # None: no hard negative (hard negatives off)

    def texts(self) -> RawRow:
        return (self.anchor, self.positive) if self.negative is None else (self.anchor, self.positive, self.negative)


@dataclass
class CleaningReport:
    """How many rows each cleaning rule removed; `kept` is what training sees.

    Raw NLI pairs (premise, hypothesis, label) are first turned into rows (`read` counts those rows); the `pairs_`
    counts say which pair rows that conversion dropped, by reason, so that `pairs_read` is their sum plus the rows
    used (each row built uses one entailed hypothesis and, with hard negatives, one contradicted one, which
    `all_entailed` may share between the rows of a premise). Blank lines skipped in
    the files, and kept rows cut by `max_train_samples`, are counted too (and listed only when there are some).
    """

    read: int = 0
    empty_field: int = 0
    degenerate: int = 0
    duplicate: int = 0
    contaminated: int = 0
    kept: int = 0
    pairs_read: int = 0
    pairs_empty_field: int = 0  # empty premise or hypothesis
    pairs_neutral: int = 0
    pairs_no_label: int = 0  # no gold label: '-' (SNLI) or -1 (the hub's class ids)
    pairs_no_entailment: int = 0  # rows of premises that have no entailed hypothesis
    pairs_no_contradiction: int = 0  # rows of premises that have no contradicted one (hard negatives on)
    pairs_unused: int = 0  # further hypotheses of a premise (and, without hard negatives, its contradictions)
    blank_lines: int = 0  # blank lines skipped in the files (no rows: not in `read`)
    over_max_samples: int = 0  # clean rows beyond max_train_samples, not used

    def as_dict(self) -> dict[str, int]:
        """The counts; the `pairs_` ones only when raw NLI pairs were read, the last two only when not zero."""
        counts = {k: v for k, v in asdict(self).items()
                  if not (k in ("blank_lines", "over_max_samples") and not v)}
        return counts if self.pairs_read else {k: v for k, v in counts.items() if not k.startswith("pairs_")}

    def summary(self) -> str:
        cut = f", {self.over_max_samples} beyond max_train_samples" if self.over_max_samples else ""
        text = (f"{self.read} rows read; dropped {self.empty_field} with an empty field, {self.degenerate} degenerate, "
                f"{self.duplicate} duplicates, {self.contaminated} overlapping the STS sets{cut}; {self.kept} kept")
        blank = f" ({self.blank_lines} blank lines skipped)" if self.blank_lines else ""
        if not self.pairs_read:
            return text + blank
        return (f"{self.pairs_read} NLI pair rows read, of which {self.pairs_empty_field} had an empty field, "
                f"{self.pairs_neutral} were neutral, {self.pairs_no_label} had no gold label, "
                f"{self.pairs_no_entailment} belong to premises without an entailed hypothesis, "
                f"{self.pairs_no_contradiction} to premises without a contradicted one and {self.pairs_unused} were "
                f"further hypotheses of a premise; then {text}{blank}")


def training_files(config: DataConfig, data_dir: Path | None) -> list[str]:
    """Explicit files, else every table in DATA_DIR/nli/triplets/ (DATA_DIR/nli/pairs/ with `all_entailed`, which
    needs raw pairs), else SimCSE's file on the hub (already one triplet per entailed hypothesis)."""
    if config.train_files:
        return list(config.train_files)
    if data_dir is not None:
        folder = data_dir / "nli" / ("pairs" if config.all_entailed else "triplets")
        files = sorted(str(p) for p in folder.glob("*") if p.suffix.lower() in TABLE_SUFFIXES)
        if not files:
            raise DataError("no training data (no .tsv/.csv/.jsonl/.parquet files)", file=str(folder))
        return files
    return [f"hf://{SIMCSE_HUB_REPO}/{SIMCSE_HUB_FILE}"]


def read_training_file(spec: str, config: DataConfig, hard_negatives: bool = True,
                       report: CleaningReport | None = None) -> list[RawRow | None]:
    """Raw (anchor, positive, negative) rows, or (anchor, positive) without hard negatives; None marks a row with
    an empty field (counted, then dropped). Raw NLI pairs are converted, their drops counted in `report`."""
    path = _local_copy(spec)
    rows = read_table(path, [])
    if report is not None:
        report.blank_lines += rows.blank_lines
    header = rows[0].values.keys()
    if all(c in header for c in PAIR_COLUMNS) and config.anchor_column not in header:
        _check_unicode(path, rows, PAIR_COLUMNS[:2])
        return [t.texts() for t in pairs_to_triplets(rows, hard_negatives, report, str(path), config.all_entailed)]
    if config.all_entailed:
        log.warning("%s holds triplets, read as they are: --all-entailed builds triplets from raw NLI pairs "
                    "(premise, hypothesis, label)", path)
    columns = [config.anchor_column, config.positive_column]
    require_columns(path, rows, columns)
    if hard_negatives:
        if config.negative_column not in header:
            line = 1 if path.suffix.lower() in (".tsv", ".csv") else rows[0].line
            raise DataError(f"missing column (found: {shown_names(header)}): hard negatives need it; for "
                            "(anchor, positive) pairs pass --no-hard-negatives, or name the column with "
                            "--negative-column", file=str(path), line=line, field=config.negative_column)
        columns.append(config.negative_column)
    _check_unicode(path, rows, columns)
    return [_cells(row.values, columns) for row in rows]


def _check_unicode(path: Path, rows: list[Row], columns) -> None:
    """Lone surrogates (JSON escapes) fail here, located, not in the tokenizer mid-training."""
    for row in rows:
        for column in columns:
            check_unicode(path, row, column)


def _cells(values: dict, columns: list[str]) -> RawRow | None:
    cells = [values.get(c) for c in columns]
    if any(not isinstance(c, str) or not c.strip() for c in cells):
        return None
    return tuple(c.strip() for c in cells)


def pairs_to_triplets(rows: list[Row], hard_negatives: bool = True, report: CleaningReport | None = None,
                      source: str = "NLI pairs", all_entailed: bool = False) -> list[Triplet]:
    """Premise; its first entailed hypothesis as positive; its first contradicted one as hard negative (none
    without hard negatives). With `all_entailed`, one triplet per entailed hypothesis, their hard negatives taken
    from the premise's contradicted ones in turn. Labels are names or the hub's class ids (0/1/2, -1 for no gold
    label); each dropped row is counted in `report` by reason."""
    report = report if report is not None else CleaningReport()
    entailed: dict[str, list[str]] = {}
    contradicted: dict[str, list[str]] = {}
    rows_of: dict[str, list[str]] = {}  # premise -> labels of its usable rows, premises in order of appearance
    numeric = False
    for row in rows:
        report.pairs_read += 1
        premise, hypothesis = (_text(row.values.get(c)) for c in PAIR_COLUMNS[:2])
        label, was_numeric = _nli_label(row.values.get("label"), source, row.line)
        numeric |= was_numeric
        if not premise or not hypothesis:
            report.pairs_empty_field += 1
            continue
        labels = rows_of.setdefault(premise, [])
        if label is None:
            report.pairs_no_label += 1
        elif label == "neutral":
            report.pairs_neutral += 1
        else:
            labels.append(label)
            (entailed if label == "entailment" else contradicted).setdefault(premise, []).append(hypothesis)
    if numeric:
        log.info("%s: numeric NLI labels read as 0 entailment, 1 neutral, 2 contradiction, -1 no gold label "
                 "(the hub's SNLI/MultiNLI class ids)", source)
    triplets = []
    for premise, labels in rows_of.items():
        if premise not in entailed:
            report.pairs_no_entailment += len(labels)
        elif hard_negatives and premise not in contradicted:
            report.pairs_no_contradiction += len(labels)
        else:
            negatives = contradicted.get(premise, []) if hard_negatives else []
            built = _premise_triplets(premise, entailed[premise], negatives, all_entailed)
            negatives_used = min(len(built), len(negatives))
            report.pairs_unused += len(labels) - len(built) - negatives_used
            triplets.extend(built)
    return triplets


def _premise_triplets(premise: str, entailed: list[str], negatives: list[str], all_entailed: bool) -> list[Triplet]:
    """The premise's triplets: its first (or every) entailed hypothesis, each with the next of `negatives` in
    turn, or with none when `negatives` is empty (hard negatives off)."""
    positives = entailed if all_entailed else entailed[:1]
    return [Triplet(premise, positive, negatives[i % len(negatives)] if negatives else None)
            for i, positive in enumerate(positives)]


def _text(value: object) -> str:
    return value.strip() if isinstance(value, str) else "" if value is None else str(value).strip()


def _nli_label(value: object, source: str, line: int) -> tuple[str | None, bool]:
    """(label name, or None for no gold label; whether it was a class id) of one raw NLI label cell."""
    if isinstance(value, float) and value != value:  # a missing cell in parquet/pandas
        return None, False
    if isinstance(value, int) and not isinstance(value, bool):
        key = str(value)  # not via float(): a 400-digit integer would overflow it
    elif isinstance(value, float) and value.is_integer():
        key = str(int(value))
    else:
        key = _text(value).lower()
    if key in NLI_LABELS:
        return NLI_LABELS[key], False
    if key in NUMERIC_NLI_LABELS:
        return NUMERIC_NLI_LABELS[key], True
    raise DataError(f"unknown NLI label {shown(value)}: expected entailment, neutral, contradiction or '-' (no gold "
                    "label), or the hub's class ids 0, 1, 2 and -1", file=source, line=line, field="label")


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


def clean_triplets(rows: Iterable[RawRow | None], eval_sentences: set[str] | None = None,
                   report: CleaningReport | None = None) -> tuple[list[Triplet], CleaningReport]:
    """Drop empty, degenerate, duplicate and (when eval sentences are given) contaminated rows, counting each.

    Rows are the texts training sees, (anchor, positive, negative) or (anchor, positive): a row is degenerate
    when two of its texts are the same, a duplicate when all are, contaminated when any is an eval sentence.
    """
    report = report if report is not None else CleaningReport()
    kept: list[Triplet] = []
    seen: set[RawRow] = set()
    blocked = {normalise(s) for s in eval_sentences} if eval_sentences else set()
    for row in rows:
        report.read += 1
        if row is None:
            report.empty_field += 1
            continue
        keys = tuple(normalise(s) for s in row)
        if len(set(keys)) < len(keys):
            report.degenerate += 1
        elif keys in seen:
            report.duplicate += 1
        elif blocked and any(k in blocked for k in keys):
            report.contaminated += 1
        else:
            seen.add(keys)
            kept.append(Triplet(*row))
    report.kept = len(kept)
    return kept, report


def load_triplets(config: DataConfig, data_dir: Path | None, eval_sentences: set[str] | None,
                  hard_negatives: bool = True) -> tuple[list[Triplet], CleaningReport]:
    """Read every training file, then clean; fails up front when nothing usable is left. Without hard negatives
    the negative column is not read (triplets carry none) and pairs-only files are accepted."""
    report = CleaningReport()
    rows: list[RawRow | None] = []
    for spec in training_files(config, data_dir):
        rows.extend(read_training_file(spec, config, hard_negatives, report))
    triplets, report = clean_triplets(rows, eval_sentences if config.decontaminate else None, report)
    if config.max_train_samples is not None:
        report.over_max_samples = max(0, len(triplets) - config.max_train_samples)
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
