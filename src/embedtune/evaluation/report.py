"""Tables (Markdown) and plots (PNG) for evaluation results and training runs."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from embedtune.data.sts import ALL_TASKS

DISPLAY_NAMES = {"sts12": "STS12", "sts13": "STS13", "sts14": "STS14", "sts15": "STS15", "sts16": "STS16",
                 "sts17": "STS17", "stsbenchmark": "STSBenchmark", "biosses": "BIOSSES", "sickr": "SICK-R"}


def _ordered(tasks: dict[str, Any]) -> list[str]:
    known = [t for t in ALL_TASKS if t in tasks]
    return known + [t for t in tasks if t not in known]


def eval_markdown(result: dict[str, Any]) -> str:
    """One evaluation as a Markdown table: a row per task, then average ± population std."""
    lines = [f"# STS evaluation: {result['model']}", "", "| task | Spearman x100 | pairs |", "|---|---:|---:|"]
    for name in _ordered(result["tasks"]):
        task = result["tasks"][name]
        lines.append(f"| {DISPLAY_NAMES.get(name, name)} | {task['spearman']:.2f} | {task['n']} |")
    lines.append(f"| **Average** | **{result['average']:.2f} ± {result['std']:.2f}** | |")
    lines += ["", f"pooling: {result.get('pooling')}, prompt: {result.get('prompt')!r}, "
                  f"{result['seconds']:.1f} s, {result.get('sentences_per_s')} sentences/s"]
    return "\n".join(lines) + "\n"


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


def plot_training(metrics_path: str | Path, out_dir: str | Path) -> list[Path]:
    """loss.png and dev_spearman.png against step, from metrics.jsonl."""
    import os

    from embedtune.models.loading import cache_dir

    # matplotlib's font cache goes to embedtune's cache, not ~/.cache and ~/.config: a run writes nothing else.
    os.environ.setdefault("MPLCONFIGDIR", str(cache_dir() / "matplotlib"))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
