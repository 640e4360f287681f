"""`sweep --average-adapters`: once every run has finished, their adapters averaged into one (the mean update
times `--average-scale`), scored beside them in OUTPUT/averaged/ (adapter/, tuned.json, report.json with the runs it
averages and their training time summed, report.html)."""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path

from embedtune.errors import ConfigError
from embedtune.evaluation.html_report import write_run_page
from embedtune.experiment import Baselines, evaluate_model, evaluator_for, write_result
from embedtune.runs import layout
from embedtune.runs.capture import capture_environment
from embedtune.runs.reading import load_run
from embedtune.runs.records import RunReport, Selected
from embedtune.sweep.execution import one_line, release_memory
from embedtune.sweep.plan import SweepRun, SweepState

log = logging.getLogger(__name__)


def check_averageable(runs: Sequence[SweepRun], scale: float = 1.0) -> None:
    """Adapters average into one embedder only when the runs share the model settings and the LoRA targets (ranks
    may differ): checked before any run starts."""
    if not math.isfinite(scale) or scale <= 0:
        raise ConfigError(f"--average-scale must be > 0, got {scale}")
    if len(runs) < 2 and scale == 1:
        raise ConfigError("--average-adapters: the grid has one run, nothing to average (give --average-scale to "
                          "scale its update)")
    first = runs[0].config
    for run in runs[1:]:
        for section in ("model", "lora", "eval"):
            ours, theirs = dataclasses.asdict(getattr(first, section)), dataclasses.asdict(getattr(run.config, section))
            allowed = {"r", "alpha", "dropout"} if section == "lora" else set()  # training-only or rank-stacked
            differ = [k for k in ours if k not in allowed and ours[k] != theirs[k]]
            if differ:
                raise ConfigError(f"--average-adapters: runs {runs[0].name} and {run.name} differ in "
                                  f"{section}.{differ[0]}; only adapters of one embedder (the same model settings, "
                                  "LoRA targets and evaluation) can be averaged")


def remove_average(out: Path) -> None:
    for name in layout.AVERAGE_RESULTS:
        (out / layout.AVERAGED_DIR / name).unlink(missing_ok=True)


def average_runs(runs: Sequence[SweepRun], state: SweepState, out: Path, bases: Baselines, scale: float = 1.0) -> None:
    """OUTPUT/averaged/ once every run has finished, kept while the runs and the scale stay as they were; its
    state in sweep.json (a failure is recorded there, and the sweep goes on to its report)."""
    folder, names = out / layout.AVERAGED_DIR, [run.name for run in runs]
    made = RunReport.load(folder / layout.REPORT_FILE)
    if made is not None and made.averaged_from == names and (made.scale if made.scale is not None else 1.0) == scale:
        log.info("skipping the average: finished (%s)", folder / layout.REPORT_FILE)
        return state.set_average("done")
    unfinished = [name for name in names if state.status(name) != "done"]
    if unfinished:
        log.warning("not averaging the adapters: %s did not finish", ", ".join(unfinished))
        return state.set_average("skipped", f"not every run finished ({', '.join(unfinished)})")
    print(f"averaging the adapters of the {len(runs)} runs into {folder / layout.ADAPTER_DIR}, then its evaluation",
          flush=True)
    state.set_average("running")
    try:
        report = _average_and_score(runs, folder, bases, scale)
    except Exception as err:
        log.error("the average failed: %s", one_line(err))
        return state.set_average("failed", one_line(err))
    finally:
        release_memory()
    write_result(report.tuned, folder / layout.TUNED_FILE)
    capture_environment().save(folder / layout.ENVIRONMENT_FILE)
    write_run_page(folder, report)
    report.save(folder / layout.REPORT_FILE)  # last: it is done
    state.set_average("done")


def _average_and_score(runs: Sequence[SweepRun], folder: Path, bases: Baselines, scale: float) -> RunReport:
    """The adapter whose update is `scale` x the mean of the runs' evaluated adapters (FOLDER/adapter) and its
    report: the scores, the runs it averages and their training time (time in steps, summed)."""
    from embedtune.models.adapter_average import average_adapters

    started = time.perf_counter()
    adapters = [RunReport.load(run.dir / layout.REPORT_FILE).adapter for run in runs]
    adapter = average_adapters(adapters, folder / layout.ADAPTER_DIR, scale=scale)
    config = runs[0].config  # every run's model, LoRA targets and evaluation are the same (check_averageable)
    base = bases.get(config)
    tuned = evaluate_model(config, evaluator_for(config), adapter)
    train_seconds = [load_run(run.dir).train_seconds for run in runs]
    return RunReport.of(base, tuned, plan=None, seconds=round(time.perf_counter() - started, 1),
                        selected=Selected(str(adapter), "average", None, None),
                        averaged_from=[run.name for run in runs], adapters=adapters, scale=scale,
                        train_seconds=sum(s for s in train_seconds if s is not None))
