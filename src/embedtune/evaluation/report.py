"""Tables (Markdown) and plots (PNG) for evaluation results and training runs: rendering only (the files come and
go through embedtune.runs)."""
from __future__ import annotations

import io
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import embedtune.extras as extras
from embedtune.data.sts import ALL_TASKS
from embedtune.files import write_text_atomically
from embedtune.runs.layout import DEV_PLOT, LOSS_PLOT, markdown_beside
from embedtune.runs.reading import read_metrics
from embedtune.runs.records import EvalResult

Result = EvalResult | Mapping[str, Any]  # a record, or a result as the evaluators return it

log = logging.getLogger(__name__)
DISPLAY_NAMES = {"sts12": "STS12", "sts13": "STS13", "sts14": "STS14", "sts15": "STS15", "sts16": "STS16",
                 "sts17": "STS17", "stsbenchmark": "STSBenchmark", "biosses": "BIOSSES", "sickr": "SICK-R"}


def _ordered(tasks: dict[str, Any]) -> list[str]:
    known = [t for t in ALL_TASKS if t in tasks]
    return known + [t for t in tasks if t not in known]


def eval_markdown(result: Result) -> str:
    """One evaluation as a Markdown table: a row per task, then average ± population std; other kinds than STS
    (pair classification, retrieval) follow, a table each; then what it was computed with."""
    result = EvalResult.of(result)
    settings = f"pooling: {result.pooling}, prompt: {result.prompt!r}, {result.seconds:.1f} s"
    computed = [f"Computed with {result.computed_with.describe()}."] if result.computed_with else []
    if not result.tasks:  # other kinds only
        lines = [f"# Evaluation: {result.model}", "", settings] + other_kinds_markdown(result)
        return "\n".join(lines + ([""] + computed if computed else [])) + "\n"
    lines = [f"# STS evaluation: {result.model}", "", "| task | Spearman x100 | pairs |", "|---|---:|---:|"]
    for name in _ordered(result.tasks):
        task = result.tasks[name]
        lines.append(f"| {DISPLAY_NAMES.get(name, name)} | {task['spearman']:.2f} | {task['n']} |")
    lines.append(f"| **Average** | **{result.average:.2f} ± {result.std:.2f}** | |")
    lines += ["", f"{settings}, {result.sentences_per_s} sentences/s"]
    lines += dims_markdown(result)
    return "\n".join(lines + other_kinds_markdown(result) + ([""] + computed if computed else [])) + "\n"


def dims_markdown(result: Result) -> list[str]:
    """The STS tasks scored on truncated, re-normalised vectors: a row per size (Markdown lines); none when the
    evaluation scored no truncation."""
    result = EvalResult.of(result)
    if not result.dim_averages():
        return []
    names = _ordered(result.tasks)
    lines = ["", "## Truncated vectors (Matryoshka): Spearman x100 by size", "",
             "| size | " + " | ".join(DISPLAY_NAMES.get(n, n) for n in names) + " | average |",
             "|---:|" + "---:|" * (len(names) + 1)]
    for dim in result.dim_averages():
        entry = result.dims[str(dim)]
        cells = [f"{entry['tasks'][n]['spearman']:.2f}" if n in entry.get("tasks", {}) else "–" for n in names]
        lines.append(f"| {dim} | " + " | ".join(cells) + f" | **{entry['average']:.2f} ± {entry['std']:.2f}** |")
    return lines


def dims_comparison(base: Result, tuned: Result) -> list[tuple[int, float | None, float | None]]:
    """(size, base average, tuned average) for every size either scored, increasing."""
    base, tuned = EvalResult.of(base), EvalResult.of(tuned)
    base_dims, tuned_dims = base.dim_averages(), tuned.dim_averages()
    return [(d, base_dims.get(d), tuned_dims.get(d)) for d in sorted(set(base_dims) | set(tuned_dims))]


def dims_comparison_markdown(base: Result, tuned: Result) -> str:
    """Average Spearman x100 against the truncated size, base and tuned; '' when neither scored a truncation."""
    rows = dims_comparison(base, tuned)
    if not rows:
        return ""
    lines = ["", "## Average score by embedding size (truncated, re-normalised)", "",
             "| size | base | tuned | gain |", "|---:|---:|---:|---:|"]
    for dim, b, t in rows:
        gain = f"{t - b:+.2f}" if b is not None and t is not None else "–"
        lines.append(f"| {dim} | {_maybe(b)} | {_maybe(t)} | {gain} |")
    return "\n".join(lines) + "\n"


def _maybe(value: float | None) -> str:
    return f"{value:.2f}" if value is not None else "–"


def dims_png(series: Sequence[tuple[str, Mapping[int, float]]]) -> bytes:
    """Average Spearman x100 against the truncated size (log2 axis), one line per model (e.g. base and tuned)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for label, points in series:
        if points:
            ax.plot(list(points), list(points.values()), marker="o", lw=1.2, label=label)
    ax.set_xscale("log", base=2)
    sizes = sorted({d for _, points in series for d in points})
    ax.set_xticks(sizes, [str(d) for d in sizes])
    ax.set_xlabel("embedding size (dimensions kept)"), ax.set_ylabel("average Spearman x100"), ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _png(fig)


def write_dims_plot(base: Result, tuned: Result, path: Path) -> Path | None:
    """dims.png of a run (base and tuned against size), when sizes were scored and matplotlib is installed."""
    series = [("base", EvalResult.of(base).dim_averages()), ("tuned", EvalResult.of(tuned).dim_averages())]
    if not any(points for _, points in series) or not plots_available():
        return None
    path.write_bytes(dims_png(series))
    return path


# Columns of the other kinds' tables: (JSON key, header); main score first.
KIND_COLUMNS = {
    "pair_classification": (("ap", "AP x100"), ("f1", "F1 x100"), ("accuracy", "accuracy x100"), ("n", "pairs")),
    "retrieval": (("ndcg@10", "nDCG@10"), ("recall@10", "recall@10"), ("recall@100", "recall@100"),
                  ("mrr@10", "MRR@10"), ("map@10", "MAP@10"), ("queries", "queries"), ("documents", "documents")),
}


def other_kinds_markdown(result: Result) -> list[str]:
    """A table per kind other than STS in the result (Markdown lines), each with its average main score."""
    result = EvalResult.of(result)
    lines: list[str] = []
    for kind, columns in KIND_COLUMNS.items():
        section = getattr(result, kind)
        if not section:
            continue
        lines += ["", f"## {kind.replace('_', ' ').capitalize()}", "",
                  "| task | " + " | ".join(h for _, h in columns) + " |", "|---|" + "---:|" * len(columns)]
        for name, task in section["tasks"].items():
            cells = [f"{task[k]:.2f}" if isinstance(task[k], float) else str(task[k]) for k, _ in columns]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append(f"| **Average** | **{section['average']:.2f}** |" + " |" * (len(columns) - 1))
    return lines


def comparison_markdown(base: Result, tuned: Result, title: str = "") -> str:
    """The paper's Table 2 layout: per task base -> tuned, then average ± std and the gain in points."""
    base, tuned = EvalResult.of(base), EvalResult.of(tuned)
    lines = [f"# {title or 'Contrastive fine-tuning: before and after'}", "",
             f"Model: `{base.model}`", "", "| task | base | tuned | gain |", "|---|---:|---:|---:|"]
    for name in _ordered(tuned.tasks):
        b = base.tasks.get(name, {}).get("spearman", float("nan"))
        t = tuned.tasks[name]["spearman"]
        lines.append(f"| {DISPLAY_NAMES.get(name, name)} | {b:.2f} | {t:.2f} | {t - b:+.2f} |")
    gain = tuned.average - base.average
    lines.append(f"| **Average** | **{base.average:.2f} ± {base.std:.2f}** | "
                 f"**{tuned.average:.2f} ± {tuned.std:.2f}** | **{gain:+.2f}** |")
    return "\n".join(lines) + "\n"


def write_eval_outputs(result: Result, output: str | Path) -> tuple[Path, Path]:
    """JSON where asked, and the Markdown table beside it (same name, .md), each atomically; the JSON last (it is
    what a resumed run looks for)."""
    result = EvalResult.of(result)
    markdown = write_text_atomically(markdown_beside(Path(output)), eval_markdown(result))
    return result.save(output), markdown


def task_columns(results: Sequence[EvalResult]) -> list[str]:
    """The tasks of a table over several results: the nine sets in the paper's order, then the others by name."""
    names = {name for result in results for name in result.tasks}
    return [t for t in ALL_TASKS if t in names] + sorted(names - set(ALL_TASKS))


def pyplot():
    """matplotlib.pyplot, headless (Agg). Its font cache goes where MPLCONFIGDIR says: embedtune's cache under the
    `embedtune` command (runtime.configure_process), matplotlib's own place for a Python user who did not ask."""
    matplotlib = extras.load("matplotlib", "report", "plots")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_training(metrics_path: str | Path, out_dir: str | Path) -> list[Path]:
    """loss.png and dev_spearman.png against step, from metrics.jsonl; none without the report extra (matplotlib),
    which a run on the core install goes without, saying so once."""
    if not extras.available("report"):
        log.warning("no plots: they need the 'report' extra (matplotlib): pip install 'embedtune[report]'")
        return []
    plt = pyplot()
    events = read_metrics(metrics_path)
    out_dir = Path(out_dir)
    written = []
    train = [(e["step"], e["loss"]) for e in events if "loss" in e]
    if train:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(*zip(*train, strict=True), lw=1, label="training loss")
        ax.set_xlabel("step"), ax.set_ylabel("InfoNCE loss"), ax.grid(alpha=0.3)
        fig.tight_layout(), fig.savefig(out_dir / LOSS_PLOT, dpi=120), plt.close(fig)
        written.append(out_dir / LOSS_PLOT)
    dev = [(e["step"], v) for e in events if "eval" in e for v in e["eval"].values()]
    if dev:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(*zip(*dev, strict=True), marker="o", lw=1)
        ax.set_xlabel("step"), ax.set_ylabel("STSBenchmark dev Spearman x100"), ax.grid(alpha=0.3)
        fig.tight_layout(), fig.savefig(out_dir / DEV_PLOT, dpi=120), plt.close(fig)
        written.append(out_dir / DEV_PLOT)
    return written


def plots_available() -> bool:
    """Whether plots can be drawn: matplotlib comes with the 'report' extra."""
    return extras.available("report")


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
