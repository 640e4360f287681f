"""`embedtune run`: baseline nine-set evaluation, training, evaluation of the result, and a report in OUTPUT/.

Each stage writes its result before the next starts (base.json, final/, tuned.json), atomically and only once
the stage has finished, so a crash loses at most the stage in flight; with --resume a complete baseline is
reused and training continues from its newest complete checkpoint. report.json is written last and removed when a
run starts, so that it exists only for a run that finished.
The tuned evaluation runs on the adapter `train.select` names: `best` (OUTPUT/best, the step with the highest
STSBenchmark dev score, as best.json records) or `final` (OUTPUT/final); report.json says which under "selected".
"""
from __future__ import annotations

import gc
import json
import logging
import time
from pathlib import Path

from embedtune.config import Config, budget_seconds
from embedtune.distributed import check_launch, launched_ranks, same_on_every_rank
from embedtune.evaluation.html_report import write_run_page
from embedtune.evaluation.report import comparison_markdown, eval_markdown, read_metrics
from embedtune.evaluation.sts import STSEvaluator
from embedtune.files import write_text_atomically
from embedtune.models.backend import Backend
from embedtune.models.embedder import Embedder
from embedtune.models.lora import ADAPTER_CONFIG
from embedtune.training.budget import REPORT_S, TimeBudget, format_duration
from embedtune.training.callbacks import Callback, TrainState
from embedtune.training.metrics import METRICS
from embedtune.training.trainer import dev_evaluator, train

PLAN_FILE = "plan.json"
# A finished run's outputs: removed when a run starts, so that none of them is ever a previous run's.
RESULT_FILES = ("report.json", "report.md", "tuned.json", "tuned.md", "report.html", "environment.json")

log = logging.getLogger(__name__)


def run_experiment(config: Config, base: dict | None = None) -> dict:
    """The experiment in OUTPUT/. `base`: the base model's scores when the caller has them (a sweep scores the base
    model once for all its runs): written to OUTPUT/base.json and reused from there like a resumed run's."""
    started = time.perf_counter()
    out = Path(config.train.output_dir)
    # Under torchrun every rank runs this function (evaluations split across ranks, training on slices);
    # rank 0 alone writes into OUTPUT and prints.
    main = launched_ranks().is_main
    check_launch(config.train.batch_size)  # a world size that does not divide the batch fails before any work
    evaluator = evaluator_for(config)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        for name in RESULT_FILES + (() if config.train.resume else (PLAN_FILE,)):
            (out / name).unlink(missing_ok=True)
    backend = Backend.for_launch(config.model.device, config.eval.precision)

    base_path = out / "base.json"
    if base is not None and main:
        write_result(base, base_path)
    base = complete_result(base_path, evaluator) if (config.train.resume or base is not None) and main else None
    base = same_on_every_rank(base)[0]  # rank 0's answer: every rank then evaluates, or none
    if base is not None:
        log.info("reusing the baseline in %s", base_path)
    else:
        say("1/3 baseline evaluation")
        # The starting point: the base model, or base + the adapter that training continues from.
        base = evaluator(Embedder.from_config(config.model, backend=backend))
        if main:
            write_result(base, base_path)
    gc.collect()

    say("2/3 training")
    budget = time_budget(config, base, started)
    final = train(config, callbacks=[budget, PlanKeeper(budget, out / PLAN_FILE)] if main else [budget])
    plan = _keep_plan(budget, out / PLAN_FILE) if main else None
    gc.collect()

    selected, note = select_adapter(config.train.select, out, Path(final))
    if note:
        log.warning("%s", note)
    say(f"3/3 evaluation of the tuned model ({selected['by']} adapter, step {selected['step']})")
    tuned = evaluator(Embedder.from_config(config.model, adapter=selected["adapter"], backend=backend))
    report = {"base": base, "tuned": tuned, "gain": tuned["average"] - base["average"], "plan": plan,
              "seconds": round(time.perf_counter() - started, 1), "selected": selected}
    paths = {"report_md": str(out / "report.md"), "report_json": str(out / "report.json")}
    if not main:
        return {**report, "paths": paths}
    write_result(tuned, out / "tuned.json")

    plots = [p for p in (out / "loss.png", out / "dev_spearman.png") if p.is_file()]  # drawn by train()
    write_text_atomically(out / "report.md", _report_markdown(config, report, plots, out, note))
    write_run_page(out, report)  # report.html and environment.json
    write_text_atomically(out / "report.json", json.dumps(report, indent=2) + "\n")  # last: the run is done
    return {**report, "paths": paths}


def say(stage: str) -> None:
    """A stage line, once (rank 0) under torchrun."""
    if launched_ranks().is_main:
        print(stage, flush=True)


def write_result(result: dict, path: Path) -> None:
    """An evaluation's JSON and its Markdown table beside it, each atomically; the JSON last (it is what a
    resumed run looks for)."""
    write_text_atomically(path.with_suffix(".md"), eval_markdown(result))
    write_text_atomically(path, json.dumps(result, indent=2) + "\n")


def complete_result(path: Path, evaluator: STSEvaluator) -> dict | None:
    """The evaluation saved in `path` if it is complete and covers the evaluator's tasks, else None."""
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    tasks = {data.name for data in evaluator.datasets}
    if not isinstance(result, dict) or not isinstance(result.get("tasks"), dict) or set(result["tasks"]) != tasks or \
            not all(isinstance(result.get(key), (int, float)) for key in ("average", "std", "seconds")):
        log.warning("%s is incomplete or for other tasks; evaluating the baseline again", path)
        return None
    return result


class PlanKeeper(Callback):
    """Writes the budget's plan to plan.json as soon as it is made: a run killed later still reports it."""

    def __init__(self, budget: TimeBudget, path: Path):
        self.budget, self.path, self.written = budget, path, False

    def on_step_end(self, state: TrainState, event: dict) -> None:
        if self.budget.plan is not None and not self.written:
            write_text_atomically(self.path, json.dumps(self.budget.plan.as_dict(), indent=2) + "\n")
            self.written = True


def select_adapter(select: str, out: Path, final: Path) -> tuple[dict, str | None]:
    """The adapter to evaluate: {"adapter", "by", "step", "dev_score"}, and a note when `best` fell back to final.

    `best` is OUTPUT/best with the step and score best.json records; without a dev evaluation there is no best
    and the final adapter stands in. The final adapter's dev score is the evaluation at its step, if one ran.
    """
    events = read_metrics(out / METRICS)
    steps = [e["step"] for e in events if "loss" in e or "skipped" in e]  # a skipped step is still a step
    final_step = steps[-1] if steps else None
    dev = {e["step"]: sum(e["eval"].values()) / len(e["eval"]) for e in events if e.get("eval")}
    best_file = out / "best.json"
    best = json.loads(best_file.read_text()) if best_file.is_file() else {}
    note = None
    if select == "best":
        if best.get("score") is None:
            note = ("--select best: no dev evaluation ran (eval_steps 0, or none fitted the time budget), so there is "
                    "no best adapter; evaluating the final one")
        elif not (out / "best" / ADAPTER_CONFIG).is_file():
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
    budget_s = budget_seconds(config.train.time_budget)
    return TimeBudget(budget_s, started, final_eval_s=base["seconds"], dev_eval_s=dev_s,
                      eval_steps=config.train.eval_steps, report_s=REPORT_S)


def _keep_plan(budget: TimeBudget, path: Path) -> dict | None:
    """The plan made in this process, or the one a resumed run made before (plan.json)."""
    if budget.plan is not None:
        write_text_atomically(path, json.dumps(budget.plan.as_dict(), indent=2) + "\n")
        return budget.plan.as_dict()
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


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


def evaluator_for(config: Config) -> STSEvaluator:
    """The evaluation the config asks for: its tasks, read from its data folder, at its batch size."""
    return STSEvaluator.from_tasks(config.eval.tasks, config.data.data_dir, batch_size=config.eval.batch_size)


def evaluate_model(config: Config, evaluator: STSEvaluator, adapter: str | Path | None = None) -> dict:
    """The scores of the base model, or of base + `adapter`, as `run` computes them: for a caller that scores the
    base model once for several runs, or an adapter made outside a run (a sweep's averaged adapters)."""
    backend = Backend.for_launch(config.model.device, config.eval.precision)
    return evaluator(Embedder.from_config(config.model, adapter=str(adapter) if adapter else None, backend=backend))
