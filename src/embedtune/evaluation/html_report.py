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
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from embedtune.config import Config
from embedtune.errors import ConfigError
from embedtune.evaluation.report import (
    DISPLAY_NAMES,
    averages_png,
    dev_curves_png,
    dims_comparison,
    dims_png,
    plots_available,
    task_columns,
)
from embedtune.files import write_text_atomically
from embedtune.runs.layout import REPORT_HTML
from embedtune.runs.reading import RunView, Source, baselines, best_run, load_run, load_source
from embedtune.runs.records import Environment, EvalResult, RunReport

HARDWARE_LABELS = {"cpu": "CPU", "logical_cores": "logical cores", "physical_cores": "physical cores",
                   "memory_gib": "memory (GiB)"}


# ---- writing --------------------------------------------------------------------------------------------------

def write_run_page(out: Path, report: RunReport | dict) -> Path:
    """report.html of a finishing run (`run` calls it just before writing report.json, which it stands in for)."""
    report = report if isinstance(report, RunReport) else RunReport.from_dict(report)
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


def _score(result: EvalResult | None, task: str) -> str:
    value = result.score(task) if result else None
    return f"{value:.2f}" if value is not None else "–"


def _average(result: EvalResult | None) -> str:
    return f"{result.average:.2f} ± {result.std:.2f}" if result and result.has_average else "–"


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
    if source.averaged and source.averaged.tuned and source.averaged.tuned.has_average:
        state += f"; their adapters averaged: {source.averaged.tuned.average:.2f}"
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
    best_text = (f"<p class=best-run>Best run: <b>{e(labels[id(best)])}</b>, average {_average(best.tuned)}"
                 f"{_gain(best)}.</p>" if best else "<p>No run has finished.</p>")
    return (f"<section><h2>Results</h2>{best_text}<table class=results><thead><tr><th>run</th><th>status</th>{head}"
            f"<th>average ± std</th><th>training time</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
            "</section>")


def _gain(run: RunView) -> str:
    gain = run.report.gain if run.report else None
    return f" ({gain:+.2f} over its base model)" if isinstance(gain, (int, float)) else ""


def _plots_section(runs: Sequence[RunView], labels: dict[int, str]) -> str:
    if not plots_available():  # the core install draws none (matplotlib comes with the 'report' extra)
        return ""
    images = []
    curves = [(labels[id(run)], run.dev_curve) for run in runs if run.dev_curve]
    if len(curves) > 1 or (curves and len(runs) > 1):
        images.append(_img(dev_curves_png(curves), "STSBenchmark dev Spearman of every run against step"))
    bars = [(label, result.average, "base") for label, result in baselines(runs) if result.has_average]
    best = best_run(runs)
    bars += [(labels[id(run)], run.tuned.average, bar_kind(run, best)) for run in runs
             if run.tuned and run.tuned.has_average]
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
    parts.append(_dims_section(run, label))
    parts.append(_training_text(run))
    if run.data_report:
        rows = "".join(f"<tr><td>{e(str(k).replace('_', ' '))}</td><td class=num>{e(v)}</td></tr>"
                       for k, v in run.data_report.items())
        parts.append(f"<h3>Training data cleaning</h3><table class=kv><tbody>{rows}</tbody></table>")
    plots = run.plots()
    if plots:
        parts.append("<div class=plots>" + "".join(_img(png, f"{label}: {stem.replace('_', ' ')}")
                                                   for stem, png in plots) + "</div>")
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
        base, tuned = (_number(r, task) for r in (run.base, run.tuned))
        gain = f"{tuned - base:+.2f}" if isinstance(base, (int, float)) and isinstance(tuned, (int, float)) else "–"
        name = "Average" if task == "average" else DISPLAY_NAMES.get(task, task)
        shown = (_average(run.base), _average(run.tuned)) if task == "average" else \
            (_score(run.base, task), _score(run.tuned, task))
        rows.append(f"<tr{' class=avg' if task == 'average' else ''}><td>{e(name)}</td><td class=num>{shown[0]}</td>"
                    f"<td class=num>{shown[1]}</td><td class=num>{gain}</td></tr>")
    shown = run.base or run.tuned
    prompt = shown.prompt if shown.prompt is not None else "none"
    return (f"<p>Model <code>{e(shown.model)}</code>, pooling {e(shown.pooling)}, prompt {_value(prompt)}.</p>"
            f"{_computed(run)}<table class=results><thead><tr><th>task</th><th>base</th><th>tuned</th><th>gain</th>"
            f"</tr></thead><tbody>{''.join(rows)}</tbody></table>")


def _dims_section(run: RunView, label: str) -> str:
    """Average score against the truncated size, base and tuned (a table, and a plot with matplotlib); '' when
    neither evaluation scored a truncation."""
    base, tuned = run.base or EvalResult(), run.tuned or EvalResult()
    rows = dims_comparison(base, tuned)
    if not rows:
        return ""
    cells = "".join(f"<tr><td class=num>{dim}</td><td class=num>{_maybe(b)}</td><td class=num>{_maybe(t)}</td>"
                    f"<td class=num>{f'{t - b:+.2f}' if b is not None and t is not None else '–'}</td></tr>"
                    for dim, b, t in rows)
    table = (f"<h3>Average score by embedding size</h3><table class=results><thead><tr><th>size</th><th>base</th>"
             f"<th>tuned</th><th>gain</th></tr></thead><tbody>{cells}</tbody></table>")
    if not plots_available():
        return table
    series = [("base", base.dim_averages()), ("tuned", tuned.dim_averages())]
    return table + "<div class=plots>" + _img(dims_png(series), f"{label}: average score by embedding size") \
        + "</div>"


def _maybe(value: float | None) -> str:
    return f"{value:.2f}" if value is not None else "–"


def _number(result: EvalResult | None, task: str) -> float | None:
    if result is None:
        return None
    return result.score(task) if task != "average" else (result.average if result.has_average else None)


def _computed(run: RunView) -> str:
    """What the scores were computed with, and where a reused baseline came from."""
    described = {label: result.computed_with.describe() for label, result in (("base", run.base),
                                                                               ("tuned", run.tuned))
                 if result and result.computed_with}
    if len(described) == 2 and len(set(described.values())) == 1:
        described = {"base and tuned": described["base"]}
    lines = [f"{label}: computed with {e(text)}" for label, text in described.items()]
    reused = run.report.base.reused if run.report and run.report.base else None
    if reused:
        lines.append(f"base: reused from the {e(reused.source)} (<code>{e(reused.path)}</code>)")
    return f"<p class=meta>{'<br>'.join(lines)}</p>" if lines else ""


def _training_text(run: RunView) -> str:
    """Steps, loss and speed; which adapter was evaluated; the budget's plan. Numbers and escaped texts only."""
    steps = [ev for ev in run.events if "loss" in ev]
    lines = []
    if steps:
        tokens = sum(ev.get("tokens_per_s", 0) for ev in steps) / len(steps)
        skipped = sum("skipped" in ev for ev in run.events)
        lines.append(f"Training: {len(steps)} steps, final loss {steps[-1]['loss']:.4f}, mean {tokens:.0f} tokens/s, "
                     f"{_seconds(run.train_seconds)} in steps" + (f", {skipped} skipped" if skipped else "") + ".")
    report = run.report or RunReport()
    selected = report.selected
    if run.averaged_from:
        names = e(", ".join(run.averaged_from))
        scale = report.scale if report.scale is not None else 1.0
        scaled = f" times {e(scale)}" if scale != 1 else ""
        lines.append(f"The adapters of {len(run.averaged_from)} runs averaged (<code>embedtune average-adapters"
                     f"</code>: one adapter whose update is the mean of theirs{scaled}): {names}; their training took "
                     f"{_seconds(run.train_seconds)} in steps together. Evaluated: <code>{e(report.adapter)}</code>.")
    elif selected:
        dev = f", STSBenchmark dev {selected.dev_score:.2f}" if selected.dev_score is not None else ""
        lines.append(f"Evaluated: the {e(selected.by)} adapter (step {e(selected.step)}{dev}), "
                     f"<code>{e(selected.adapter)}</code>.")
    plan = report.plan
    if plan:
        lines.append(f"Plan: {e(plan.steps)} steps, dev evaluation every {e(plan.eval_steps)} steps, "
                     f"estimated {_seconds(plan.estimated_s)}; the run took {_seconds(report.seconds)}.")
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
    shown: dict[str, Environment] = {}
    for run in runs:
        if run.environment:
            key = run.environment.comparable()
            groups.setdefault(key, []).append(labels[id(run)])
            shown.setdefault(key, run.environment)
    if not groups:
        return "<section><h2>Versions and hardware</h2><p>Not recorded (no environment.json).</p></section>"
    parts = ["<section><h2>Versions and hardware</h2>"]
    for key, names in groups.items():
        env = shown[key]
        versions = env.versions or {}
        hardware = dict(env.hardware or {})
        gpu_list = hardware.pop("gpus", None) or []
        rows = [(name, version if version is not None else "not installed") for name, version in versions.items()]
        rows += [(HARDWARE_LABELS.get(name, name.replace("_", " ")), value) for name, value in hardware.items()]
        rows.append(("GPU", "; ".join(f"{g.get('name')} ({g.get('memory_gib')} GiB)" for g in gpu_list) or "none"))
        who = "all runs" if len(groups) == 1 else ", ".join(names)
        parts.append(f"<p>{e(who)}:</p><table class=kv><tbody>"
                     + "".join(f"<tr><td>{e(k)}</td><td>{e(v)}</td></tr>" for k, v in rows) + "</tbody></table>")
    return "".join(parts) + "</section>"


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
