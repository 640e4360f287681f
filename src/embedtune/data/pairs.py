"""Pair-classification tasks (is this pair a paraphrase / duplicate?), one declarative record each.

Online, a task loads from the hub dataset MTEB uses, pinned to MTEB's revision; offline, from
`<data_dir>/pairs/<name>/<split>.tsv` with columns `sentence1, sentence2, label` (label 0 or 1). Any folder under
`pairs/` is a task of that name, so a local set needs no record here.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from embedtune.data.hub import hub_dataset
from embedtune.data.tables import Row, number_field, read_table, shown, text_field
from embedtune.errors import DataError

PAIR_COLUMNS = ("sentence1", "sentence2", "label")
# The hub datasets' column names vary by revision: the first that exists is used.
HUB_COLUMNS = (("sentence1", "sent1"), ("sentence2", "sent2"), ("labels", "label"))


@dataclass(frozen=True)
class PairTask:
    name: str
    hub_id: str | None = None  # None: a local set only
    revision: str | None = None  # MTEB's pinned dataset revision
    split: str = "test"
    kind: ClassVar[str] = "pair_classification"

    def local_path(self, data_dir: Path, split: str | None = None) -> Path:
        return data_dir / "pairs" / self.name / f"{split or self.split}.tsv"


# Keys are lower-case: a name on the command line is matched case-insensitively against these.
PAIR_TASKS: dict[str, PairTask] = {
    task.name: task
    for task in (
        PairTask("sprintduplicatequestions", "mteb/sprintduplicatequestions-pairclassification",
                 "d66bd1f72af766a5cc4b0ca5e00c162f89e8cc46"),
        PairTask("twittersemeval2015", "mteb/twittersemeval2015-pairclassification",
                 "70970daeab8776df92f5ea462b6173c0b46fd2d1"),
        PairTask("twitterurlcorpus", "mteb/twitterurlcorpus-pairclassification",
                 "8b6510b0b1fa4e4c4f879467980e9be563ec1cdf"),
    )
}


@dataclass(frozen=True)
class PairData:
    """Sentence pairs with 0/1 labels for one task and split."""

    name: str
    sentences1: list[str]
    sentences2: list[str]
    labels: list[int]
    blank_lines: int = 0  # skipped in a local file (counted, and logged by read_table)

    def __len__(self) -> int:
        return len(self.labels)


def label_field(path: Path | str, row: Row, column: str = "label") -> int:
    """0 or 1 (also 0.0 / 1.0 and their JSON numbers), or a DataError naming where it is."""
    value = number_field(path, row, column)
    if value not in (0.0, 1.0):
        raise DataError(f"label must be 0 or 1, got {shown(row.values.get(column))}", file=str(path), line=row.line,
                        field=column)
    return int(value)


def read_pairs_file(path: Path, name: str) -> PairData:
    """Read `sentence1, sentence2, label` rows; every cell is checked before any model work starts."""
    rows = read_table(path, list(PAIR_COLUMNS))
    s1 = [text_field(path, row, "sentence1") for row in rows]
    s2 = [text_field(path, row, "sentence2") for row in rows]
    labels = [label_field(path, row) for row in rows]
    check_both_classes(labels, str(path))
    return PairData(name, s1, s2, labels, rows.blank_lines)


def check_both_classes(labels: list[int], where: str) -> None:
    """Average precision needs a positive pair, a threshold a negative one: a set without either measures nothing."""
    for value, what in ((1, "positive"), (0, "negative")):
        if value not in labels:
            raise DataError(f"no {what} pairs (label {value}) among {len(labels)} rows", file=where)


def load_pairs(task: PairTask, data_dir: Path | None, split: str | None = None) -> PairData:
    """Local file when a data dir is known, else the pinned hub dataset."""
    if data_dir is not None:
        path = task.local_path(data_dir, split)
        if not path.is_file():
            raise DataError(f"pair-classification file for task '{task.name}' not found", file=str(path))
        return read_pairs_file(path, task.name)
    return _load_from_hub(task, split or task.split)


def _load_from_hub(task: PairTask, split: str) -> PairData:
    ds = hub_dataset(task.hub_id, None, split, task.revision, task.name)
    columns = [next((c for c in options if c in ds.column_names), options[0]) for options in HUB_COLUMNS]
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise DataError(f"{task.hub_id}: missing column(s) {', '.join(missing)} (found: {', '.join(ds.column_names)})")
    if len(ds) == 1 and isinstance(ds[0][columns[0]], list):  # MTEB's v1 layout: the whole split in one row
        ds = ds[0]
    labels = [int(v) for v in ds[columns[2]]]
    check_both_classes(labels, task.hub_id)
    return PairData(task.name, list(ds[columns[0]]), list(ds[columns[1]]), labels)
