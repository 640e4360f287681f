"""The nine STS tasks of the reference paper (arXiv 2408.00690, Table 2), one declarative record each.

Online, a task loads from the hub dataset MTEB uses, pinned to MTEB's revision; offline, from
`<data_dir>/sts/<name>/<split>.tsv` with columns `sentence1, sentence2, score`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from embedtune.data.tables import number_field, read_table, text_field
from embedtune.errors import ConfigError, DataError

DATA_DIR_ENV = "EMBEDTUNE_DATA_DIR"
STS_COLUMNS = ("sentence1", "sentence2", "score")
HUB_SPLITS = {"dev": "validation"}  # local file names -> the hub datasets' split names


@dataclass(frozen=True)
class STSTask:
    name: str
    hub_id: str
    revision: str  # MTEB's pinned dataset revision
    split: str = "test"
    subset: str | None = None  # hub config name, e.g. "en-en" for STS17

    def local_path(self, data_dir: Path, split: str | None = None) -> Path:
        return data_dir / "sts" / self.name / f"{split or self.split}.tsv"


STS_TASKS: dict[str, STSTask] = {
    task.name: task
    for task in (
        STSTask("sts12", "mteb/sts12-sts", "a0d554a64d88156834ff5ae9920b964011b16384"),
        STSTask("sts13", "mteb/sts13-sts", "7e90230a92c190f1bf69ae9002b8cea547a64cca"),
        STSTask("sts14", "mteb/sts14-sts", "6031580fec1f6af667f0bd2da0a551cf4f0b2375"),
        STSTask("sts15", "mteb/sts15-sts", "ae752c7c21bf194d8b67fd573edf7ae58183cbe3"),
        STSTask("sts16", "mteb/sts16-sts", "4d8694f8f0e0100860b497b999b3dbed754a0513"),
        STSTask("sts17", "mteb/sts17-crosslingual-sts", "faeb762787bd10488a50c8b5be4a3b82e411949c", subset="en-en"),
        STSTask("stsbenchmark", "mteb/stsbenchmark-sts", "b0fddb56ed78048fa8b90373c8a3cfc37b684831"),
        STSTask("biosses", "mteb/biosses-sts", "d3fb88f8f02e40887cd149695127462bbcf29b4a"),
        STSTask("sickr", "mteb/sickr-sts", "20a6d6f312dd54037fe07a32d58e5e168867909d"),
    )
}
ALL_TASKS: tuple[str, ...] = tuple(STS_TASKS)


@dataclass(frozen=True)
class STSData:
    """Sentence pairs with gold scores for one task and split."""

    name: str
    sentences1: list[str]
    sentences2: list[str]
    scores: list[float]
    blank_lines: int = 0  # skipped in a local file (counted, and logged by read_table)

    def __len__(self) -> int:
        return len(self.scores)


def resolve_tasks(names: list[str] | tuple[str, ...] | None) -> list[STSTask]:
    """Task records for the names given (all nine when none), rejecting unknown names up front."""
    if not names:
        return list(STS_TASKS.values())
    unknown = [n for n in names if n.lower() not in STS_TASKS]
    if unknown:
        raise ConfigError(f"unknown task(s): {', '.join(unknown)}; valid tasks: {', '.join(ALL_TASKS)}")
    return [STS_TASKS[n.lower()] for n in names]


def resolve_data_dir(data_dir: str | Path | None) -> Path | None:
    """The data directory from the argument or $EMBEDTUNE_DATA_DIR; None means 'use the hub'."""
    chosen = data_dir or os.environ.get(DATA_DIR_ENV)
    if not chosen:
        return None
    path = Path(chosen).expanduser()
    if not path.is_dir():
        raise DataError("data directory not found", file=str(path))
    return path


def read_sts_file(path: Path, name: str) -> STSData:
    """Read `sentence1, sentence2, score` rows; every cell is checked before any model work starts."""
    rows = read_table(path, list(STS_COLUMNS))
    s1 = [text_field(path, row, "sentence1") for row in rows]
    s2 = [text_field(path, row, "sentence2") for row in rows]
    scores = [number_field(path, row, "score") for row in rows]
    return STSData(name, s1, s2, scores, rows.blank_lines)


def load_sts(task: STSTask, data_dir: Path | None, split: str | None = None) -> STSData:
    """Local file when a data dir is known, else the pinned hub dataset."""
    if data_dir is not None:
        path = task.local_path(data_dir, split)
        if not path.is_file():
            raise DataError(f"STS file for task '{task.name}' not found", file=str(path))
        return read_sts_file(path, task.name)
    return _load_from_hub(task, HUB_SPLITS.get(split or task.split, split or task.split))


def _load_from_hub(task: STSTask, split: str) -> STSData:
    import datasets

    try:
        ds = datasets.load_dataset(task.hub_id, task.subset, split=split, revision=task.revision)
    except Exception as err:  # network, auth or missing-revision errors all mean the same to the user
        raise DataError(
            f"cannot load {task.hub_id} ({type(err).__name__}); offline, pass --data-dir or set {DATA_DIR_ENV}"
        ) from None
    return STSData(task.name, list(ds["sentence1"]), list(ds["sentence2"]), [float(s) for s in ds["score"]])
