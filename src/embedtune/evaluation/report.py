"""Tables (Markdown) and plots (PNG) for evaluation results and training runs."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import embedtune.extras as extras
from embedtune.data.sts import ALL_TASKS

log = logging.getLogger(__name__)
DISPLAY_NAMES = {"sts12": "STS12", "sts13": "STS13", "sts14": "STS14", "sts15": "STS15", "sts16": "STS16",
                 "sts17": "STS17", "stsbenchmark": "STSBenchmark", "biosses": "BIOSSES", "sickr": "SICK-R"}


def _ordered(tasks: dict[str, Any]) -> list[str]:
    known = [t for t in ALL_TASKS if t in tasks]
    return known + [t for t in tasks if t not in known]


def eval_markdown(result: dict[str, Any]) -> str:
    """One evaluation as a Markdown table: a row per task, then average ± population std; other kinds than STS
    (pair classification, retrieval) follow, a table each."""
    settings = f"pooling: {result.get('pooling')}, prompt: {result.get('prompt')!r}, {result['seconds']:.1f} s"
    if not result["tasks"]:  # other kinds only
        return "\n".join([f"# Evaluation: {result['model']}", "", settings] + other_kinds_markdown(result)) + "\n"
    lines = [f"# STS evaluation: {result['model']}", "", "| task | Spearman x100 | pairs |", "|---|---:|---:|"]
    for name in _ordered(result["tasks"]):
        task = result["tasks"][name]
        lines.append(f"| {DISPLAY_NAMES.get(name, name)} | {task['spearman']:.2f} | {task['n']} |")
    lines.append(f"| **Average** | **{result['average']:.2f} ± {result['std']:.2f}** | |")
    lines += ["", f"{settings}, {result.get('sentences_per_s')} sentences/s"]
    return "\n".join(lines + other_kinds_markdown(result)) + "\n"


# Columns of the other kinds' tables: (JSON key, header); main score first.
KIND_COLUMNS = {
    "pair_classification": (("ap", "AP x100"), ("f1", "F1 x100"), ("accuracy", "accuracy x100"), ("n", "pairs")),
    "retrieval": (("ndcg@10", "nDCG@10"), ("recall@10", "recall@10"), ("recall@100", "recall@100"),
                  ("mrr@10", "MRR@10"), ("map@10", "MAP@10"), ("queries", "queries"), ("documents", "documents")),
}


def other_kinds_markdown(result: dict[str, Any]) -> list[str]:
    """A table per kind other than STS in the result (Markdown lines), each with its average main score."""
    lines: list[str] = []
    for kind, columns in KIND_COLUMNS.items():
        section = result.get(kind)
        if not section:
            continue
        lines += ["", f"## {kind.replace('_', ' ').capitalize()}", "",
                  "| task | " + " | ".join(h for _, h in columns) + " |", "|---|" + "---:|" * len(columns)]
        for name, task in section["tasks"].items():
            cells = [f"{task[k]:.2f}" if isinstance(task[k], float) else str(task[k]) for k, _ in columns]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append(f"| **Average** | **{section['average']:.2f}** |" + " |" * (len(columns) - 1))
    return lines


def comparison_markdown(base: dict[str, Any], tuned: dict[str, Any], title: str = "") -> str:
    """The paper's Table 2 layout: per task base -> tuned, then average ± std and the gain in points."""
    lines = [f"# {title or 'Contrastive fine-tuning: before and after'}", "",
             f"Model: `{base['model']}`", "", "| task | base | tuned | gain |", "|---|---:|---:|---:|"]
    for name in _ordered(tuned["tasks"]):
        b = base["tasks"].get(name, {}).get("spearman", float("nan"))
        t = tuned["tasks"][name]["spearman"]
        lines.append(f"| {DISPLAY_NAMES.get(name, name)} | {b:.2f} | {t:.2f} | {t - b:+.2f} |")
    gain = tuned["average"] - base["average"]
    lines.append(f"| **Average** | **{base['average']:.2f} ± {base['std']:.2f}** | "
                 f"**{tuned['average']:.2f} ± {tuned['std']:.2f}** | **{gain:+.2f}** |")
    return "\n".join(lines) + "\n"


def write_eval_outputs(result: dict[str, Any], output: str | Path) -> tuple[Path, Path]:
    """JSON where asked, and the Markdown table beside it (same name, .md)."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    markdown = output.with_suffix(".md")
    markdown.write_text(eval_markdown(result))
    return output, markdown


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


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
        fig.tight_layout(), fig.savefig(out_dir / "loss.png", dpi=120), plt.close(fig)
        written.append(out_dir / "loss.png")
    dev = [(e["step"], v) for e in events if "eval" in e for v in e["eval"].values()]
    if dev:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(*zip(*dev, strict=True), marker="o", lw=1)
        ax.set_xlabel("step"), ax.set_ylabel("STSBenchmark dev Spearman x100"), ax.grid(alpha=0.3)
        fig.tight_layout(), fig.savefig(out_dir / "dev_spearman.png", dpi=120), plt.close(fig)
        written.append(out_dir / "dev_spearman.png")
    return written
