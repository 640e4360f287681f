"""`embedtune run`: baseline nine-set evaluation, training, evaluation of the result, and a report in OUTPUT/.

Each stage writes its result before the next starts (base.json, final/, tuned.json), so a crash loses at most
the stage in flight; with --resume a finished baseline is reused and training continues from its checkpoint.
"""
from __future__ import annotations

import gc
import json
import logging
from pathlib import Path

from embedtune.config import Config
from embedtune.evaluation.report import comparison_markdown, read_metrics, write_eval_outputs
from embedtune.evaluation.sts import STSEvaluator
from embedtune.models.embedder import Embedder
from embedtune.training.metrics import METRICS
from embedtune.training.trainer import train

log = logging.getLogger(__name__)


def run_experiment(config: Config) -> dict:
    out = Path(config.train.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    evaluator = STSEvaluator.from_tasks(config.eval.tasks, config.data.data_dir, batch_size=config.eval.batch_size)

    base_path = out / "base.json"
    if config.train.resume and base_path.is_file():
        base = json.loads(base_path.read_text())
        log.info("reusing the baseline in %s", base_path)
    else:
        print("1/3 baseline evaluation", flush=True)
        # The starting point: the base model, or base + the adapter that training continues from.
        base = evaluator(Embedder.from_config(config.model, precision=config.eval.precision))
        write_eval_outputs(base, base_path)
    gc.collect()

    print("2/3 training", flush=True)
    final = train(config)
    gc.collect()

    print("3/3 evaluation of the tuned model", flush=True)
    tuned = evaluator(Embedder.from_config(config.model, adapter=str(final), precision=config.eval.precision))
    write_eval_outputs(tuned, out / "tuned.json")

    report = {"base": base, "tuned": tuned, "gain": tuned["average"] - base["average"]}
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    plots = [p for p in (out / "loss.png", out / "dev_spearman.png") if p.is_file()]  # drawn by train()
    (out / "report.md").write_text(_report_markdown(config, report, plots, out))
    report["paths"] = {"report_md": str(out / "report.md"), "report_json": str(out / "report.json")}
    return report


def _report_markdown(config: Config, report: dict, plots: list[Path], out: Path) -> str:
    text = comparison_markdown(report["base"], report["tuned"], "Contrastive fine-tuning (paper Table 2 format)")
    events = read_metrics(out / METRICS)
    steps = [e for e in events if "loss" in e]
    dev = [e for e in events if "eval" in e]
    text += "\nAverage ± population std over the tasks; gain in points of Spearman x100.\n"
    if steps:
        tps = sum(e["tokens_per_s"] for e in steps) / len(steps)
        text += (f"\nTraining: {len(steps)} steps at batch {config.train.batch_size}, lr {config.train.lr}, "
                 f"{config.train.precision}; final loss {steps[-1]['loss']:.4f}; mean {tps:.0f} real tokens/s; "
                 f"{sum(e['seconds'] for e in steps):.0f} s in steps.\n")
    if dev:
        text += "\n| step | STSBenchmark dev |\n|---:|---:|\n"
        text += "".join(f"| {e['step']} | {next(iter(e['eval'].values())):.2f} |\n" for e in dev)
    data_report = out / "data_report.json"
    if data_report.is_file():
        counts = json.loads(data_report.read_text())
        text += "\nTraining data cleaning: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in counts.items()) + "\n"
    for plot in plots:
        text += f"\n![{plot.stem}]({plot.name})\n"
    return text
