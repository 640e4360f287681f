"""Base-model evaluations filed for reuse: the key that says two evaluations would be the same, and the folders
that keep them (a sweep's OUTPUT/baselines, the user's cache).

Scoring the base model costs as much as the final evaluation (minutes on a CPU), and its result only depends on
the model, the evaluation settings, the data and the precision it ran in. The key holds exactly those: the model
settings that differ from their defaults (so a field added later at a default that keeps the old behaviour
leaves every key as it was), the local model or adapter folder's files (name, size, modification time: a model
trained again into the same folder is scored again), the evaluation's tasks and batch size, a hash of the
evaluation data as read (a changed file is scored again; a file that reads the same is not), and the dtype and
device the model runs in (`auto` may pick bf16 on one machine and fp32 on another).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import embedtune.runs.layout as layout
from embedtune.config import Config, evaluation_dims
from embedtune.errors import StorageError
from embedtune.files import write_text_atomically
from embedtune.runs.records import EvalResult, load_complete

log = logging.getLogger(__name__)
BASELINE_CACHE_ENV = "EMBEDTUNE_BASELINE_CACHE"
KEY_LENGTH = 16  # hex digits of the sha1: collisions are out of reach for a user's few hundred evaluations


def baseline_key(config: Config, data: str | None = None, backend: str | None = None) -> str:
    """The key of the base model's evaluation under `config`; `data`: the evaluation data's hash
    (data_fingerprint), `backend`: the dtype and device it runs in (Backend.name, e.g. cpu/float32)."""
    defaults = dataclasses.asdict(type(config.model)())
    model = {k: v for k, v in dataclasses.asdict(config.model).items() if v != defaults[k]}
    setting = {"model": model, "files": _files_of(config.model.name, config.model.adapter),
               "eval": {"tasks": config.eval.tasks, "batch_size": config.eval.batch_size},
               "data": data, "backend": backend}
    dims = evaluation_dims(config)
    if dims:  # only when asked: the keys of evaluations without truncated sizes stay as they were
        setting["eval"]["dims"] = dims
    return hashlib.sha1(json.dumps(setting, sort_keys=True, default=str).encode()).hexdigest()[:KEY_LENGTH]


def _files_of(*locations: str | None) -> list[Any]:
    """(name, size, mtime) of the files of each local model or adapter folder (or file, e.g. a .gguf); a hub id
    or an alias has none."""
    found: list[Any] = []
    for location in locations:
        path = Path(location).expanduser() if location else None
        if path is None or not path.exists():
            continue
        files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
        found.append([str(path.resolve()), [(p.name, *_stat(p)) for p in files]])
    return found


def _stat(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def data_fingerprint(datasets: Sequence[Any]) -> str:
    """A hash of the evaluation data as read: each set's name, sentence pairs and gold scores."""
    digest = hashlib.sha256()
    for data in datasets:
        digest.update(json.dumps([data.name, data.sentences1, data.sentences2, data.scores]).encode())
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class BaselineFolder:
    """A folder of base-model evaluations, KEY.json each (with its Markdown table beside it)."""

    path: Path
    source: str  # what a run's report says it came from: cache | sweep

    @classmethod
    def user_cache(cls) -> BaselineFolder:
        """The user's cache of base-model evaluations: $EMBEDTUNE_BASELINE_CACHE (a folder a team may share),
        else $EMBEDTUNE_CACHE/baselines (else ~/.cache/embedtune/baselines)."""
        from embedtune.models.loading import cache_dir

        chosen = os.environ.get(BASELINE_CACHE_ENV)
        return cls(Path(chosen).expanduser() if chosen else cache_dir() / layout.CACHED_BASELINES_DIR, "cache")

    def file(self, key: str) -> Path:
        return self.path / f"{key}.json"

    def find(self, key: str, tasks: Sequence[str]) -> EvalResult | None:
        return load_complete(self.file(key), tasks)

    def keep(self, key: str, result: EvalResult, markdown: str | None = None) -> None:
        """File `result` under `key` (and its table, KEY.md): the user's cache takes it if it can (a full disk or
        a read-only home folder costs the next run an evaluation, not this run)."""
        path = self.file(key)
        try:
            if markdown is not None:
                write_text_atomically(layout.markdown_beside(path), markdown)
            result.without_reuse().save(path)
        except (StorageError, OSError) as err:
            if self.source != "cache":
                raise
            log.warning("could not keep the base model's evaluation in the cache (%s)", err)
