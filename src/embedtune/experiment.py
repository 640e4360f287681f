"""`embedtune run`: baseline nine-set evaluation, training, evaluation of the result, and a report in OUTPUT/.

Each stage writes its result before the next starts (base.json, final/, tuned.json), so a crash loses at most
the stage in flight; with --resume a finished baseline is reused and training continues from its checkpoint.
The tuned evaluation runs on the adapter `train.select` names: `best` (OUTPUT/best, the step with the highest
STSBenchmark dev score, as best.json records) or `final` (OUTPUT/final); report.json says which under "selected".
"""
from __future__ import annotations

import gc
import json
import logging
import time
from pathlib import Path

from embedtune.config import Config, parse_duration
from embedtune.evaluation.report import comparison_markdown, read_metrics, write_eval_outputs
from embedtune.evaluation.sts import STSEvaluator
from embedtune.files import write_text_atomically
from embedtune.models.embedder import Embedder
from embedtune.training.budget import TimeBudget, format_duration
from embedtune.training.metrics import METRICS
from embedtune.training.trainer import dev_evaluator, train

PLAN_FILE = "plan.json"

log = logging.getLogger(__name__)


def run_experiment(config: Config) -> dict:
    started = time.perf_counter()
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
    budget = time_budget(config, base, started)
    final = train(config, callbacks=[budget])
    plan = _keep_plan(budget, out / PLAN_FILE)
    gc.collect()

    selected, note = select_adapter(config.train.select, out, Path(final))
    if note:
        log.warning("%s", note)
    print(f"3/3 evaluation of the tuned model ({selected['by']} adapter, step {selected['step']})", flush=True)
    tuned = evaluator(Embedder.from_config(config.model, adapter=selected["adapter"],
                                           precision=config.eval.precision))
    write_eval_outputs(tuned, out / "tuned.json")

    report = {"base": base, "tuned": tuned, "gain": tuned["average"] - base["average"], "plan": plan,
              "seconds": round(time.perf_counter() - started, 1), "selected": selected}
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    plots = [p for p in (out / "loss.png", out / "dev_spearman.png") if p.is_file()]  # drawn by train()
    (out / "report.md").write_text(_report_markdown(config, report, plots, out, note))
    report["paths"] = {"report_md": str(out / "report.md"), "report_json": str(out / "report.json")}
    return report


def select_adapter(select: str, out: Path, final: Path) -> tuple[dict, str | None]:
    """The adapter to evaluate: {"adapter", "by", "step", "dev_score"}, and a note when `best` fell back to final.

    `best` is OUTPUT/best with the step and score best.json records; without a dev evaluation there is no best
    and the final adapter stands in. The final adapter's dev score is the evaluation at its step, if one ran.
    """
    events = read_metrics(out / METRICS)
    steps = [e["step"] for e in events if "loss" in e]
    final_step = steps[-1] if steps else None
    dev = {e["step"]: sum(e["eval"].values()) / len(e["eval"]) for e in events if e.get("eval")}
    best_file = out / "best.json"
    best = json.loads(best_file.read_text()) if best_file.is_file() else {}
    note = None
    if select == "best":
        if best.get("score") is None:
            note = ("--select best: no dev evaluation ran (eval_steps 0, or none fitted the time budget), so there is "
                    "no best adapter; evaluating the final one")
        elif not (out / "best" / "adapter_config.json").is_file():
            note = (f"--select best: best.json names step {best.get('step')} but {out / 'best'} holds no adapter; "
                    "evaluating the final one")
        else:
            return {"adapter": str(out / "best"), "by": "best", "step": best["step"], "dev_score": best["score"]}, None
    return {"adapter": str(final), "by": "final", "step": final_step, "dev_score": dev.get(final_step)}, note


def time_budget(config: Config, base: dict, started: float) -> TimeBudget:
    """The budget callback, with evaluation costs estimated from the timed baseline evaluation."""
    per_sentence = base["seconds"] / max(1, base.get("unique_sentences") or 1)
    dev = dev_evaluator(config)
    dev_s = per_sentence * len(dev.unique_sentences) if dev is not None else 0.0
    budget_s = parse_duration(config.train.time_budget) if config.train.time_budget else None
    return TimeBudget(budget_s, started, final_eval_s=base["seconds"], dev_eval_s=dev_s,
                      eval_steps=config.train.eval_steps)


def _keep_plan(budget: TimeBudget, path: Path) -> dict | None:
    """The plan made in this process, or the one a resumed run made before (plan.json)."""
    if budget.plan is not None:
        write_text_atomically(path, json.dumps(budget.plan.as_dict(), indent=2) + "\n")
        return budget.plan.as_dict()
    return json.loads(path.read_text()) if path.is_file() else None


def _report_markdown(config: Config, report: dict, plots: list[Path], out: Path, note: str | None = None) -> str:
    text = comparison_markdown(report["base"], report["tuned"], "Contrastive fine-tuning (paper Table 2 format)")
    selected = report["selected"]
    dev_score = f", STSBenchmark dev Spearman {selected['dev_score']:.2f}" if selected["dev_score"] is not None else ""
    text += (f"\nTuned model: the {selected['by']} adapter (step {selected['step']}{dev_score}), "
             f"`{selected['adapter']}`.\n")
    if note:
        text += f"\nNote: {note}.\n"
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
    plan = report.get("plan")
    if plan:
        budget = f" within a budget of {format_duration(plan['budget_s'])}" if plan.get("budget_s") else ""
        text += (f"\nPlan{budget}: {plan['steps']} steps, dev evaluation every {plan['eval_steps']} steps; "
                 f"estimated {format_duration(plan['estimated_s'])}, took {format_duration(report['seconds'])}."
                 + "".join(f" {n}." for n in plan.get("notes", [])) + "\n")
    data_report = out / "data_report.json"
    if data_report.is_file():
        counts = json.loads(data_report.read_text())
        text += "\nTraining data cleaning: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in counts.items()) + "\n"
    for plot in plots:
        text += f"\n![{plot.stem}]({plot.name})\n"
    return text
