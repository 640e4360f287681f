"""`embedtune run`: baseline nine-set evaluation, training, evaluation of the result, and a report in OUTPUT/.

Each stage writes its result before the next starts (base.json, final/, tuned.json), atomically and only once
the stage has finished, so a crash loses at most the stage in flight; with --resume a complete baseline is
reused and training continues from its newest complete checkpoint. report.json is written last and removed when a
run starts, so that it exists only for a run that finished.
The base model's evaluation is also reused from the user's cache when the same model was scored before with the
same evaluation settings, data and precision (runs/baselines.py says what the key holds); `--no-cache` scores it
again. A budgeted run then has those minutes for training: the budget counts from the run's start.
The tuned evaluation runs on the adapter `train.select` names: `best` (OUTPUT/best, the step with the highest
STSBenchmark dev score, as best.json records) or `final` (OUTPUT/final); report.json says which under "selected".
Every file goes through embedtune.runs (the run folder's layout and records).
"""
from __future__ import annotations

import gc
import logging
import time
from pathlib import Path

from embedtune.config import Config, budget_seconds, evaluation_dims
from embedtune.distributed import check_launch, launched_ranks, same_on_every_rank
from embedtune.evaluation.html_report import write_run_page
from embedtune.evaluation.report import comparison_markdown, dims_comparison_markdown, eval_markdown, write_dims_plot
from embedtune.evaluation.sts import STSEvaluator
from embedtune.files import read_json_or, write_text_atomically
from embedtune.models.backend import Backend
from embedtune.models.embedder import Embedder
from embedtune.models.lora import ADAPTER_CONFIG
from embedtune.runs import layout
from embedtune.runs.baselines import BaselineFolder, baseline_key, data_fingerprint
from embedtune.runs.capture import capture_environment, computed_with
from embedtune.runs.reading import read_metrics
from embedtune.runs.records import EvalResult, Plan, Reuse, RunReport, Selected, load_complete
from embedtune.training.budget import REPORT_S, TimeBudget, format_duration
from embedtune.training.callbacks import Callback, TrainState
from embedtune.training.trainer import dev_evaluator, train

log = logging.getLogger(__name__)


def run_experiment(config: Config, base: EvalResult | dict | None = None) -> dict:
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
        for name in layout.RESULT_FILES + (() if config.train.resume else (layout.PLAN_FILE,)):
            (out / name).unlink(missing_ok=True)
    backend = Backend.for_launch(config.model.device, config.eval.precision)
    base = baseline(config, evaluator, backend, out, EvalResult.of(base) if base is not None else None)
    gc.collect()

    say("2/3 training")
    budget = time_budget(config, base, started)
    final = train(config, callbacks=[budget, PlanKeeper(budget, out / layout.PLAN_FILE)] if main else [budget])
    plan = _keep_plan(budget, out / layout.PLAN_FILE) if main else None
    gc.collect()

    selected, note = select_adapter(config.train.select, out, Path(final))
    if note:
        log.warning("%s", note)
    say(f"3/3 evaluation of the tuned model ({selected.by} adapter, step {selected.step})")
    tuned = score(evaluator, Embedder.from_config(config.model, adapter=selected.adapter, backend=backend), config)
    report = RunReport.of(base, tuned, plan=plan, seconds=round(time.perf_counter() - started, 1), selected=selected)
    paths = {"report_md": str(out / layout.REPORT_MARKDOWN), "report_json": str(out / layout.REPORT_FILE)}
    if not main:
        return {**report.to_dict(), "paths": paths}
    write_result(tuned, out / layout.TUNED_FILE)

    plots = [out / name for name in layout.RUN_PLOTS if (out / name).is_file()]  # drawn by train()
    plots += [p for p in [write_dims_plot(base, tuned, out / layout.DIMS_PLOT)] if p is not None]
    write_text_atomically(out / layout.REPORT_MARKDOWN, _report_markdown(config, report, plots, out, note))
    capture_environment().save(out / layout.ENVIRONMENT_FILE)
    write_run_page(out, report)
    report.save(out / layout.REPORT_FILE)  # last: the run is done
    return {**report.to_dict(), "paths": paths}


def baseline(config: Config, evaluator: STSEvaluator, backend: Backend, out: Path,
             given: EvalResult | None = None) -> EvalResult:
    """The base model's evaluation: the one a sweep `given`, a resumed run's base.json, the user's cache's, or
    scored now; OUTPUT/base.json holds it as it was made."""
    main, path = launched_ranks().is_main, out / layout.BASE_FILE
    tasks = task_names(evaluator)
    found, write = None, True
    dims = tuple(evaluator.dims)
    if main and given is not None and given.covers(tasks, dims):
        found = given
    elif main and config.train.resume:
        found = load_complete(path, tasks, dims)
        write = found is None
        if found is not None:
            log.info("reusing the baseline in %s", path)
    bases, key = Baselines(use_cache=config.eval.cache), ""
    if found is None:
        say("1/3 baseline evaluation")
        if main:
            key = bases.key_of(config, evaluator, backend)
            found = bases.find(key, tasks)
    found = same_on_every_rank(found)[0]  # rank 0's answer: every rank then evaluates, or none
    if found is None:
        # The starting point: the base model, or base + the adapter that training continues from.
        found = score(evaluator, Embedder.from_config(config.model, backend=backend), config)
        if main:
            bases.keep(key, found)
    if main and write:
        write_result(found.without_reuse(), path)
    return found


class Baselines:
    """The base model's evaluation per distinct setting (runs/baselines.py: model, evaluation settings, data and
    precision), looked up before it is scored: in a sweep's own folder (OUTPUT/baselines, always) and in the
    user's cache (unless --no-cache), then scored once and filed in both. `run` and `sweep` share it; in a sweep, a
    failure is kept and given to every run that shares the setting, without trying again."""

    def __init__(self, folder: Path | None = None, use_cache: bool = True):
        self.folders = [BaselineFolder(folder, "sweep")] if folder is not None else []
        self.cache, self.use_cache = BaselineFolder.user_cache(), use_cache
        self.failures: dict[str, BaseException] = {}

    @staticmethod
    def key(config: Config, data: str | None = None, backend: str | None = None) -> str:
        return baseline_key(config, data, backend)

    def key_of(self, config: Config, evaluator: STSEvaluator, backend: Backend) -> str:
        return baseline_key(config, data_fingerprint(evaluator.datasets), backend.name)

    def find(self, key: str, tasks: list[str]) -> EvalResult | None:
        """The evaluation filed under `key`, marked with where it was found (a sweep's folder first)."""
        for folder in self.folders + ([self.cache] if self.use_cache else []):
            result = folder.find(key, tasks)
            if result is not None:
                if folder.source == "cache":
                    print(f"reusing the base model's evaluation from the cache ({folder.file(key)}); --no-cache "
                          "scores it again", flush=True)
                    self.keep(key, result, cache=False)
                result.reused = Reuse(folder.source, str(folder.file(key)), key)
                return result
        return None

    def keep(self, key: str, result: EvalResult, cache: bool = True) -> None:
        """File a fresh evaluation in the sweep's folder and (even under --no-cache: it refreshes) the cache."""
        markdown = eval_markdown(result)
        for folder in self.folders + ([self.cache] if cache else []):
            folder.keep(key, result, markdown)
        if self.folders:
            result.reused = Reuse("sweep", str(self.folders[0].file(key)), key)

    def get(self, config: Config) -> EvalResult:
        """A sweep's baseline for a run's config: found, or scored in this process and filed."""
        setting = baseline_key(config)
        if setting in self.failures:
            raise self.failures[setting]
        try:
            evaluator = evaluator_for(config)
            backend = Backend.for_launch(config.model.device, config.eval.precision)
            key = self.key_of(config, evaluator, backend)
            result = self.find(key, task_names(evaluator))
            if result is None:
                print(f"baseline evaluation of {config.model.name} (prompt {config.model.prompt!r}), once for the "
                      "runs that share it", flush=True)
                result = score(evaluator, Embedder.from_config(config.model, backend=backend), config)
                self.keep(key, result)
        except Exception as err:
            self.failures[setting] = err
            raise
        finally:
            gc.collect()
        return result


def task_names(evaluator: STSEvaluator) -> list[str]:
    return [data.name for data in evaluator.datasets]


def score(evaluator: STSEvaluator, embedder: Embedder, config: Config) -> EvalResult:
    """The evaluator's scores of `embedder`, with what they were computed with."""
    result = EvalResult.of(evaluator(embedder))
    result.computed_with = computed_with(embedder.backend, config.eval.precision)
    return result


def say(stage: str) -> None:
    """A stage line, once (rank 0) under torchrun."""
    if launched_ranks().is_main:
        print(stage, flush=True)


def write_result(result: EvalResult, path: Path) -> None:
    """An evaluation's JSON and its Markdown table beside it, each atomically; the JSON last (it is what a
    resumed run looks for)."""
    write_text_atomically(layout.markdown_beside(path), eval_markdown(result))
    result.save(path)


class PlanKeeper(Callback):
    """Writes the budget's plan to plan.json as soon as it is made: a run killed later still reports it."""

    def __init__(self, budget: TimeBudget, path: Path):
        self.budget, self.path, self.written = budget, path, False

    def on_step_end(self, state: TrainState, event: dict) -> None:
        if self.budget.plan is not None and not self.written:
            self.budget.plan.save(self.path)
            self.written = True


def select_adapter(select: str, out: Path, final: Path) -> tuple[Selected, str | None]:
    """The adapter to evaluate, and a note when `best` fell back to final.

    `best` is OUTPUT/best with the step and score best.json records; without a dev evaluation there is no best
    and the final adapter stands in. The final adapter's dev score is the evaluation at its step, if one ran.
    """
    events = read_metrics(out / layout.METRICS_FILE)
    steps = [e["step"] for e in events if "loss" in e or "skipped" in e]  # a skipped step is still a step
    final_step = steps[-1] if steps else None
    dev = {e["step"]: sum(e["eval"].values()) / len(e["eval"]) for e in events if e.get("eval")}
    best = read_json_or(out / layout.BEST_FILE)
    best_dir = out / layout.BEST_DIR
    note = None
    if select == "best":
        if best.get("score") is None:
            note = ("--select best: no dev evaluation ran (eval_steps 0, or none fitted the time budget), so there is "
                    "no best adapter; evaluating the final one")
        elif not (best_dir / ADAPTER_CONFIG).is_file():
            note = (f"--select best: best.json names step {best.get('step')} but {best_dir} holds no adapter; "
                    "evaluating the final one")
        else:
            return Selected(str(best_dir), "best", best["step"], best["score"]), None
    return Selected(str(final), "final", final_step, dev.get(final_step)), note


def time_budget(config: Config, base: EvalResult, started: float) -> TimeBudget:
    """The budget callback, with evaluation costs estimated from the timed baseline evaluation (a reused one's time
    as it was measured; it cost this run nothing, so `started` leaves those minutes to training)."""
    per_sentence = base.seconds / max(1, base.unique_sentences or 1)
    dev = dev_evaluator(config)
    dev_s = per_sentence * len(dev.unique_sentences) if dev is not None else 0.0
    budget_s = budget_seconds(config.train.time_budget)
    return TimeBudget(budget_s, started, final_eval_s=base.seconds, dev_eval_s=dev_s,
                      eval_steps=config.train.eval_steps, report_s=REPORT_S)


def _keep_plan(budget: TimeBudget, path: Path) -> Plan | None:
    """The plan made in this process, or the one a resumed run made before (plan.json)."""
    if budget.plan is not None:
        budget.plan.save(path)
        return budget.plan
    return Plan.load(path)


def _report_markdown(config: Config, report: RunReport, plots: list[Path], out: Path, note: str | None = None) -> str:
    text = comparison_markdown(report.base, report.tuned, "Contrastive fine-tuning (paper Table 2 format)")
    selected = report.selected
    dev_score = f", STSBenchmark dev Spearman {selected.dev_score:.2f}" if selected.dev_score is not None else ""
    text += dims_comparison_markdown(report.base, report.tuned)
    text += f"\nTuned model: the {selected.by} adapter (step {selected.step}{dev_score}), `{selected.adapter}`.\n"
    if note:
        text += f"\nNote: {note}.\n"
    text += _baseline_markdown(report.base)
    events = read_metrics(out / layout.METRICS_FILE)
    steps = [e for e in events if "loss" in e]
    dev = [e for e in events if "eval" in e]
    text += "\nAverage ± population std over the tasks; gain in points of Spearman x100.\n"
    if report.tuned.computed_with:
        text += f"\nComputed with {report.tuned.computed_with.describe()}.\n"
    if steps:
        tps = sum(e["tokens_per_s"] for e in steps) / len(steps)
        text += (f"\nTraining: {len(steps)} steps at batch {config.train.batch_size}, lr {config.train.lr}, "
                 f"{config.train.precision}; final loss {steps[-1]['loss']:.4f}; mean {tps:.0f} real tokens/s; "
                 f"{sum(e['seconds'] for e in steps):.0f} s in steps.\n")
    if dev:
        text += "\n| step | STSBenchmark dev |\n|---:|---:|\n"
        text += "".join(f"| {e['step']} | {next(iter(e['eval'].values())):.2f} |\n" for e in dev)
    plan = report.plan
    if plan:
        budget = f" within a budget of {format_duration(plan.budget_s)}" if plan.budget_s else ""
        text += (f"\nPlan{budget}: {plan.steps} steps, dev evaluation every {plan.eval_steps} steps; "
                 f"estimated {format_duration(plan.estimated_s)}, took {format_duration(report.seconds)}."
                 + "".join(f" {n}." for n in plan.notes) + "\n")
    counts = read_json_or(out / layout.DATA_REPORT_FILE)
    if counts:
        text += "\nTraining data cleaning: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in counts.items()) + "\n"
    for plot in plots:
        text += f"\n![{plot.stem}]({plot.name})\n"
    return text


def _baseline_markdown(base: EvalResult) -> str:
    """Where the base model's scores came from, when this run did not compute them."""
    if base.reused is None:
        return ""
    if base.reused.source == "cache":
        took = f"; it took {format_duration(base.seconds)} when it was made" if base.seconds is not None else ""
        return (f"\nBaseline: reused the base model's evaluation from the cache (`{base.reused.path}`{took}); "
                "`--no-cache` scores it again.\n")
    return f"\nBaseline: scored once for the sweep's runs (`{base.reused.path}`).\n"


def evaluator_for(config: Config) -> STSEvaluator:
    """The evaluation the config asks for: its tasks, read from its data folder, at its batch size."""
    return STSEvaluator.from_tasks(config.eval.tasks, config.data.data_dir, batch_size=config.eval.batch_size,
                                   dims=tuple(evaluation_dims(config)))


def evaluate_model(config: Config, evaluator: STSEvaluator, adapter: str | Path | None = None) -> EvalResult:
    """The scores of the base model, or of base + `adapter`, as `run` computes them: for an adapter made outside a
    run (a sweep's averaged adapters)."""
    backend = Backend.for_launch(config.model.device, config.eval.precision)
    embedder = Embedder.from_config(config.model, adapter=str(adapter) if adapter else None, backend=backend)
    return score(evaluator, embedder, config)
