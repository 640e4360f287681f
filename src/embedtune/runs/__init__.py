"""The run folder: its layout (every file name, `layout`) and its files as typed records with load and save
(`records`: an evaluation result, a run report, a plan, a sweep's state, the environment); `capture` records
what a result was computed with, `reading` reads folders back, `baselines` files base-model evaluations.

The trainer, `run`, `sweep`, the model card and the reports read and write run folders through this package
only; the reports render what `reading` gives them. Importing it loads no model library.
"""
from __future__ import annotations

import embedtune.runs.layout as layout
from embedtune.runs.baselines import BaselineFolder, baseline_key, data_fingerprint
from embedtune.runs.capture import capture_environment, computed_with, environment
from embedtune.runs.reading import RunView, Source, baselines, best_run, load_run, load_source, load_sweep, read_metrics
from embedtune.runs.records import (
    AverageState,
    ComputedWith,
    Environment,
    EvalResult,
    Plan,
    Record,
    Reuse,
    RunReport,
    Selected,
    SweepRecord,
    SweepRunState,
    load_complete,
)

__all__ = [
    "AverageState", "BaselineFolder", "ComputedWith", "Environment", "EvalResult", "Plan", "Record", "Reuse",
    "RunReport", "RunView", "Selected", "Source", "SweepRecord", "SweepRunState", "baseline_key", "baselines",
    "best_run", "capture_environment", "computed_with", "data_fingerprint", "environment",
    "layout", "load_complete", "load_run", "load_source", "load_sweep", "read_metrics",
]
