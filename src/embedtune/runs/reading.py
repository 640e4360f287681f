"""Reading run and sweep folders back: what each holds, as the reports (Markdown, HTML, a sweep's summary) show it.

A run counts as done only when its report.json exists: a killed or failed run is read as such, never with a
half-finished result.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import embedtune.runs.layout as layout
from embedtune.errors import ConfigError
from embedtune.files import read_json_or
from embedtune.runs.records import Environment, EvalResult, RunReport, SweepRecord

# How a sweep's recorded state reads once the folder is looked at: a "running" run whose report.json is missing
# was interrupted (the sweep was killed or stopped during it).
RECORDED_STATUS = {"running": "interrupted", "done": "interrupted", "failed": "failed", "pending": "pending"}


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """metrics.jsonl's events ([] when there is no file)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@dataclass
class RunView:
    """What one run folder holds."""

    name: str
    path: Path
    status: str  # done | failed | interrupted | pending | unfinished (a plain run folder without report.json)
    error: str | None = None
    overrides: dict[str, str] = field(default_factory=dict)
    report: RunReport | None = None
    base: EvalResult | None = None
    config: dict | None = None
    data_report: dict | None = None
    environment: Environment | None = None
    events: list[dict] = field(default_factory=list)
    averaged_from: list[str] = field(default_factory=list)  # a sweep's averaged adapter: the runs it averages

    @property
    def tuned(self) -> EvalResult | None:
        return self.report.tuned if self.report and self.status == "done" else None

    @property
    def train_seconds(self) -> float | None:
        """Seconds spent in training steps (metrics.jsonl; a resumed run's steps count once); an averaged
        adapter's: its runs' together."""
        if self.averaged_from:
            return self.report.train_seconds if self.report else None
        steps = [e["seconds"] for e in self.events if ("loss" in e or "skipped" in e) and "seconds" in e]
        return sum(steps) if steps else None

    @property
    def dev_curve(self) -> list[tuple[int, float]]:
        return [(e["step"], sum(e["eval"].values()) / len(e["eval"])) for e in self.events if e.get("eval")]

    def plots(self) -> list[tuple[str, bytes]]:
        """The trainer's plots in the folder: (name without suffix, PNG bytes)."""
        found = [self.path / name for name in layout.RUN_PLOTS if (self.path / name).is_file()]
        return [(p.stem, p.read_bytes()) for p in found]


@dataclass
class Source:
    """A folder given to a report: one run, or a sweep with its runs."""

    path: Path
    kind: str  # run | sweep
    runs: list[RunView]
    grid: list[dict] = field(default_factory=list)
    averaged: RunView | None = None  # the sweep's runs' adapters averaged (sweep --average-adapters)
    averaged_state: dict | None = None  # its state in sweep.json (status, error), when the sweep averages

    @property
    def shown(self) -> list[RunView]:
        """The rows of a report: every run, then the averaged adapter."""
        return self.runs + ([self.averaged] if self.averaged else [])


def load_run(path: Path, name: str | None = None, recorded: str | None = None, error: str | None = None,
             overrides: dict[str, str] | None = None, report: RunReport | None = None,
             config: dict | None = None) -> RunView:
    """A run folder's files; `report` stands in for report.json (a run renders its page just before writing it),
    `config` for config.json (which a run that failed before training never wrote)."""
    path = Path(path)
    report = report if report is not None else _report(path)
    if report is not None:
        status, error = "done", None
    else:
        status = RECORDED_STATUS.get(recorded, "unfinished") if recorded else "unfinished"
    base = report.base if report else EvalResult.load(path / layout.BASE_FILE)
    return RunView(name or path.name, path, status, error, dict(overrides or {}), report, base,
                   _mapping(path / layout.CONFIG_FILE) or config, _mapping(path / layout.DATA_REPORT_FILE),
                   Environment.load(path / layout.ENVIRONMENT_FILE), _events(path),
                   list((report.averaged_from if report else None) or []))


def _report(path: Path) -> RunReport | None:
    """report.json, when it is a finished run's (both evaluations present)."""
    report = RunReport.load(path / layout.REPORT_FILE)
    return report if report is not None and report.complete else None


def _mapping(path: Path) -> dict | None:
    """A side file's mapping; None when it is absent or unreadable (a run killed before writing it)."""
    return read_json_or(path) or None


def _events(path: Path) -> list[dict]:
    try:
        return read_metrics(path / layout.METRICS_FILE)
    except (OSError, ValueError):  # a line cut by a kill: the curve is shown up to it elsewhere; here, none
        return []


def load_sweep(path: Path) -> Source:
    path = Path(path)
    data = read_json_or(path / layout.SWEEP_FILE)
    if not isinstance(data.get("runs"), list):
        raise ConfigError(f"{path / layout.SWEEP_FILE}: not a sweep state file (no list of runs)")
    state = SweepRecord.from_dict(data)
    runs = [load_run(path / (run.dir or f"{layout.RUNS_DIR}/{run.name}"), run.name, run.status, run.error,
                     run.overrides, config=run.config) for run in state.named_runs()]
    averaged = state.averaged.to_dict() if state.averaged else None
    return Source(path, "sweep", runs, state.grid, _averaged(path, [run.name for run in runs]), averaged)


def _averaged(path: Path, names: list[str]) -> RunView | None:
    """The sweep's averaged adapter (OUTPUT/averaged), if one was made of exactly these runs."""
    report = _report(path / layout.AVERAGED_DIR)
    if report is None or report.averaged_from != names:
        return None
    return load_run(path / layout.AVERAGED_DIR, f"averaged ({len(names)} runs)", report=report)


def load_source(path: str | Path) -> Source:
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"{path}: no such folder")
    if (path / layout.SWEEP_FILE).is_file():
        return load_sweep(path)
    if any((path / marker).exists() for marker in layout.RUN_MARKERS):
        return Source(path, "run", [load_run(path)])
    raise ConfigError(f"{path}: neither a run folder (none of {', '.join(layout.RUN_MARKERS)}) nor a sweep folder "
                      f"({layout.SWEEP_FILE})")


# ---- questions about several runs -----------------------------------------------------------------------------

def best_run(runs: Sequence[RunView]) -> RunView | None:
    """The trained run with the highest average: an averaged adapter is shown beside the runs, not ranked among
    them (on a page of its own, it is the one)."""
    done = [run for run in runs if run.tuned is not None and run.tuned.has_average]
    trained = [run for run in done if not run.averaged_from] or done
    return max(trained, key=lambda run: run.tuned.average) if trained else None


def baselines(runs: Sequence[RunView]) -> list[tuple[str, EvalResult]]:
    """The distinct base-model evaluations among the runs, labelled by what tells them apart."""
    found: dict[str, EvalResult] = {}
    for run in runs:
        if run.base and isinstance(run.base.tasks, dict):
            key = json.dumps({"model": run.base.model, "pooling": run.base.pooling, "prompt": run.base.prompt,
                              "tasks": run.base.tasks}, sort_keys=True)
            found.setdefault(key, run.base)
    results = list(found.values())
    varying = [k for k in ("model", "pooling", "prompt") if len({json.dumps(getattr(r, k)) for r in results}) > 1]
    labelled = []
    for i, result in enumerate(results):
        detail = ", ".join(f"{k} {getattr(result, k)!r}" for k in varying)
        label = f"base model ({detail})" if detail else "base model"
        labelled.append((label if detail or len(results) == 1 else f"{label} #{i + 1}", result))
    return labelled
