"""Every evaluation task by name, whatever its kind: STS, pair classification, retrieval.

A name is looked up among the packaged records (the nine STS sets, MTEB's pair-classification and small
retrieval sets; case-insensitive) and, with a data dir, among the folders under `sts/`, `pairs/` and
`retrieval/` there (a local set needs no record: its folder name is its task name).
"""
from __future__ import annotations

from pathlib import Path

from embedtune.data.pairs import PAIR_TASKS, PairData, PairTask, load_pairs
from embedtune.data.retrieval import RETRIEVAL_TASKS, RetrievalData, RetrievalTask, load_retrieval
from embedtune.data.sts import STS_TASKS, STSData, STSTask, load_sts
from embedtune.errors import ConfigError

Task = STSTask | PairTask | RetrievalTask
TaskData = STSData | PairData | RetrievalData
KINDS = ("sts", "pair_classification", "retrieval")
FOLDERS = {"sts": "sts", "pair_classification": "pairs", "retrieval": "retrieval"}  # kind -> folder in a data dir
PACKAGED: dict[str, dict[str, Task]] = {"sts": STS_TASKS, "pair_classification": PAIR_TASKS,
                                        "retrieval": RETRIEVAL_TASKS}


def kind_of(task: Task) -> str:
    return "sts" if isinstance(task, STSTask) else task.kind


def local_names(data_dir: Path | None) -> dict[str, list[str]]:
    """Folder names under the data dir's sts/, pairs/ and retrieval/, by kind (sorted)."""
    found: dict[str, list[str]] = {kind: [] for kind in KINDS}
    if data_dir is None:
        return found
    for kind, folder in FOLDERS.items():
        root = data_dir / folder
        if root.is_dir():
            found[kind] = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    return found


def resolve_any_tasks(names: list[str] | tuple[str, ...] | None, data_dir: Path | None) -> list[Task]:
    """Records for the names given (the nine STS sets when none), in the order given; unknown or ambiguous names
    are one ConfigError listing what exists."""
    if not names:
        return list(STS_TASKS.values())
    local = local_names(data_dir)
    tasks, unknown = [], []
    for name in names:
        found = [task for kind in KINDS if (task := _lookup(name, kind, local[kind])) is not None]
        if len(found) > 1:
            kinds = " and ".join(f"{FOLDERS[kind_of(t)]}/" for t in found)
            raise ConfigError(f"task name '{name}' is ambiguous: it exists under {kinds}; rename one of the folders")
        if found:
            tasks.append(found[0])
        else:
            unknown.append(name)
    if unknown:
        raise ConfigError(f"unknown task(s): {', '.join(unknown)}; {available(local)}")
    return tasks


def _lookup(name: str, kind: str, local: list[str]) -> Task | None:
    packaged = PACKAGED[kind].get(name.lower())
    if packaged is not None:
        return packaged
    if name not in local:
        return None
    if kind == "sts":
        return STSTask(name, hub_id="", revision="")  # local only: load_sts reads the file when a data dir is given
    return PairTask(name) if kind == "pair_classification" else RetrievalTask(name)


def available(local: dict[str, list[str]]) -> str:
    """What exists, by kind, for an error message."""
    parts = []
    for kind in KINDS:
        names = list(PACKAGED[kind]) + [n for n in local[kind] if n.lower() not in PACKAGED[kind]]
        parts.append(f"{kind.replace('_', ' ')}: {', '.join(names) if names else '(none)'}")
    return "valid tasks: " + "; ".join(parts)


def load_task(task: Task, data_dir: Path | None, split: str | None = None) -> TaskData:
    """The task's data from the data dir (else the hub), every cell checked."""
    if isinstance(task, STSTask):
        return load_sts(task, data_dir, split)
    if isinstance(task, PairTask):
        return load_pairs(task, data_dir, split)
    return load_retrieval(task, data_dir, split)
