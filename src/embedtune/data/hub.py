"""Hub datasets for the evaluation tasks: one loader, so that every failure reads the same."""
from __future__ import annotations

from embedtune.errors import DataError

DATA_DIR_ENV = "EMBEDTUNE_DATA_DIR"


def hub_dataset(hub_id: str | None, subset: str | None, split: str, revision: str | None, name: str):
    """One split of a hub dataset at a pinned revision, or a one-line DataError saying how to run offline."""
    if hub_id is None:
        raise DataError(f"task '{name}' exists only as local files; pass --data-dir or set {DATA_DIR_ENV}")
    import datasets

    try:
        return datasets.load_dataset(hub_id, subset, split=split, revision=revision)
    except Exception as err:  # network, auth or missing-revision errors all mean the same to the user
        raise DataError(
            f"cannot load {hub_id} ({type(err).__name__}); offline, pass --data-dir or set {DATA_DIR_ENV}"
        ) from None
