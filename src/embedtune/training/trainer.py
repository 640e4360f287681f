"""The training loop: short and linear, read it top to bottom.

data -> embedder + LoRA -> InfoNCE -> AdamW + warm-up and decay -> checkpoints, dev evaluation, metrics.jsonl.
Device, dtype and every speed path come from the embedder's backend (models/backend.py), decided once.
"""
from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch

from embedtune.config import Config
from embedtune.data.nli import evaluation_sentences, load_triplets
from embedtune.data.sampling import batch_rows, tokenize_triplets, total_steps
from embedtune.data.sts import STS_TASKS, resolve_data_dir, resolve_tasks
from embedtune.distributed import Ranks, agree, barrier, check_launch, join, mean_and_sum, same_on_every_rank
from embedtune.errors import StorageError, TrainingError, TrainingStopped
from embedtune.evaluation.diagnostics import warn_if_anisotropic
from embedtune.evaluation.report import plot_training
from embedtune.evaluation.sts import STSEvaluator
from embedtune.files import recover_folder, write_text_atomically
from embedtune.hooks import hook
from embedtune.losses import CachedInfoNCELoss, MatryoshkaObjective, build_loss
from embedtune.models.backend import Backend
from embedtune.models.embedder import Embedder
from embedtune.models.export_format import export_info
from embedtune.models.loading import check_adapter_weights
from embedtune.models.lora import prepare_for_training
from embedtune.progress import progress_bar
from embedtune.runs import layout
from embedtune.runs.records import EvalResult
from embedtune.training import checkpoint as ckpt
from embedtune.training.callbacks import Callback, TrainState
from embedtune.training.engine import Engine, check_engine_supports
from embedtune.training.guard import LossGuard
from embedtune.training.metrics import METRICS, MetricsLog, non_embedding_parameters, peak_rss_gb
from embedtune.training.optim import build_optimizer, stop_requests, warmup_then_decay

log = logging.getLogger(__name__)
__all__ = ["METRICS", "Callback", "TrainState", "dev_evaluator", "train"]


def dev_evaluator(config: Config) -> STSEvaluator | None:
    """STSBenchmark dev: picks the best checkpoint (its primary metric, the Spearman average)."""
    if config.train.eval_steps == 0:
        return None
    return STSEvaluator.from_tasks(["stsbenchmark"], config.data.data_dir, split="dev",
                                   batch_size=config.eval.batch_size, show_progress=False, name_suffix="-dev",
                                   across_ranks=False)


def blocked_sentences(config: Config) -> set[str] | None:
    """Sentences training must not see: every set the run evaluates on, and the dev split that picks the best."""
    if not config.data.decontaminate:
        return None
    data_dir = resolve_data_dir(config.data.data_dir)
    blocked = evaluation_sentences(data_dir, resolve_tasks(None))
    if config.train.eval_steps:
        blocked |= evaluation_sentences(data_dir, [STS_TASKS["stsbenchmark"]], splits=["dev"])
    return blocked


def train(config: Config, embedder: Embedder | None = None, callbacks: Sequence[Callback] = ()) -> Path:
    """Train LoRA adapters contrastively; returns OUTPUT/final (the final adapter).

    Under torchrun / accelerate launch every rank runs this same function on its slice of each global batch;
    rank 0 alone writes into OUTPUT (docs/DISTRIBUTED.md).
    """
    t = config.train
    # The launch as declared (a batch the world size does not divide fails here), then data: bad files fail
    # before any device work.
    ranks = check_launch(t.batch_size)
    check_engine_supports(ranks, t.eval_steps)
    out = prepare_output_dir(Path(t.output_dir)) if ranks.is_main else Path(t.output_dir)
    triplets, cleaning = load_triplets(config.data, resolve_data_dir(config.data.data_dir), blocked_sentences(config),
                                       t.hard_negatives)
    log.info("training data: %s", cleaning.summary())
    evaluator = dev_evaluator(config) if ranks.is_main else None
    if ranks.is_main:
        write_text_atomically(out / layout.DATA_REPORT_FILE, json.dumps(cleaning.as_dict(), indent=2) + "\n")
        write_text_atomically(out / layout.CONFIG_FILE, json.dumps(config.to_dict(), indent=2) + "\n")

    # Device, dtype and process group, decided once for the whole run.
    backend = embedder.backend if embedder is not None else Backend.for_launch(config.model.device, t.precision)
    ranks = join(backend.device)
    barrier()  # the other ranks read checkpoints only after rank 0 has put the folder right
    torch.manual_seed(t.seed)

    # Model: base + LoRA (or the given adapter, trained further), a loss around it, AdamW over the trainable weights.
    # Quantised layers cannot train: an int8 option in the config applies to the run's evaluations only.
    check_adapter_weights(config.model.adapter, config.model.allow_pickle)
    embedder = embedder or Embedder.from_config(replace(config.model, quantize=None), adapter="", backend=backend)
    prepare_for_training(embedder, config.lora, config.model.adapter, t.gradient_checkpointing)
    loss_fn = build_loss(config.train, embedder)  # first: it checks Matryoshka sizes against the model's width
    if isinstance(loss_fn.objective, MatryoshkaObjective):
        embedder.matryoshka_dims = loss_fn.objective.dims  # recorded with every saved adapter
    data = tokenize_triplets(embedder.tokenize, triplets, t.hard_negatives)
    warn_if_anisotropic(embedder, data.anchors[:32], t.lr)
    optimizer, params = build_optimizer(embedder.model, loss_fn, t.lr, t.weight_decay)
    engine = Engine.create(ranks, embedder, optimizer, t.batch_size)
    if isinstance(loss_fn, CachedInfoNCELoss):
        loss_fn.chunk_sync = engine.no_sync
    loss_params = [p for p in loss_fn.parameters() if p.requires_grad]
    state = TrainState(out, 0, total_steps(len(data), t.batch_size, t.epochs, t.max_steps), t.eval_steps, embedder,
                       loss_fn, engine.optimizer, adapter_settings=export_info(embedder, config.model, merged=False))
    scheduler = warmup_then_decay(optimizer, t.warmup_ratio, lambda: state.total_steps, t.schedule)
    guard = LossGuard(t.on_bad_loss, t.max_bad_steps, t.spike_factor)
    flops_per_token = 4 * non_embedding_parameters(embedder.model)  # LoRA: forward 2N + input-grad backward 2N
    resumed = resume(state, scheduler, guard, ranks) if t.resume else False
    metrics = MetricsLog(out / METRICS, state.step if resumed else None, enabled=ranks.is_main)

    def save(at_step: int) -> Path:
        saved = {"step": at_step, "total_steps": state.total_steps, "eval_steps": state.eval_steps,
                 "optimizer": engine.optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                 "loss": loss_fn.state_dict(), "rng": ckpt.rng_state(), "best": state.best,
                 "bad_loss": guard.state_dict(), "world_size": ranks.world_size}
        saved["rng_per_rank"] = same_on_every_rank(saved["rng"])  # each rank's dropout stream, for exact resume
        weights = engine.adapter_state()  # a collective where the engine shards the weights
        target = out / ckpt.CHECKPOINTS / f"step-{at_step:07d}"
        if ranks.is_main:
            target = ckpt.save_checkpoint(out, at_step, embedder.model, saved, t.save_total_limit, weights)
        barrier()  # a rank that stops next must not leave before the checkpoint exists
        return target

    callbacks = [*callbacks, *(hook("train-callbacks") or ())]  # the fault tests' (embedtune/hooks.py); else none
    for callback in callbacks:
        callback.on_train_start(state)
    bar = progress_bar(total=state.total_steps, initial=state.step, desc="training", unit="step",
                       dynamic_ncols=True, disable=not ranks.is_main)
    # The bar closes however the loop ends, so that an error prints on a line of its own.
    with stop_requests() as signals, embedder.backend.training_attention(embedder.model), storage_hint(out, state), bar:
        while state.step < state.total_steps:
            # This rank's share of exactly the rows one process would train on at this step.
            batch = data.batch(ranks.slice(batch_rows(state.step, len(data), t.batch_size, t.seed)))
            started = time.perf_counter()
            loss = loss_fn(batch)
            for callback in callbacks:
                loss = callback.on_loss(state, loss)
            step_loss, step_tokens = mean_and_sum(loss.item(), batch.n_tokens)  # the global batch's loss, tokens
            # A bad step (NaN/inf loss or gradient, a spike) changes no weight: stop, or skip its update.
            problem, grad_norm = guard.problem(step_loss), None
            if problem is None:
                engine.backward(loss, loss_params)
                grad_norm = engine.clip(params, t.max_grad_norm)
                problem = None if grad_norm is None or math.isfinite(grad_norm) else f"the gradient norm is {grad_norm}"
            if problem is None:
                engine.optimizer.step()
                loss_fn.clamp_temperature()
                guard.good(step_loss)
            else:
                guard.bad(problem, state.step + 1, ckpt.latest_checkpoint(out))
            scheduler.step()
            engine.optimizer.zero_grad(set_to_none=True)
            state.step += 1

            embedder.backend.synchronize()
            event = step_event(state.step, step_loss, problem, time.perf_counter() - started, step_tokens,
                               flops_per_token, scheduler.get_last_lr()[0], grad_norm)
            if t.learnable_temperature:
                event["temperature"] = round(loss_fn.temperature.item(), 5)
            metrics.write(event)
            for callback in callbacks:
                callback.on_step_end(state, event)
            # Ranks leave the loop together: a signal seen by any rank, and rank 0's run length (a callback
            # such as a time budget may resize it from rank 0's clock).
            stop, state.total_steps, state.eval_steps = agree(signals["stop"], state.total_steps, state.eval_steps)
            bar.total = state.total_steps
            if problem is None:  # no forced redraw: in a log that would be a line per step, not per half minute
                bar.set_postfix(loss=f"{event['loss']:.4f}", tok_s=f"{event['tokens_per_s']:.0f}", refresh=False)
            bar.update(1)

            last_step = state.step == state.total_steps
            if evaluator is not None and state.eval_steps and (state.step % state.eval_steps == 0 or last_step):
                evaluate_dev(evaluator, state, metrics, callbacks, bar.write)
            if state.step % t.save_steps == 0 or last_step or stop:
                save(state.step)
            if stop:
                raise TrainingStopped(f"stopped by signal at step {state.step}; checkpoint saved in "
                                      f"{out / ckpt.CHECKPOINTS}; continue with --resume")
            for callback in callbacks:
                callback.on_step_complete(state)
    if guard.skipped:
        log.warning("%d steps were skipped for a bad loss (metrics.jsonl marks them \"skipped\")", guard.skipped)

    weights = engine.adapter_state()
    if ranks.is_main:
        with storage_hint(out, state):
            final = ckpt.save_adapter_atomically(embedder.model, out / layout.FINAL_DIR, "final", weights,
                                                 state.adapter_settings)
            write_text_atomically(out / layout.BEST_FILE, json.dumps(state.best) + "\n")
        plot_training(out / METRICS, out)
    final = out / layout.FINAL_DIR
    barrier()  # every rank returns once the final adapter exists (run evaluates it next, on every rank)
    for callback in callbacks:
        callback.on_train_end(state, final)
    return final


def prepare_output_dir(out: Path) -> Path:
    """The output folder, with what a killed run left half-done put right."""
    out.mkdir(parents=True, exist_ok=True)
    # A folder a killed run had moved aside for its replacement, back in place.
    for name in (layout.FINAL_DIR, layout.BEST_DIR):
        recover_folder(out / name)
    for stale in ckpt.remove_stale_files(out):
        log.info("removed %s (left by an interrupted write)", stale)
    return out


def resume(state: TrainState, scheduler, guard: LossGuard, ranks: Ranks | None = None) -> bool:
    """Adapter, optimiser, scheduler, RNG, step, best score and bad-step counts from the newest complete checkpoint
    (a truncated or corrupt one is skipped, with a warning naming it); False when there is none.

    Every rank reads the same checkpoint (the output folder must be on a filesystem all ranks see); a checkpoint
    from another world size continues from its global data position, with the dropout streams reseeded.
    """
    ranks = ranks or Ranks()
    latest = ckpt.latest_checkpoint(state.output_dir)
    found = same_on_every_rank(latest.name if latest else None)
    if len(set(found)) > 1:
        raise TrainingError(f"ranks see different checkpoints in {state.output_dir / ckpt.CHECKPOINTS} "
                            f"({', '.join(map(str, found))}): the output folder must be shared by all ranks")
    if latest is None:
        log.info("no complete checkpoint in %s: training from the start", state.output_dir / ckpt.CHECKPOINTS)
        return False
    saved = ckpt.load_checkpoint(latest, state.embedder.model)
    state.optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    state.loss_fn.load_state_dict(saved["loss"], strict=False)
    ckpt.set_rng_state(resumed_rng(saved, ranks))
    state.step, state.best = saved["step"], saved["best"]
    state.total_steps = saved.get("total_steps", state.total_steps)
    state.eval_steps = saved.get("eval_steps", state.eval_steps)
    if "bad_loss" in saved:
        guard.load_state_dict(saved["bad_loss"])
    log.info("resuming from %s (step %d)", latest, state.step)
    return True


def resumed_rng(saved: dict, ranks: Ranks) -> dict:
    """This rank's saved RNG state; from another world size, a fresh stream per rank (the data order does not
    depend on it: batch_rows is a function of the global step)."""
    world = saved.get("world_size", 1)
    if world == ranks.world_size:
        return saved["rng_per_rank"][ranks.rank] if "rng_per_rank" in saved else saved["rng"]
    log.warning("the checkpoint was written by %d rank(s), this run has %d: continuing from its global data "
                "position (step %d); dropout masks will differ from an uninterrupted run", world, ranks.world_size,
                saved["step"])
    torch.manual_seed(saved["step"] * 1000 + ranks.rank)
    return ckpt.rng_state()


def step_event(step: int, loss: float, problem: str | None, seconds: float, n_tokens: int, flops_per_token: int,
               lr: float, grad_norm: float | None = None) -> dict:
    """One step's line in metrics.jsonl (loss and tokens of the global batch, the clipped-before gradient norm);
    a skipped step has no "loss", so loss curves pass over it."""
    if problem is not None:
        return {"step": step, "skipped": problem, "lr": lr, "seconds": round(seconds, 3)}
    tokens_per_s = n_tokens / seconds
    return {"step": step, "loss": round(loss, 6), "lr": lr, "grad_norm": grad_norm,
            "tokens_per_s": round(tokens_per_s, 1),
            "seconds": round(seconds, 3), "gflops": round(flops_per_token * tokens_per_s / 1e9, 1),
            "peak_rss_gb": round(peak_rss_gb(), 3)}


def evaluate_dev(evaluator: STSEvaluator, state: TrainState, metrics: MetricsLog, callbacks: Sequence[Callback],
                 say) -> None:
    """Dev evaluation by the evaluator's primary metric; a new best adapter is kept in OUTPUT/best."""
    result = evaluator(state.embedder)
    event = {"step": state.step, "eval": EvalResult.of(result).spearman()}
    metrics.write(event)
    score = evaluator.primary_score(result)
    say(f"step {state.step}: STSBenchmark dev Spearman {score:.2f}")
    if state.best["score"] is None or score > state.best["score"]:
        state.best = {"step": state.step, "score": score}
        ckpt.save_adapter_atomically(state.embedder.model, state.output_dir / layout.BEST_DIR, "best",
                                     settings=state.adapter_settings)
    for callback in callbacks:
        callback.on_evaluate(state, event)


@contextmanager
def storage_hint(out: Path, state: TrainState) -> Iterator[None]:
    """A write that failed for lack of room or permission: say where training stands and how to go on."""
    try:
        yield
    except StorageError as err:
        last = ckpt.latest_checkpoint(out)
        raise StorageError(f"{err}; training stopped at step {state.step}, last good checkpoint: {last or 'none'}; "
                           "make room and continue with --resume", err.errno, err.filename) from None
