"""`embedtune sweep`: one `run` per point of a grid over config fields, the base model scored once, one report.

    embedtune sweep --config base.yaml --grid train.lr=5e-3,5e-4 --grid model.prompt=,'{} is:' --output-dir O

The flags and the YAML file set the base config; each `--grid SECTION.FIELD=V1,V2,...` varies one field, and the
sweep runs every combination, one after another (one per GPU at a time where several are visible). A value is
read as the same flag would be (Config coerces and checks it); a quoted value ('...' or "...") is a YAML string
and a bracketed one ([a, b]) a YAML list, so a comma inside quotes or brackets does not split; an empty value is
the empty string and `null` (or `~`) is None. Fields given with `--zip` instead move together: the i-th values of
every `--zip` make one point (`--zip train.seed=1,2,42 --zip train.cosent=0,0.3,0.3`: three runs), and those points
are one more axis of the grid. With `--average-adapters` the runs' adapters, once all have finished, are averaged
into one (`embedtune average-adapters`; `--average-scale S` multiplies the averaged update by S) and scored beside
them.

OUTPUT/ holds:
  sweep.json            the grid and each run's state (pending, running, done, failed, with its error), written
                        atomically at every change
  baselines/KEY.json    the base model's scores, once per distinct model + evaluation setting (+ data and precision),
                        reused by every run (each run's base.json is a copy); looked up in the user's cache first
                        and filed there too, so `run` and later sweeps reuse them (unless --no-cache)
  runs/NAME/            an `embedtune run` folder per grid point; NAME is made of the grid values (stable,
                        file-system safe, e.g. `lr=5e-3,prompt=is~1a2b3c`)
  averaged/             with --average-adapters: adapter/ (the averaged adapter), tuned.json, report.json (its
                        scores, the runs it averages, their training time summed), report.html
  report.md, report.json, report.html, dev_curves.png, averages.png
                        the sweep's report: removed when a sweep starts, written when it ends

Re-running the same command skips runs whose report.json exists (a run writes it last), resumes an interrupted one
from its newest checkpoint, retries failed ones and runs the rest (so `--resume` is implied); a run whose folder
was made with other settings starts afresh there; the average is kept while its runs stay as they were. A failed
run is recorded with its error (traceback in runs/NAME/error.txt) and the sweep goes on; `embedtune sweep` then
exits with status 1 (as when the average fails).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from embedtune.config import Config
from embedtune.distributed import launched_ranks
from embedtune.errors import ConfigError
from embedtune.experiment import Baselines
from embedtune.runs import layout
from embedtune.sweep.averaging import average_runs, check_averageable, remove_average
from embedtune.sweep.execution import gpu_slots, one_line, prepare, run_in_turn, run_parallel
from embedtune.sweep.grid import GridAxis, GridValue, parse_grid, parse_zip, split_values
from embedtune.sweep.plan import SweepRun, SweepState, finished, grid_points, made_with, plan_runs, run_name
from embedtune.sweep.report import sweep_markdown, write_sweep_report

__all__ = ["Baselines", "GridAxis", "GridValue", "SweepRun", "SweepState", "average_runs", "check_averageable",
           "finished", "gpu_slots", "grid_points", "made_with", "one_line", "parse_grid", "parse_zip", "plan_runs",
           "prepare", "remove_average", "run_name", "run_sweep", "split_values", "sweep_markdown",
           "write_sweep_report"]

log = logging.getLogger(__name__)


def run_sweep(config: Config, grid: Sequence[str], zipped: Sequence[str] = (), average: bool = False,
              average_scale: float = 1.0) -> dict:
    """Every run of the grid (see the module's docstring), and with `average` their adapters averaged (the mean
    update times `average_scale`) and scored; returns the summary written to report.json, with "paths"."""
    if launched_ranks().distributed:
        raise ConfigError("run `embedtune sweep` as one process, not under torchrun or accelerate launch: it starts "
                          "its runs itself (one per GPU where several are visible)")
    if not grid and not zipped:
        raise ConfigError("sweep: give at least one --grid SECTION.FIELD=V1,V2,... (e.g. --grid train.lr=5e-4,5e-5) "
                          "or --zip SECTION.FIELD=V1,V2,...")
    axes = parse_grid(grid) if grid else []
    zipped_axes = parse_zip(zipped, axes)
    out = Path(config.train.output_dir)
    runs = plan_runs(config.validate(), axes, out, zipped_axes)  # every point checked before any model loads
    if average:
        check_averageable(runs, average_scale)
    elif average_scale != 1:
        raise ConfigError("--average-scale scales the averaged adapters: give --average-adapters too")
    out.mkdir(parents=True, exist_ok=True)
    for name in layout.SWEEP_RESULTS:  # a sweep's report describes a sweep that ended
        (out / name).unlink(missing_ok=True)
    state = SweepState(out, axes, runs, zipped_axes, average)
    todo = []
    for run in runs:
        if finished(run):
            log.info("skipping %s: finished (%s)", run.name, run.dir / layout.REPORT_FILE)
            state.set(run.name, "done")
        else:
            todo.append(run)
    print(f"sweep: {len(runs)} runs in {out / layout.RUNS_DIR}, {len(runs) - len(todo)} finished before", flush=True)
    prepare(todo)
    if todo:  # an average made before holds other adapters than the ones about to be trained
        remove_average(out)
    slots = gpu_slots(config)
    bases = Baselines(out / layout.BASELINES_DIR, use_cache=config.eval.cache)
    if slots and len(todo) > 1:
        run_parallel(todo, slots, state, bases)
    else:
        run_in_turn(todo, len(runs) - len(todo), len(runs), state, bases)
    if average:
        average_runs(runs, state, out, bases, average_scale)
    return write_sweep_report(out)
