"""A sweep's report, from the folders on disk: report.json (the table as data), report.md, the two plots and
report.html."""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from embedtune.evaluation.html_report import bar_kind, render_html
from embedtune.evaluation.report import DISPLAY_NAMES, averages_png, dev_curves_png, plots_available, task_columns
from embedtune.files import write_file_atomically, write_text_atomically
from embedtune.runs import layout
from embedtune.runs.reading import RunView, baselines, best_run, load_sweep
from embedtune.runs.records import EvalResult

STATUSES = ("done", "failed", "interrupted", "pending")


def write_sweep_report(out: Path) -> dict:
    """report.json (the table as data), report.md, the two plots and report.html, from the folders on disk."""
    source = load_sweep(out)
    runs = source.runs
    best = best_run(runs)
    averaged = source.averaged_state
    summary = {"runs": [_run_summary(run) for run in runs],
               "baselines": [{"label": label, **_scores(result)} for label, result in baselines(runs)],
               "best": best.name if best else None,
               "counts": {s: sum(r.status == s for r in runs) for s in STATUSES},
               "averaged": _averaged_summary(source.averaged, averaged) if averaged or source.averaged else None}
    plots = _write_plots(out, source.shown)
    write_text_atomically(out / layout.REPORT_MARKDOWN, sweep_markdown(source.path, source.shown, plots, averaged))
    write_text_atomically(out / layout.REPORT_HTML, render_html([source], f"embedtune sweep: {out}"))
    write_text_atomically(out / layout.REPORT_FILE, json.dumps(summary, indent=2) + "\n")
    names = (layout.REPORT_MARKDOWN, layout.REPORT_FILE, layout.REPORT_HTML)
    summary["paths"] = {name: str(out / name) for name in names}
    return summary


def _scores(result: EvalResult | None) -> dict:
    if not result:
        return {"average": None, "std": None, "tasks": {}}
    return {"average": result.average, "std": result.std, "tasks": {k: result.score(k) for k in result.tasks}}


def _averaged_summary(run: RunView | None, state: dict | None) -> dict:
    """The averaged adapter as report.json gives it: its scores beside the runs', the runs it averages, and its
    training time (theirs, summed); status and error from sweep.json when it was not made."""
    if run is None or run.report is None:
        return {"status": (state or {}).get("status", "pending"), "error": (state or {}).get("error"),
                **_scores(None)}
    scale = run.report.scale if run.report.scale is not None else 1.0
    return {"status": "done", "error": None, **_scores(run.tuned), "averaged_from": run.averaged_from,
            "train_seconds": run.train_seconds, "scale": scale, "adapter": run.report.adapter, "dir": str(run.path)}


def _run_summary(run: RunView) -> dict:
    return {"name": run.name, "status": run.status, "overrides": run.overrides, **_scores(run.tuned),
            "train_seconds": run.train_seconds if run.tuned else None, "error": run.error, "dir": str(run.path)}


def _write_plots(out: Path, runs: Sequence[RunView]) -> list[str]:
    """dev_curves.png and averages.png (none on the core install: matplotlib comes with the 'report' extra)."""
    if not plots_available():
        return []
    written = []
    curves = [(run.name, run.dev_curve) for run in runs if run.dev_curve]
    if curves:
        png = dev_curves_png(curves)
        write_file_atomically(out / layout.DEV_CURVES_PLOT, lambda f: f.write(png))
        written.append(layout.DEV_CURVES_PLOT)
    best = best_run(runs)
    bars = [(label, result.average, "base") for label, result in baselines(runs) if result.has_average]
    bars += [(run.name, run.tuned.average, bar_kind(run, best)) for run in runs if run.tuned and run.tuned.has_average]
    if bars:
        png = averages_png(bars)
        write_file_atomically(out / layout.AVERAGES_PLOT, lambda f: f.write(png))
        written.append(layout.AVERAGES_PLOT)
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
        lines.append(f"Best run: **{best.name}**, average {best.tuned.average:.2f} ± {best.tuned.std:.2f} "
                     "(Spearman x100, average ± population std over the sets).")
    soup = next((run for run in runs if run.averaged_from and run.report), None)
    if soup:
        scale = soup.report.scale if soup.report.scale is not None else 1.0
        scaled = f", the mean update times {scale:g}" if scale != 1 else ""
        lines.append(f"\n{soup.name}: the runs' adapters averaged into one ({soup.report.adapter}{scaled}); its "
                     "training time is theirs, summed.")
    elif averaged and averaged.get("error"):
        lines.append(f"\nNo averaged adapter: {averaged['status']}, {averaged['error']}.")
    for run in runs:
        if run.error:
            lines.append(f"\n{run.name} failed: {run.error}")
    lines += [f"\n![{Path(p).stem}]({p})" for p in plots]
    lines.append(f"\nEach run's own report: {out / layout.RUNS_DIR}/NAME/{layout.REPORT_MARKDOWN}; everything on one "
                 f"page: {layout.REPORT_HTML}.")
    return "\n".join(lines) + "\n"


def _markdown_row(label: str, status: str, result: EvalResult | None, columns: Sequence[str],
                  seconds: float | None) -> str:
    scores = [result.score(t) if result else None for t in columns]
    cells = [f"{value:.2f}" if value is not None else "–" for value in scores]
    average = f"{result.average:.2f} ± {result.std:.2f}" if result and result.has_average else "–"
    trained = f"{seconds:.1f} s" if seconds is not None else "–"
    label = label.replace("|", "\\|")  # a prompt in a base model's label may hold one
    return f"| {label} | {status} | " + " | ".join(cells) + f" | {average} | {trained} |"
