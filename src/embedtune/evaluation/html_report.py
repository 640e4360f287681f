"""One self-contained HTML page for run and sweep folders: result tables, plots, each run's config, data-cleaning
counts, versions and hardware.

Everything is inline (CSS; plots as base64 PNG data URIs; no script, no external URL), so the file can be mailed
or archived on its own, and every text that comes from a run (names, prompts, paths, errors) goes through
html.escape. The page is built from what the folders hold on disk, so `embedtune report` renders the same page
later that `run` and `sweep` write at their end. A run counts as done only when its report.json exists: a killed
or failed run is shown as such, never with a half-finished result.
"""
from __future__ import annotations

import base64
import html
import io
import json
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embedtune.config import Config
from embedtune.data.sts import ALL_TASKS
from embedtune.errors import ConfigError
from embedtune.evaluation.report import DISPLAY_NAMES, pyplot, read_metrics
from embedtune.files import read_json_or, write_text_atomically

SWEEP_FILE = "sweep.json"  # written by embedtune.sweep: the plan and each run's state
ENVIRONMENT_FILE = "environment.json"  # versions and hardware of the process that finished the run
REPORT_HTML = "report.html"
AVERAGED_DIR = "averaged"  # in a sweep folder: its runs' adapters averaged (sweep --average-adapters)
RUN_MARKERS = ("report.json", "base.json", "config.json", "metrics.jsonl")
RUN_PLOTS = ("loss.png", "dev_spearman.png")  # drawn by the trainer
VERSIONED = ("embedtune", "torch", "transformers", "peft")
HARDWARE_LABELS = {"cpu": "CPU", "logical_cores": "logical cores", "physical_cores": "physical cores",
                   "memory_gib": "memory (GiB)"}
# How a sweep's recorded state reads once the folder is looked at: a "running" run whose report.json is missing
# was interrupted (the sweep was killed or stopped during it).
RECORDED_STATUS = {"running": "interrupted", "done": "interrupted", "failed": "failed", "pending": "pending"}


@dataclass
class RunView:
    """What one run folder holds, as the page shows it."""

    name: str
    path: Path
    status: str  # done | failed | interrupted | pending | unfinished (a plain run folder without report.json)
    error: str | None = None
    overrides: dict[str, str] = field(default_factory=dict)
    report: dict | None = None
    base: dict | None = None
    config: dict | None = None
    data_report: dict | None = None
    environment: dict | None = None
    events: list[dict] = field(default_factory=list)
    averaged_from: list[str] = field(default_factory=list)  # a sweep's averaged adapter: the runs it averages

    @property
    def tuned(self) -> dict | None:
        return self.report["tuned"] if self.report and self.status == "done" else None

    @property
    def train_seconds(self) -> float | None:
        """Seconds spent in training steps (metrics.jsonl; a resumed run's steps count once); an averaged
        adapter's: its runs' together."""
        if self.averaged_from:
            return (self.report or {}).get("train_seconds")
        steps = [e["seconds"] for e in self.events if ("loss" in e or "skipped" in e) and "seconds" in e]
        return sum(steps) if steps else None

    @property
    def dev_curve(self) -> list[tuple[int, float]]:
        return [(e["step"], sum(e["eval"].values()) / len(e["eval"])) for e in self.events if e.get("eval")]


@dataclass
class Source:
    """A folder given to the report: one run, or a sweep with its runs."""

    path: Path
    kind: str  # run | sweep
    runs: list[RunView]
    grid: list[dict] = field(default_factory=list)
    averaged: RunView | None = None  # the sweep's runs' adapters averaged (sweep --average-adapters)
    averaged_state: dict | None = None  # its state in sweep.json (status, error), when the sweep averages

    @property
    def shown(self) -> list[RunView]:
        """The rows of the page: every run, then the averaged adapter."""
        return self.runs + ([self.averaged] if self.averaged else [])


# ---- reading folders ------------------------------------------------------------------------------------------

def load_run(path: Path, name: str | None = None, recorded: str | None = None, error: str | None = None,
             overrides: dict[str, str] | None = None, report: dict | None = None,
             config: dict | None = None) -> RunView:
    """A run folder's files; `report` stands in for report.json (a run renders its page just before writing it),
    `config` for config.json (which a run that failed before training never wrote)."""
    path = Path(path)
    report = report if report is not None else _json(path / "report.json")
    if report is not None:
        status, error = "done", None
    else:
        status = RECORDED_STATUS.get(recorded, "unfinished") if recorded else "unfinished"
    base = report["base"] if report else _json(path / "base.json")
    return RunView(name or path.name, path, status, error, dict(overrides or {}), report, base,
                   _json(path / "config.json") or config, _json(path / "data_report.json"),
                   _json(path / ENVIRONMENT_FILE), _events(path), list((report or {}).get("averaged_from") or []))


def _json(path: Path) -> dict | None:
    """A side file's mapping; None when it is absent or unreadable (a run killed before writing it)."""
    return read_json_or(path) or None


def _events(path: Path) -> list[dict]:
    try:
        return read_metrics(path / "metrics.jsonl")
    except (OSError, ValueError):  # a line cut by a kill: the curve is shown up to it elsewhere; here, none
        return []


def load_sweep(path: Path) -> Source:
    state = read_json_or(path / SWEEP_FILE)
    if not isinstance(state.get("runs"), list):
        raise ConfigError(f"{path / SWEEP_FILE}: not a sweep state file (no list of runs)")
    runs = [load_run(path / run.get("dir", f"runs/{run['name']}"), run["name"], run.get("status"), run.get("error"),
                     run.get("overrides"), config=run.get("config"))
            for run in state["runs"] if isinstance(run, dict) and isinstance(run.get("name"), str)]
    return Source(path, "sweep", runs, state.get("grid", []), _averaged(path, [run.name for run in runs]),
                  state.get("averaged"))


def _averaged(path: Path, names: list[str]) -> RunView | None:
    """The sweep's averaged adapter (OUTPUT/averaged), if one was made of exactly these runs."""
    report = _json(path / AVERAGED_DIR / "report.json")
    if not report or report.get("averaged_from") != names:
        return None
    return load_run(path / AVERAGED_DIR, f"averaged ({len(names)} runs)", report=report)


def load_source(path: str | Path) -> Source:
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"{path}: no such folder")
    if (path / SWEEP_FILE).is_file():
        return load_sweep(path)
    if any((path / marker).exists() for marker in RUN_MARKERS):
        return Source(path, "run", [load_run(path)])
    raise ConfigError(f"{path}: neither a run folder (none of {', '.join(RUN_MARKERS)}) nor a sweep folder "
                      f"({SWEEP_FILE})")


# ---- environment ----------------------------------------------------------------------------------------------

def environment() -> dict[str, Any]:
    """Versions (embedtune, torch, transformers, peft, python) and hardware (CPU, cores, memory, GPUs) of this
    process, for environment.json."""
    import importlib.metadata as metadata

    import psutil

    versions: dict[str, str | None] = {}
    for package in VERSIONED:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    versions["python"] = platform.python_version()
    hardware = {"cpu": cpu_model(), "logical_cores": os.cpu_count(), "physical_cores": psutil.cpu_count(logical=False),
                "memory_gib": round(psutil.virtual_memory().total / 2**30, 1), "platform": platform.platform(),
                "gpus": gpus()}
    return {"versions": versions, "hardware": hardware, "recorded": time.strftime("%Y-%m-%d %H:%M:%S %z")}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpus() -> list[dict[str, Any]]:
    import torch

    if not torch.cuda.is_available():
        return []
    found = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        found.append({"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1)})
    return found


# ---- writing --------------------------------------------------------------------------------------------------

def write_run_page(out: Path, report: dict) -> Path:
    """environment.json and report.html of a finishing run (`run` calls it just before writing report.json)."""
    write_text_atomically(out / ENVIRONMENT_FILE, json.dumps(environment(), indent=2) + "\n")
    page = render_html([Source(out, "run", [load_run(out, report=report)])])
    return write_text_atomically(out / REPORT_HTML, page)


def write_html_report(paths: Sequence[str | Path], out: str | Path | None = None) -> Path:
    """The page for run and sweep folders; `out` defaults to FOLDER/report.html for one folder, else ./report.html."""
    if not paths:
        raise ConfigError("report: give at least one run or sweep folder")
    sources = [load_source(p) for p in paths]
    out = Path(out) if out else (Path(paths[0]) / REPORT_HTML if len(paths) == 1 else Path(REPORT_HTML))
    return write_text_atomically(out, render_html(sources))


def render_html(sources: Sequence[Source], title: str | None = None) -> str:
    runs = [run for source in sources for run in source.shown]
    labels = _labels(runs)
    title = title or ("embedtune report: " + ", ".join(str(s.path) for s in sources))
    body = [f"<h1>{e(title)}</h1>",
            f"<p class=meta>Rendered {e(time.strftime('%Y-%m-%d %H:%M:%S'))}. STS: Spearman x100 of cosine "
            "similarity (other task kinds: their main score); average ± population std over the tasks.</p>"]
    for source in sources:
        if source.kind == "sweep":
            body.append(_sweep_summary(source))
    body.append(_results_section(runs, labels))
    body.append(_plots_section(runs, labels))
    body += [_run_section(run, labels[id(run)], i) for i, run in enumerate(runs)]
    body.append(_environment_section(runs, labels))
    return PAGE.format(title=e(title), css=CSS, body="\n".join(body))


# ---- page parts -----------------------------------------------------------------------------------------------

def e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _labels(runs: Sequence[RunView]) -> dict[int, str]:
    """A distinct label per run: its name, or its path where two runs share a name."""
    names = [run.name for run in runs]
    return {id(run): run.name if names.count(run.name) == 1 else str(run.path) for run in runs}


def best_run(runs: Sequence[RunView]) -> RunView | None:
    """The trained run with the highest average: an averaged adapter is shown beside the runs, not ranked among
    them (on a page of its own, it is the one)."""
    done = [run for run in runs if run.tuned is not None]
    trained = [run for run in done if not run.averaged_from] or done
    return max(trained, key=lambda run: run.tuned["average"]) if trained else None


def baselines(runs: Sequence[RunView]) -> list[tuple[str, dict]]:
    """The distinct base-model evaluations among the runs, labelled by what tells them apart."""
    found: dict[str, dict] = {}
    for run in runs:
        if run.base and isinstance(run.base.get("tasks"), dict):
            key = json.dumps({k: run.base.get(k) for k in ("model", "pooling", "prompt", "tasks")}, sort_keys=True)
            found.setdefault(key, run.base)
    results = list(found.values())
    varying = [k for k in ("model", "pooling", "prompt") if len({json.dumps(r.get(k)) for r in results}) > 1]
    labelled = []
    for i, result in enumerate(results):
        detail = ", ".join(f"{k} {result.get(k)!r}" for k in varying)
        label = f"base model ({detail})" if detail else "base model"
        labelled.append((label if detail or len(results) == 1 else f"{label} #{i + 1}", result))
    return labelled


def task_columns(results: Sequence[dict]) -> list[str]:
    names = {name for result in results for name in result.get("tasks", {})}
    return [t for t in ALL_TASKS if t in names] + sorted(names - set(ALL_TASKS))


def task_score(result: dict | None, task: str) -> float | None:
    """A task's number: Spearman x100 for STS, the task's main score for other kinds (pairs: AP, retrieval:
    nDCG@10)."""
    entry = (result or {}).get("tasks", {}).get(task) or {}
    value = entry.get("spearman", entry.get("main_score"))
    return value if isinstance(value, (int, float)) else None


def _score(result: dict | None, task: str) -> str:
    value = task_score(result, task)
    return f"{value:.2f}" if value is not None else "–"


def _average(result: dict | None) -> str:
    if not result or not isinstance(result.get("average"), (int, float)):
        return "–"
    return f"{result['average']:.2f} ± {result['std']:.2f}"


def _seconds(value: float | None) -> str:
    if value is None:
        return "–"
    minutes, secs = divmod(round(value), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{value:.1f} s"


def _sweep_summary(source: Source) -> str:
    counts = {status: sum(run.status == status for run in source.runs)
              for status in ("done", "failed", "interrupted", "pending")}
    together = " (zipped: the i-th values of the zipped fields make one point)"
    grid = "".join(f"<li><code>{e(g.get('field'))}</code> = {', '.join(_value(v) for v in g.get('values', []))}"
                   f"{together if g.get('zip') else ''}</li>" for g in source.grid)
    state = ", ".join(f"{n} {status}" for status, n in counts.items() if n) or "no runs"
    if source.averaged and source.averaged.tuned:
        state += f"; their adapters averaged: {source.averaged.tuned['average']:.2f}"
    return (f"<section><h2>Sweep <code>{e(source.path)}</code></h2><p>{len(source.runs)} runs: {e(state)}.</p>"
            f"<ul>{grid}</ul></section>")


def _value(text: Any) -> str:
    return f"<code>{e(text)}</code>" if text != "" else "<code>''</code>"


def _results_section(runs: Sequence[RunView], labels: dict[int, str]) -> str:
    bases = baselines(runs)
    columns = task_columns([r for _, r in bases] + [run.tuned for run in runs if run.tuned])
    best = best_run(runs)
    head = "".join(f"<th>{e(DISPLAY_NAMES.get(t, t))}</th>" for t in columns)
    rows = [f"<tr class=base><td>{e(label)}</td><td>base</td>"
            + "".join(f"<td class=num>{_score(result, t)}</td>" for t in columns)
            + f"<td class=num>{_average(result)}</td><td class=num>–</td></tr>" for label, result in bases]
    for i, run in enumerate(runs):
        mark = " class=best" if run is best else ""
        rows.append(f"<tr{mark}><td><a href=\"#run-{i}\">{e(labels[id(run)])}</a></td>"
                    f"<td><span class=\"status {e(run.status)}\">{e(run.status)}</span></td>"
                    + "".join(f"<td class=num>{_score(run.tuned, t)}</td>" for t in columns)
                    + f"<td class=num>{_average(run.tuned)}</td>"
                    f"<td class=num>{_seconds(run.train_seconds if run.tuned else None)}</td></tr>")
    best_text = (f"<p class=best-run>Best run: <b>{e(labels[id(best)])}</b>, average {best.tuned['average']:.2f} "
                 f"± {best.tuned['std']:.2f}{_gain(best)}.</p>" if best else "<p>No run has finished.</p>")
    return (f"<section><h2>Results</h2>{best_text}<table class=results><thead><tr><th>run</th><th>status</th>{head}"
            f"<th>average ± std</th><th>training time</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
            "</section>")


def _gain(run: RunView) -> str:
    gain = run.report.get("gain") if run.report else None
    return f" ({gain:+.2f} over its base model)" if isinstance(gain, (int, float)) else ""


def _plots_section(runs: Sequence[RunView], labels: dict[int, str]) -> str:
    images = []
    curves = [(labels[id(run)], run.dev_curve) for run in runs if run.dev_curve]
    if len(curves) > 1 or (curves and len(runs) > 1):
        images.append(_img(dev_curves_png(curves), "STSBenchmark dev Spearman of every run against step"))
    bars = [(label, result["average"], "base") for label, result in baselines(runs)]
    best = best_run(runs)
    bars += [(labels[id(run)], run.tuned["average"], bar_kind(run, best)) for run in runs if run.tuned]
    if bars:
        images.append(_img(averages_png(bars), "average Spearman of the base model(s) and every finished run"))
    return f"<section><h2>Plots</h2>{''.join(images)}</section>" if images else ""


def bar_kind(run: RunView, best: RunView | None) -> str:
    return "best" if run is best else "average" if run.averaged_from else "run"


def _img(png: bytes, alt: str) -> str:
    return f"<figure><img alt=\"{e(alt)}\" src=\"data:image/png;base64,{base64.b64encode(png).decode()}\">" \
           f"<figcaption>{e(alt)}</figcaption></figure>"


def _run_section(run: RunView, label: str, index: int) -> str:
    parts = [f"<section class=run id=\"run-{index}\"><h2>{e(label)} <span class=\"status {e(run.status)}\">"
             f"{e(run.status)}</span></h2><p class=meta><code>{e(run.path)}</code></p>"]
    if run.error:
        parts.append(f"<pre class=error>{e(run.error)}</pre>")
    if run.overrides:
        parts.append("<p>Grid values: " + ", ".join(f"<code>{e(k)}</code> = {_value(v)}"
                                                    for k, v in run.overrides.items()) + "</p>")
    parts.append(_comparison(run))
    parts.append(_training_text(run))
    if run.data_report:
        rows = "".join(f"<tr><td>{e(str(k).replace('_', ' '))}</td><td class=num>{e(v)}</td></tr>"
                       for k, v in run.data_report.items())
        parts.append(f"<h3>Training data cleaning</h3><table class=kv><tbody>{rows}</tbody></table>")
    plots = [run.path / name for name in RUN_PLOTS if (run.path / name).is_file()]
    if plots:
        parts.append("<div class=plots>" + "".join(_img(p.read_bytes(), f"{label}: {p.stem.replace('_', ' ')}")
                                                   for p in plots) + "</div>")
    if run.config:
        parts.append(_config_table(run.config))
    parts.append("</section>")
    return "".join(parts)


def _comparison(run: RunView) -> str:
    if not run.base and not run.tuned:
        return "<p>No evaluation yet.</p>"
    columns = task_columns([r for r in (run.base, run.tuned) if r])
    rows = []
    for task in columns + ["average"]:
        base = task_score(run.base, task) if task != "average" else (run.base or {}).get("average")
        tuned = task_score(run.tuned, task) if task != "average" else (run.tuned or {}).get("average")
        gain = f"{tuned - base:+.2f}" if isinstance(base, (int, float)) and isinstance(tuned, (int, float)) else "–"
        name = "Average" if task == "average" else DISPLAY_NAMES.get(task, task)
        shown = (_average(run.base), _average(run.tuned)) if task == "average" else \
            (_score(run.base, task), _score(run.tuned, task))
        rows.append(f"<tr{' class=avg' if task == 'average' else ''}><td>{e(name)}</td><td class=num>{shown[0]}</td>"
                    f"<td class=num>{shown[1]}</td><td class=num>{gain}</td></tr>")
    model = (run.base or run.tuned or {}).get("model")
    prompt = (run.base or run.tuned or {}).get("prompt")
    return (f"<p>Model <code>{e(model)}</code>, pooling {e((run.base or run.tuned or {}).get('pooling'))}, prompt "
            f"{_value(prompt if prompt is not None else 'none')}.</p><table class=results><thead><tr><th>task</th>"
            f"<th>base</th><th>tuned</th><th>gain</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")


def _training_text(run: RunView) -> str:
    """Steps, loss and speed; which adapter was evaluated; the budget's plan. Numbers and escaped texts only."""
    steps = [ev for ev in run.events if "loss" in ev]
    lines = []
    if steps:
        tokens = sum(ev.get("tokens_per_s", 0) for ev in steps) / len(steps)
        skipped = sum("skipped" in ev for ev in run.events)
        lines.append(f"Training: {len(steps)} steps, final loss {steps[-1]['loss']:.4f}, mean {tokens:.0f} tokens/s, "
                     f"{_seconds(run.train_seconds)} in steps" + (f", {skipped} skipped" if skipped else "") + ".")
    selected = (run.report or {}).get("selected")
    if run.averaged_from:
        names = e(", ".join(run.averaged_from))
        scale = run.report.get("scale", 1.0)
        scaled = f" times {e(scale)}" if scale != 1 else ""
        lines.append(f"The adapters of {len(run.averaged_from)} runs averaged (<code>embedtune average-adapters"
                     f"</code>: one adapter whose update is the mean of theirs{scaled}): {names}; their training took "
                     f"{_seconds(run.train_seconds)} in steps together. Evaluated: "
                     f"<code>{e((selected or {}).get('adapter'))}</code>.")
    elif selected:
        dev = f", STSBenchmark dev {selected['dev_score']:.2f}" if selected.get("dev_score") is not None else ""
        lines.append(f"Evaluated: the {e(selected.get('by'))} adapter (step {e(selected.get('step'))}{dev}), "
                     f"<code>{e(selected.get('adapter'))}</code>.")
    plan = (run.report or {}).get("plan")
    if plan:
        lines.append(f"Plan: {e(plan.get('steps'))} steps, dev evaluation every {e(plan.get('eval_steps'))} steps, "
                     f"estimated {_seconds(plan.get('estimated_s'))}; the run took "
                     f"{_seconds(run.report.get('seconds'))}.")
    return "".join(f"<p>{line}</p>" for line in lines)


def _config_table(config: dict) -> str:
    """The fields that differ from the defaults (what this run chose), then every field in a fold."""
    defaults = Config().to_dict()
    rows, changed = [], []
    for section, values in config.items():
        for name, value in (values.items() if isinstance(values, dict) else []):
            row = f"<td><code>{e(section)}.{e(name)}</code></td><td><code>{e(json.dumps(value))}</code></td>"
            if defaults.get(section, {}).get(name, object()) != value:
                changed.append(f"<tr>{row}</tr>")
                row = f"<tr class=set>{row}</tr>"
            else:
                row = f"<tr>{row}</tr>"
            rows.append(row)
    return (f"<h3>Config: {len(changed)} fields differ from the defaults</h3><table class=kv><tbody>"
            f"{''.join(changed)}</tbody></table><details><summary>every field (those marked differ from the "
            f"defaults)</summary><table class=kv><tbody>{''.join(rows)}</tbody></table></details>")


def _environment_section(runs: Sequence[RunView], labels: dict[int, str]) -> str:
    groups: dict[str, list[str]] = {}
    shown: dict[str, dict] = {}
    for run in runs:
        if run.environment:
            key = json.dumps({k: run.environment.get(k) for k in ("versions", "hardware")}, sort_keys=True)
            groups.setdefault(key, []).append(labels[id(run)])
            shown.setdefault(key, run.environment)
    if not groups:
        return "<section><h2>Versions and hardware</h2><p>Not recorded (no environment.json).</p></section>"
    parts = ["<section><h2>Versions and hardware</h2>"]
    for key, names in groups.items():
        env = shown[key]
        versions = env.get("versions") or {}
        hardware = dict(env.get("hardware") or {})
        gpu_list = hardware.pop("gpus", None) or []
        rows = [(name, version if version is not None else "not installed") for name, version in versions.items()]
        rows += [(HARDWARE_LABELS.get(name, name.replace("_", " ")), value) for name, value in hardware.items()]
        rows.append(("GPU", "; ".join(f"{g.get('name')} ({g.get('memory_gib')} GiB)" for g in gpu_list) or "none"))
        who = "all runs" if len(groups) == 1 else ", ".join(names)
        parts.append(f"<p>{e(who)}:</p><table class=kv><tbody>"
                     + "".join(f"<tr><td>{e(k)}</td><td>{e(v)}</td></tr>" for k, v in rows) + "</tbody></table>")
    return "".join(parts) + "</section>"


# ---- plots ----------------------------------------------------------------------------------------------------

def _png(fig) -> bytes:
    plt = pyplot()
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def dev_curves_png(curves: Sequence[tuple[str, Sequence[tuple[int, float]]]]) -> bytes:
    """Every run's STSBenchmark dev curve on one axes."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4))
    for label, points in curves:
        ax.plot(*zip(*points, strict=True), marker="o", ms=3, lw=1.2, label=label)
    ax.set_xlabel("step"), ax.set_ylabel("STSBenchmark dev Spearman x100"), ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return _png(fig)


def averages_png(bars: Sequence[tuple[str, float, str]]) -> bytes:
    """Average Spearman as horizontal bars (labels can be long): base models grey, the best run orange, an
    averaged adapter green."""
    plt = pyplot()
    colours = {"base": "#9a9a9a", "run": "#4c78a8", "best": "#f58518", "average": "#54a24b"}
    fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.35 * len(bars)))
    names = [label for label, _, _ in bars][::-1]
    values = [value for _, value, _ in bars][::-1]
    ax.barh(names, values, color=[colours[kind] for _, _, kind in bars][::-1])
    for y, value in enumerate(values):
        ax.text(value, y, f" {value:.2f}", va="center", fontsize=8)
    ax.set_xlabel("average Spearman x100"), ax.grid(axis="x", alpha=0.3)
    ax.tick_params(axis="y", labelsize=8)
    ax.set_xlim(min(0.0, *values), max(values) * 1.12 if max(values) > 0 else 1.0)
    return _png(fig)


CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
h3 { font-size: 1em; }
table { border-collapse: collapse; margin: .6em 0; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.base td { color: #555; background: #fafafa; } tr.best td { background: #fff3e0; font-weight: 600; }
tr.avg td { font-weight: 600; } tr.set td { background: #eef6ff; }
.status { font-size: .8em; padding: .05em .45em; border-radius: .6em; background: #eee; }
.status.done { background: #d9f2d9; } .status.failed { background: #f8d0d0; }
.status.interrupted, .status.unfinished { background: #fdebc8; }
pre.error { background: #fff0f0; border: 1px solid #e0a0a0; padding: .6em; white-space: pre-wrap; }
.meta { color: #666; } figure { margin: .6em 0; display: inline-block; } img { max-width: 100%; }
figcaption { color: #666; font-size: .85em; } code { font-size: .92em; }
.plots figure { margin-right: 1em; } .plots img { max-width: 560px; }
"""

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{css}</style>
</head>
<body>
{body}
</body>
</html>
"""
