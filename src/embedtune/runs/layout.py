"""The run folder's layout: every file and folder name of a `run`, `sweep` or `train` output, spelled once.

A run folder (`embedtune run --output-dir OUT`, or OUT/runs/NAME of a sweep):

    config.json        the full config (train writes it first)        data_report.json  the training data's cleaning
    metrics.jsonl      one event per step and dev evaluation          plan.json         the time budget's plan
    base.json/.md      the base model's evaluation                    tuned.json/.md    the tuned model's evaluation
    best.json          the best dev step and score                    final/, best/     the adapters
    loss.png, dev_spearman.png, dims.png (Matryoshka sizes)           environment.json  versions and hardware
    report.md, report.html                                            report.json       written last: the run is done

A sweep folder adds sweep.json (its plan and each run's state), runs/NAME/ (a run folder per grid point),
baselines/KEY.json (the base model's evaluations), averaged/ (the runs' adapters averaged, in adapter/) and its own
report.md, report.json, report.html, dev_curves.png and averages.png.
"""
from __future__ import annotations

from pathlib import Path

# ---- a run folder ---------------------------------------------------------------------------------------------
CONFIG_FILE = "config.json"
DATA_REPORT_FILE = "data_report.json"
METRICS_FILE = "metrics.jsonl"
PLAN_FILE = "plan.json"
BASE_FILE = "base.json"
BASE_MARKDOWN = "base.md"
TUNED_FILE = "tuned.json"
TUNED_MARKDOWN = "tuned.md"
BEST_FILE = "best.json"
FINAL_DIR = "final"
BEST_DIR = "best"
ENVIRONMENT_FILE = "environment.json"  # versions and hardware of the process that finished the run
REPORT_FILE = "report.json"
REPORT_MARKDOWN = "report.md"
REPORT_HTML = "report.html"
ERROR_FILE = "error.txt"  # a sweep's failed run: the traceback
LOSS_PLOT = "loss.png"
DEV_PLOT = "dev_spearman.png"
RUN_PLOTS = (LOSS_PLOT, DEV_PLOT)  # drawn by the trainer
DIMS_PLOT = "dims.png"  # average score against the truncated size, base and tuned (`run` with Matryoshka sizes)

# ---- a sweep folder -------------------------------------------------------------------------------------------
SWEEP_FILE = "sweep.json"
RUNS_DIR = "runs"
BASELINES_DIR = "baselines"
AVERAGED_DIR = "averaged"
ADAPTER_DIR = "adapter"  # averaged/adapter: the runs' adapters averaged
DEV_CURVES_PLOT = "dev_curves.png"
AVERAGES_PLOT = "averages.png"

# ---- the user's cache ($EMBEDTUNE_CACHE, else ~/.cache/embedtune) ---------------------------------------------
CACHED_BASELINES_DIR = "baselines"  # KEY.json: base-model evaluations that `run` and `sweep` reuse

# Files that mark a folder as a run folder (for `embedtune report`).
RUN_MARKERS = (REPORT_FILE, BASE_FILE, CONFIG_FILE, METRICS_FILE)
# A finished run's outputs: removed when a run starts, so that none of them is ever a previous run's.
RESULT_FILES = (REPORT_FILE, REPORT_MARKDOWN, TUNED_FILE, TUNED_MARKDOWN, REPORT_HTML, ENVIRONMENT_FILE, DIMS_PLOT)
# The averaged adapter's outputs in a sweep (averaged/).
AVERAGE_RESULTS = (REPORT_FILE, TUNED_FILE, TUNED_MARKDOWN, REPORT_HTML, ENVIRONMENT_FILE)
# A sweep's own report: removed when a sweep starts, written when it ends.
SWEEP_RESULTS = (REPORT_FILE, REPORT_MARKDOWN, REPORT_HTML, DEV_CURVES_PLOT, AVERAGES_PLOT)


def markdown_beside(path: Path) -> Path:
    """The Markdown table written beside an evaluation's JSON (base.json -> base.md)."""
    return Path(path).with_suffix(".md")
