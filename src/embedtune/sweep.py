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
  baselines/KEY.json    the base model's scores, once per distinct model + evaluation setting, reused by every run
                        (each run's base.json is a copy)
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

import copy
import dataclasses
import gc
import hashlib
import itertools
import json
import logging
import math
import os
import re
import time
import traceback
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from embedtune.config import Config
from embedtune.data.sts import resolve_tasks
from embedtune.distributed import launched_ranks
from embedtune.errors import ConfigError, TrainingStopped
from embedtune.evaluation.html_report import (
    AVERAGED_DIR,
    ENVIRONMENT_FILE,
    REPORT_HTML,
    SWEEP_FILE,
    RunView,
    averages_png,
    bar_kind,
    baselines,
    best_run,
    dev_curves_png,
    load_run,
    load_sweep,
    render_html,
    task_columns,
    task_score,
    write_run_page,
)
from embedtune.evaluation.report import DISPLAY_NAMES
from embedtune.experiment import (
    RESULT_FILES,
    complete_result,
    evaluate_model,
    evaluator_for,
    run_experiment,
    write_result,
)
from embedtune.files import read_json_or, write_file_atomically, write_text_atomically

log = logging.getLogger(__name__)

RUNS_DIR, BASELINES_DIR, ERROR_FILE = "runs", "baselines", "error.txt"
AVERAGE_RESULTS = ("report.json", "tuned.json", "tuned.md", REPORT_HTML, ENVIRONMENT_FILE)
SWEEP_RESULTS = ("report.json", "report.md", REPORT_HTML, "dev_curves.png", "averages.png")
# Fields a sweep sets itself, for every run.
NOT_SWEPT = {"train.output_dir": "each run's folder is OUTPUT/runs/NAME",
             "train.resume": "a sweep always continues its runs where they stopped"}
NULLS = ("null", "Null", "NULL", "~")
_SAFE = re.compile(r"[A-Za-z0-9._+-]+")
_CLOSING = {"[": "]", "(": ")", "{": "}"}
MAX_NAME = 150  # characters of a run folder's name (file systems allow 255)


# ---- the grid -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GridValue:
    text: str  # as given, quotes removed: for the run's name and the report
    value: Any  # what Config.update receives, as from a flag or a YAML file


@dataclass(frozen=True)
class GridAxis:
    section: str
    name: str
    values: tuple[GridValue, ...]

    @property
    def key(self) -> str:
        return f"{self.section}.{self.name}"


def parse_grid(specs: Sequence[str]) -> list[GridAxis]:
    """`SECTION.FIELD=V1,V2,...` specs -> axes, each value checked by Config (a ConfigError names the spec)."""
    if not specs:
        raise ConfigError("sweep: give at least one --grid SECTION.FIELD=V1,V2,... (e.g. --grid train.lr=5e-4,5e-5)")
    axes: list[GridAxis] = []
    for spec in specs:
        axes.append(_parse_axis(spec, "--grid", axes, distinct=True))
    return axes


def parse_zip(specs: Sequence[str], axes: Sequence[GridAxis]) -> list[GridAxis]:
    """`--zip` specs: fields whose values move together (the i-th values of each make one point), as one more
    axis of the grid; every spec lists as many values, and no point repeats."""
    zipped: list[GridAxis] = []
    for spec in specs:
        axis = _parse_axis(spec, "--zip", [*axes, *zipped], distinct=False)
        if zipped and len(axis.values) != len(zipped[0].values):
            raise ConfigError(f"--zip {axis.key}: {len(axis.values)} values, but --zip {zipped[0].key} has "
                              f"{len(zipped[0].values)} (zipped fields list one value per point)")
        zipped.append(axis)
    points = [tuple(_coerced(a.section, a.name, a.values[i].value) for a in zipped)
              for i in range(len(zipped[0].values) if zipped else 0)]
    for i, point in enumerate(points):
        if point in points[:i]:
            raise ConfigError(f"--zip: points {points.index(point) + 1} and {i + 1} are the same "
                              f"({', '.join(a.values[i].text for a in zipped)})")
    return zipped


def _parse_axis(spec: str, flag: str, earlier: Sequence[GridAxis], distinct: bool) -> GridAxis:
    """One `SECTION.FIELD=V1,V2,...` spec; `distinct`: no value may repeat (a zipped field's may)."""
    key, sep, listed = spec.partition("=")
    section, name = _field(key.strip(), spec, sep, flag)
    where = f"{flag} {section}.{name}"
    if any(axis.key == f"{section}.{name}" for axis in earlier):
        raise ConfigError(f"{where}: given twice (list all its values in one --grid, or one --zip)")
    values = tuple(_grid_value(item, where) for item in split_values(listed, where))
    coerced = [_coerced(section, name, v.value) for v in values]
    for i, value in enumerate(coerced):
        if distinct and value in coerced[:i]:
            raise ConfigError(f"{where}: {values[coerced.index(value)].text!r} and {values[i].text!r} are the "
                              "same value")
    return GridAxis(section, name, values)


def _field(key: str, spec: str, sep: str, flag: str = "--grid") -> tuple[str, str]:
    """(section, field) of a spec's key, or a ConfigError listing the valid ones."""
    sections = {f.name: f.type for f in fields(Config)}
    section, dot, name = key.partition(".")
    if not sep or not dot or not name:
        raise ConfigError(f"{flag} {spec!r}: expected SECTION.FIELD=V1,V2,... (e.g. train.lr=5e-4,5e-5); "
                          f"sections: {', '.join(sections)}")
    if section not in sections:
        raise ConfigError(f"{flag} {key}: unknown section '{section}' (valid: {', '.join(sections)})")
    known = [f.name for f in fields(getattr(Config(), section))]
    name = name.replace("-", "_")
    if name not in known:
        raise ConfigError(f"{flag} {key}: unknown field '{name}' in {section} (valid: {', '.join(sorted(known))})")
    if f"{section}.{name}" in NOT_SWEPT:
        raise ConfigError(f"{flag} {key}: not a field to sweep ({NOT_SWEPT[f'{section}.{name}']})")
    return section, name


def split_values(text: str, where: str) -> list[str]:
    """Split at the commas outside quotes and brackets: `'a, b',[c, d],e` -> `'a, b'`, `[c, d]`, `e`.

    A quote opens a string only where a value (or a list item) starts, as in YAML, so an apostrophe inside a
    plain value (`it's`) is text; inside double quotes a backslash escapes the next character."""
    items, current, closing = [], [], []
    quote, escaped, at_start = None, False, True
    for ch in text:
        if quote:
            current.append(ch)
            if escaped:
                escaped = False
            elif quote == '"' and ch == "\\":
                escaped = True
            elif ch == quote:
                quote, at_start = None, False
            continue
        if ch == "," and not closing:
            items.append("".join(current))
            current, at_start = [], True
            continue
        current.append(ch)
        if ch in "'\"" and at_start:
            quote = ch
        elif ch in _CLOSING:
            closing.append(_CLOSING[ch])
            at_start = True
        elif ch in ")]}":
            if not closing or closing[-1] != ch:
                raise ConfigError(f"{where}: unbalanced '{ch}' in {text!r} (quote a value that holds brackets)")
            closing.pop()
            at_start = False
        elif ch == ",":
            at_start = True
        elif not ch.isspace():
            at_start = False
    if quote or closing:
        missing = quote or closing[-1]
        raise ConfigError(f"{where}: missing closing {missing} in {text!r}")
    items.append("".join(current))
    return items


def _grid_value(item: str, where: str) -> GridValue:
    text = item.strip()
    if text[:1] in ("'", '"', "["):
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as err:
            problem = getattr(err, "problem", None) or type(err).__name__
            raise ConfigError(f"{where}: cannot read {text!r} ({problem})") from None
        shown = value if isinstance(value, str) else text
        return GridValue(shown, value)
    return GridValue(text, None if text in NULLS else text)


def _coerced(section: str, name: str, value: Any) -> Any:
    probe = Config()
    probe.update({section: {name: value}}, "--grid")
    return getattr(getattr(probe, section), name)


# ---- the runs -------------------------------------------------------------------------------------------------

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
        config.train.output_dir, config.train.resume = str(out / RUNS_DIR / name), True
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
    an older version) take their defaults."""
    merged = Config().to_dict()
    for section, values in config.items():
        if isinstance(values, dict) and section in merged:
            merged[section].update(values)
    merged["train"].pop("resume", None)
    merged["train"].pop("output_dir", None)
    return merged


def made_with(run: SweepRun) -> bool:
    """Whether the run's folder was made with this run's settings (True when it holds no config yet)."""
    saved = read_json_or(run.dir / "config.json")
    return not saved or _comparable(saved) == _comparable(run.config.to_dict())


def finished(run: SweepRun) -> bool:
    return (run.dir / "report.json").is_file() and made_with(run)


# ---- state ----------------------------------------------------------------------------------------------------

class SweepState:
    """sweep.json: the grid and every run's state, rewritten atomically at each change."""

    def __init__(self, out: Path, axes: Sequence[GridAxis], runs: Sequence[SweepRun],
                 zipped: Sequence[GridAxis] = (), average: bool = False):
        self.path = out / SWEEP_FILE
        self.grid = [{"field": a.key, "values": [v.text for v in a.values], "zip": True} for a in zipped]
        self.grid += [{"field": a.key, "values": [v.text for v in a.values]} for a in axes]
        # The averaged adapter's state (pending, done, skipped, failed), when the sweep makes one.
        self.averaged = {"status": "pending", "error": None} if average else None
        self.runs = {run.name: {"name": run.name, "dir": f"{RUNS_DIR}/{run.name}", "overrides": run.overrides,
                                "status": "pending", "error": None, "seconds": None,
                                "config": run.config.to_dict()} for run in runs}
        self.save()

    def set(self, name: str, status: str, error: str | None = None, seconds: float | None = None) -> None:
        self.runs[name].update(status=status, error=error, seconds=seconds)
        self.save()

    def save(self) -> None:
        state = {"grid": self.grid, "runs": list(self.runs.values()), "updated": time.strftime("%Y-%m-%d %H:%M:%S")}
        if self.averaged is not None:
            state["averaged"] = self.averaged
        write_text_atomically(self.path, json.dumps(state, indent=2) + "\n")


class Baselines:
    """The base model's scores per distinct model + evaluation setting, evaluated once and kept in
    OUTPUT/baselines/KEY.json (so a re-run reuses them too); a failure is kept and given to every run that
    shares the setting, without trying again."""

    def __init__(self, folder: Path):
        self.folder, self.failures = folder, {}

    @staticmethod
    def key(config: Config) -> str:
        # Only the model settings that differ from their defaults: a field added in a later version, at a
        # default that keeps the old behaviour, leaves every key (and the scores filed under it) as it was.
        defaults = dataclasses.asdict(type(config.model)())
        model = {k: v for k, v in dataclasses.asdict(config.model).items() if v != defaults[k]}
        setting = {"model": model, "data_dir": config.data.data_dir,
                   "eval": {k: getattr(config.eval, k) for k in ("tasks", "precision", "batch_size")}}
        return hashlib.sha1(json.dumps(setting, sort_keys=True).encode()).hexdigest()[:12]

    def get(self, config: Config) -> dict:
        key = self.key(config)
        if key in self.failures:
            raise self.failures[key]
        path = self.folder / f"{key}.json"
        try:
            evaluator = evaluator_for(config)
            result = complete_result(path, evaluator) if path.is_file() else None
            if result is None:
                print(f"baseline evaluation of {config.model.name} (prompt {config.model.prompt!r}), once for the "
                      "runs that share it", flush=True)
                result = evaluate_model(config, evaluator)
                write_result(result, path)
        except Exception as err:
            self.failures[key] = err
            raise
        finally:
            gc.collect()
        return result


# ---- running --------------------------------------------------------------------------------------------------

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
    for name in SWEEP_RESULTS:  # a sweep's report describes a sweep that ended
        (out / name).unlink(missing_ok=True)
    state = SweepState(out, axes, runs, zipped_axes, average)
    todo = []
    for run in runs:
        if finished(run):
            log.info("skipping %s: finished (%s)", run.name, run.dir / "report.json")
            state.set(run.name, "done")
        else:
            todo.append(run)
    print(f"sweep: {len(runs)} runs in {out / RUNS_DIR}, {len(runs) - len(todo)} finished before", flush=True)
    prepare(todo)
    if todo:  # an average made before holds other adapters than the ones about to be trained
        remove_average(out)
    slots = gpu_slots(config)
    bases = Baselines(out / BASELINES_DIR)
    if slots and len(todo) > 1:
        _run_parallel(todo, slots, state, bases)
    else:
        _run_in_turn(todo, len(runs) - len(todo), len(runs), state, bases)
    if average:
        average_runs(runs, state, out, bases, average_scale)
    return write_sweep_report(out)


def prepare(todo: Sequence[SweepRun]) -> None:
    """Runs about to start: one whose folder holds another config's results starts afresh (no resume), and no
    previous result of it may stay behind to be reported."""
    for run in todo:
        if not made_with(run):
            log.warning("%s was made with other settings: starting it afresh", run.dir)
            run.config.train.resume = False
        for name in RESULT_FILES + (ERROR_FILE,):  # nor an earlier failure's traceback
            (run.dir / name).unlink(missing_ok=True)


def _run_in_turn(todo: Sequence[SweepRun], done: int, total: int, state: SweepState, bases: Baselines) -> None:
    for i, run in enumerate(todo, start=done + 1):
        print(f"[{i}/{total}] {run.name}", flush=True)
        state.set(run.name, "running")  # stays so if the process is killed: the report says "interrupted"
        started = time.perf_counter()
        try:
            run_experiment(run.config, base=bases.get(run.config))
        except (TrainingStopped, KeyboardInterrupt):
            raise  # stopped on request: the sweep stops too; re-running continues
        except Exception as err:
            _failed(run, state, err, traceback.format_exc(), time.perf_counter() - started)
        else:
            state.set(run.name, "done", seconds=round(time.perf_counter() - started, 1))
        finally:
            _release_memory()


def _failed(run: SweepRun, state: SweepState, err: BaseException | str, trace: str, seconds: float) -> None:
    error = one_line(err)
    log.error("%s failed: %s (traceback in %s)", run.name, error, run.dir / ERROR_FILE)
    write_text_atomically(run.dir / ERROR_FILE, trace)
    state.set(run.name, "failed", error, round(seconds, 1))


def one_line(err: BaseException | str) -> str:
    text = err if isinstance(err, str) else f"{type(err).__name__}: {err}"
    text = " ".join(text.split())
    return text if len(text) <= 500 else text[:497] + "..."


def _release_memory() -> None:
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---- the runs' adapters averaged -------------------------------------------------------------------------------

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
    for name in AVERAGE_RESULTS:
        (out / AVERAGED_DIR / name).unlink(missing_ok=True)


def average_runs(runs: Sequence[SweepRun], state: SweepState, out: Path, bases: Baselines, scale: float = 1.0) -> None:
    """OUTPUT/averaged/ once every run has finished, kept while the runs and the scale stay as they were; its
    state in sweep.json (a failure is recorded there, and the sweep goes on to its report)."""
    folder, names = out / AVERAGED_DIR, [run.name for run in runs]
    made = read_json_or(folder / "report.json")
    if made.get("averaged_from") == names and made.get("scale", 1.0) == scale:
        log.info("skipping the average: finished (%s)", folder / "report.json")
        return _set_average(state, "done")
    unfinished = [name for name in names if state.runs[name]["status"] != "done"]
    if unfinished:
        log.warning("not averaging the adapters: %s did not finish", ", ".join(unfinished))
        return _set_average(state, "skipped", f"not every run finished ({', '.join(unfinished)})")
    print(f"averaging the adapters of the {len(runs)} runs into {folder / 'adapter'}, then its evaluation",
          flush=True)
    _set_average(state, "running")
    try:
        report = _average_and_score(runs, folder, bases, scale)
    except Exception as err:
        log.error("the average failed: %s", one_line(err))
        return _set_average(state, "failed", one_line(err))
    finally:
        _release_memory()
    write_result(report["tuned"], folder / "tuned.json")
    write_run_page(folder, report)
    write_text_atomically(folder / "report.json", json.dumps(report, indent=2) + "\n")  # last: it is done
    _set_average(state, "done")


def _average_and_score(runs: Sequence[SweepRun], folder: Path, bases: Baselines, scale: float) -> dict:
    """The adapter whose update is `scale` x the mean of the runs' evaluated adapters (FOLDER/adapter) and its
    report: the scores, the runs it averages and their training time (time in steps, summed)."""
    from embedtune.models.adapter_average import average_adapters

    started = time.perf_counter()
    adapters = [read_json_or(run.dir / "report.json")["selected"]["adapter"] for run in runs]
    adapter = average_adapters(adapters, folder / "adapter", scale=scale)
    config = runs[0].config  # every run's model, LoRA targets and evaluation are the same (check_averageable)
    base = bases.get(config)
    tuned = evaluate_model(config, evaluator_for(config), adapter)
    train_seconds = [load_run(run.dir).train_seconds for run in runs]
    return {"base": base, "tuned": tuned, "gain": tuned["average"] - base["average"], "plan": None,
            "seconds": round(time.perf_counter() - started, 1),
            "selected": {"adapter": str(adapter), "by": "average", "step": None, "dev_score": None},
            "averaged_from": [run.name for run in runs], "adapters": adapters, "scale": scale,
            "train_seconds": sum(s for s in train_seconds if s is not None)}


def _set_average(state: SweepState, status: str, error: str | None = None) -> None:
    state.averaged = {"status": status, "error": error}
    state.save()


# ---- one run per GPU ------------------------------------------------------------------------------------------

def gpu_slots(config: Config) -> list[str]:
    """The CUDA devices to run on side by side, one run each, when the config leaves the device open (auto or
    cuda) and more than one is visible; [] to run one after another in this process."""
    if config.model.device not in ("auto", "cuda"):
        return []
    import torch

    count = torch.cuda.device_count()
    if count < 2:
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [v.strip() for v in visible.split(",") if v.strip()] if visible else []
    return ids[:count] if len(ids) >= count else [str(i) for i in range(count)]


def _pin(gpu: str, level: int) -> None:
    """A worker's set-up: its one GPU (before CUDA starts in it) and the parent's log level."""
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("embedtune").setLevel(level)


def _run_child(config: dict, base: dict) -> tuple[str | None, str, float]:
    """One run in a worker process: (error or None, traceback, seconds)."""
    started = time.perf_counter()
    try:
        run_experiment(Config.from_dict(config), base=base)
        return None, "", time.perf_counter() - started
    except Exception as err:
        return one_line(err), traceback.format_exc(), time.perf_counter() - started


def _run_parallel(todo: Sequence[SweepRun], slots: Sequence[str], state: SweepState, bases: Baselines) -> None:
    """The baselines here first, then each run in a worker process pinned to one GPU (a worker per GPU, so that
    a GPU's runs always land in the process whose CUDA started on it)."""
    import multiprocessing

    scored = {}
    for run in todo:
        try:
            scored[run.name] = bases.get(run.config)
        except Exception as err:
            _failed(run, state, err, traceback.format_exc(), 0.0)
    _release_memory()
    queue = [run for run in todo if run.name in scored]
    context = multiprocessing.get_context("spawn")  # CUDA cannot start in a forked child
    level = logging.getLogger("embedtune").getEffectiveLevel()
    pools = {gpu: ProcessPoolExecutor(1, context, initializer=_pin, initargs=(gpu, level)) for gpu in slots}
    busy: dict[Future, tuple[str, SweepRun]] = {}
    try:
        while queue or busy:
            for gpu in [g for g in slots if g not in {slot for slot, _ in busy.values()}]:
                if queue:
                    run = queue.pop(0)
                    print(f"{run.name} on GPU {gpu}", flush=True)
                    state.set(run.name, "running")
                    busy[pools[gpu].submit(_run_child, run.config.to_dict(), scored[run.name])] = (gpu, run)
            finished_now, _ = wait(list(busy), return_when=FIRST_COMPLETED)
            for future in finished_now:
                gpu, run = busy.pop(future)
                try:
                    error, trace, seconds = future.result()
                except BrokenProcessPool:
                    error, trace, seconds = "the worker process died (killed, or out of memory)", "", 0.0
                    pools[gpu] = ProcessPoolExecutor(1, context, initializer=_pin, initargs=(gpu, level))
                if error is None:
                    state.set(run.name, "done", seconds=round(seconds, 1))
                else:
                    _failed(run, state, error, trace, seconds)
    finally:
        for pool in pools.values():
            pool.shutdown(wait=True, cancel_futures=True)


# ---- the sweep's report ---------------------------------------------------------------------------------------

def write_sweep_report(out: Path) -> dict:
    """report.json (the table as data), report.md, the two plots and report.html, from the folders on disk."""
    source = load_sweep(out)
    runs = source.runs
    best = best_run(runs)
    averaged = source.averaged_state
    summary = {"runs": [_run_summary(run) for run in runs],
               "baselines": [{"label": label, **_scores(result)} for label, result in baselines(runs)],
               "best": best.name if best else None,
               "counts": {s: sum(r.status == s for r in runs) for s in ("done", "failed", "interrupted", "pending")},
               "averaged": _averaged_summary(source.averaged, averaged) if averaged or source.averaged else None}
    plots = _write_plots(out, source.shown)
    write_text_atomically(out / "report.md", sweep_markdown(source.path, source.shown, plots, averaged))
    write_text_atomically(out / REPORT_HTML, render_html([source], f"embedtune sweep: {out}"))
    write_text_atomically(out / "report.json", json.dumps(summary, indent=2) + "\n")
    summary["paths"] = {name: str(out / name) for name in ("report.md", "report.json", REPORT_HTML)}
    return summary


def _scores(result: dict | None) -> dict:
    if not result:
        return {"average": None, "std": None, "tasks": {}}
    return {"average": result["average"], "std": result["std"],
            "tasks": {k: task_score(result, k) for k in result["tasks"]}}


def _averaged_summary(run: RunView | None, state: dict | None) -> dict:
    """The averaged adapter as report.json gives it: its scores beside the runs', the runs it averages, and its
    training time (theirs, summed); status and error from sweep.json when it was not made."""
    if run is None:
        return {"status": (state or {}).get("status", "pending"), "error": (state or {}).get("error"),
                **_scores(None)}
    return {"status": "done", "error": None, **_scores(run.tuned), "averaged_from": run.averaged_from,
            "train_seconds": run.train_seconds, "scale": run.report.get("scale", 1.0),
            "adapter": run.report["selected"]["adapter"], "dir": str(run.path)}


def _run_summary(run: RunView) -> dict:
    return {"name": run.name, "status": run.status, "overrides": run.overrides, **_scores(run.tuned),
            "train_seconds": run.train_seconds if run.tuned else None, "error": run.error, "dir": str(run.path)}


def _write_plots(out: Path, runs: Sequence[RunView]) -> list[str]:
    written = []
    curves = [(run.name, run.dev_curve) for run in runs if run.dev_curve]
    if curves:
        png = dev_curves_png(curves)
        write_file_atomically(out / "dev_curves.png", lambda f: f.write(png))
        written.append("dev_curves.png")
    best = best_run(runs)
    bars = [(label, result["average"], "base") for label, result in baselines(runs)]
    bars += [(run.name, run.tuned["average"], bar_kind(run, best)) for run in runs if run.tuned]
    if bars:
        png = averages_png(bars)
        write_file_atomically(out / "averages.png", lambda f: f.write(png))
        written.append("averages.png")
    return written


def sweep_markdown(out: Path, runs: Sequence[RunView], plots: Sequence[str], averaged: dict | None = None) -> str:
    """The table: a row per base model and per run (and the averaged adapter), columns the sets, average ± std and
    training time. `averaged`: the average's state in sweep.json, to say why there is none."""
    bases = baselines(runs)
    columns = task_columns([r for _, r in bases] + [run.tuned for run in runs if run.tuned])
    best = best_run(runs)
    head = "| run | status | " + " | ".join(DISPLAY_NAMES.get(t, t) for t in columns) + " | average ± std | training |"
    lines = [f"# Sweep: {out}", "", head, "|---|---|" + "---:|" * (len(columns) + 2)]
    for label, result in bases:
        lines.append(_markdown_row(label, "base", result, columns, None))
    for run in runs:
        label = f"**{run.name}**" if run is best else run.name
        lines.append(_markdown_row(label, run.status, run.tuned, columns, run.train_seconds if run.tuned else None))
    lines.append("")
    if best:
        lines.append(f"Best run: **{best.name}**, average {best.tuned['average']:.2f} ± {best.tuned['std']:.2f} "
                     "(Spearman x100, average ± population std over the sets).")
    soup = next((run for run in runs if run.averaged_from), None)
    if soup:
        scale = soup.report.get("scale", 1.0)
        scaled = f", the mean update times {scale:g}" if scale != 1 else ""
        lines.append(f"\n{soup.name}: the runs' adapters averaged into one ({soup.report['selected']['adapter']}"
                     f"{scaled}); its training time is theirs, summed.")
    elif averaged and averaged.get("error"):
        lines.append(f"\nNo averaged adapter: {averaged['status']}, {averaged['error']}.")
    for run in runs:
        if run.error:
            lines.append(f"\n{run.name} failed: {run.error}")
    lines += [f"\n![{Path(p).stem}]({p})" for p in plots]
    lines.append(f"\nEach run's own report: {out / RUNS_DIR}/NAME/report.md; everything on one page: {REPORT_HTML}.")
    return "\n".join(lines) + "\n"


def _markdown_row(label: str, status: str, result: dict | None, columns: Sequence[str], seconds: float | None) -> str:
    cells = [f"{task_score(result, t):.2f}" if task_score(result, t) is not None else "–" for t in columns]
    average = f"{result['average']:.2f} ± {result['std']:.2f}" if result else "–"
    trained = f"{seconds:.1f} s" if seconds is not None else "–"
    label = label.replace("|", "\\|")  # a prompt in a base model's label may hold one
    return f"| {label} | {status} | " + " | ".join(cells) + f" | {average} | {trained} |"
