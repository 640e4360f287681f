"""The runs of a sweep: one config per grid point, its stable folder name, whether its folder already holds it,
and sweep.json (the grid and each run's state, rewritten atomically at every change)."""
from __future__ import annotations

import copy
import hashlib
import itertools
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from embedtune.config import Config
from embedtune.data.sts import resolve_tasks
from embedtune.errors import ConfigError
from embedtune.files import read_json_or
from embedtune.runs import layout
from embedtune.runs.records import AverageState, SweepRecord, SweepRunState
from embedtune.sweep.grid import GridAxis, GridValue

_SAFE = re.compile(r"[A-Za-z0-9._+-]+")
MAX_NAME = 150  # characters of a run folder's name (file systems allow 255)


@dataclass
class SweepRun:
    name: str
    overrides: dict[str, str]  # field -> value as given
    config: Config

    @property
    def dir(self) -> Path:
        return Path(self.config.train.output_dir)


def plan_runs(base: Config, axes: Sequence[GridAxis], out: Path,
              zipped: Sequence[GridAxis] = ()) -> list[SweepRun]:
    """Every combination of the axes' values, in order (the zipped fields' points first, then the last axis
    varies fastest), each config validated."""
    runs = []
    for point in grid_points(axes, zipped):
        config = copy.deepcopy(base)
        for axis, value in point:
            config.update({axis.section: {axis.name: value.value}}, f"--grid {axis.key}")
        name = run_name(point)
        config.train.output_dir, config.train.resume = str(out / layout.RUNS_DIR / name), True
        try:
            config.validate()
            resolve_tasks(config.eval.tasks)  # a task name is checked here, not when the run's turn comes
        except ConfigError as err:
            raise ConfigError(f"--grid run {name}: {err}") from None
        runs.append(SweepRun(name, {axis.key: value.text for axis, value in point}, config))
    return runs


def grid_points(axes: Sequence[GridAxis], zipped: Sequence[GridAxis] = ()) -> list[list[tuple[GridAxis, GridValue]]]:
    """Each run's (axis, value) pairs: the product of the zipped points (as one axis) and the grid's axes."""
    zipped_points = [list(zip(zipped, values, strict=True)) for values in zip(*(a.values for a in zipped), strict=True)]
    dimensions = ([zipped_points] if zipped else []) + [[[(axis, value)] for value in axis.values] for axis in axes]
    return [[pair for part in combination for pair in part] for combination in itertools.product(*dimensions)]


def run_name(point: Sequence[tuple[GridAxis, GridValue]]) -> str:
    """`lr=5e-3,prompt=is~1a2b3c`: the field (section.field where two sections share it) and a file-system-safe
    form of each value; a value that had to be changed gets a short hash of itself, so two values never clash."""
    names = [axis.name for axis, _ in point]
    parts = [f"{axis.name if names.count(axis.name) == 1 else axis.key}={_slug(value.text)}" for axis, value in point]
    name = ",".join(parts)
    if len(name) > MAX_NAME:
        name = name[:MAX_NAME - 9] + "~" + hashlib.sha1(name.encode()).hexdigest()[:8]
    return name


def _slug(text: str) -> str:
    if _SAFE.fullmatch(text) and not text.startswith((".", "-")):
        return text
    cleaned = re.sub(r"[^A-Za-z0-9._+-]+", "-", text).strip("-.")[:32]
    return f"{cleaned}~{hashlib.sha1(text.encode('utf-8')).hexdigest()[:6]}"


def _comparable(config: dict) -> dict:
    """A config as written to config.json, without what a sweep sets per run; fields the file lacks (written by
    an older version) take their defaults, and fields it has that are no longer options (train.log_steps) are
    left out."""
    merged = Config().to_dict()
    for section, values in config.items():
        if isinstance(values, dict) and section in merged:
            merged[section].update({k: v for k, v in values.items() if k in merged[section]})
    merged["train"].pop("resume", None)
    merged["train"].pop("output_dir", None)
    return merged


def made_with(run: SweepRun) -> bool:
    """Whether the run's folder was made with this run's settings (True when it holds no config yet)."""
    saved = read_json_or(run.dir / layout.CONFIG_FILE)
    return not saved or _comparable(saved) == _comparable(run.config.to_dict())


def finished(run: SweepRun) -> bool:
    return (run.dir / layout.REPORT_FILE).is_file() and made_with(run)


# ---- state ----------------------------------------------------------------------------------------------------

class SweepState:
    """sweep.json: the grid and every run's state, rewritten atomically at each change."""

    def __init__(self, out: Path, axes: Sequence[GridAxis], runs: Sequence[SweepRun],
                 zipped: Sequence[GridAxis] = (), average: bool = False):
        self.path = out / layout.SWEEP_FILE
        grid = [{"field": a.key, "values": [v.text for v in a.values], "zip": True} for a in zipped]
        grid += [{"field": a.key, "values": [v.text for v in a.values]} for a in axes]
        self.runs = {run.name: SweepRunState(run.name, f"{layout.RUNS_DIR}/{run.name}", run.overrides,
                                             config=run.config.to_dict()) for run in runs}
        # The averaged adapter's state (pending, done, skipped, failed), when the sweep makes one.
        self.record = SweepRecord(grid, list(self.runs.values()), averaged=AverageState() if average else None)
        self.save()

    def set(self, name: str, status: str, error: str | None = None, seconds: float | None = None) -> None:
        run = self.runs[name]
        run.status, run.error, run.seconds = status, error, seconds
        self.save()

    def status(self, name: str) -> str:
        return self.runs[name].status

    def set_average(self, status: str, error: str | None = None) -> None:
        self.record.averaged = AverageState(status, error)
        self.save()

    def save(self) -> None:
        self.record.updated = time.strftime("%Y-%m-%d %H:%M:%S")
        self.record.save(self.path)
