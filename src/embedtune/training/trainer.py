"""The training loop: short and linear, read it top to bottom.

data -> embedder + LoRA -> InfoNCE -> AdamW + cosine schedule -> checkpoints, dev evaluation, metrics.jsonl.
Device, dtype and every speed path come from the embedder's backend (models/backend.py), decided once.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from embedtune.config import Config
from embedtune.data.nli import evaluation_sentences, load_triplets
from embedtune.data.sampling import batch_rows, tokenize_triplets, total_steps
from embedtune.data.sts import STS_TASKS, resolve_data_dir, resolve_tasks
from embedtune.errors import TrainingError, TrainingStopped
from embedtune.evaluation.diagnostics import warn_if_anisotropic
from embedtune.evaluation.report import plot_training
from embedtune.evaluation.sts import STSEvaluator
from embedtune.losses import build_loss
from embedtune.models.embedder import Embedder
from embedtune.models.lora import prepare_for_training
from embedtune.training import checkpoint as ckpt
from embedtune.training.callbacks import Callback, TrainState
from embedtune.training.metrics import METRICS, MetricsLog, non_embedding_parameters, peak_rss_gb
from embedtune.training.optim import build_optimizer, cosine_with_warmup, stop_requests

log = logging.getLogger(__name__)
__all__ = ["METRICS", "Callback", "TrainState", "dev_evaluator", "train"]


def dev_evaluator(config: Config) -> STSEvaluator | None:
    """STSBenchmark dev: picks the best checkpoint (its primary metric, the Spearman average)."""
    if config.train.eval_steps == 0:
        return None
    return STSEvaluator.from_tasks(["stsbenchmark"], config.data.data_dir, split="dev",
                                   batch_size=config.eval.batch_size, show_progress=False, name_suffix="-dev")


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
    """Train LoRA adapters contrastively; returns OUTPUT/final (the final adapter)."""
    t = config.train
    out = Path(t.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(t.seed)

    # Data first: bad files fail before the model loads.
    triplets, cleaning = load_triplets(config.data, resolve_data_dir(config.data.data_dir), blocked_sentences(config),
                                       t.hard_negatives)
    log.info("training data: %s", cleaning.summary())
    (out / "data_report.json").write_text(json.dumps(cleaning.as_dict(), indent=2) + "\n")
    evaluator = dev_evaluator(config)
    (out / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")

    # Model: base + LoRA (or the given adapter, trained further), a loss around it, AdamW over the trainable weights.
    # Quantised layers cannot train: an int8 option in the config applies to the run's evaluations only.
    embedder = embedder or Embedder.from_config(replace(config.model, quantize=None), adapter="", precision=t.precision)
    prepare_for_training(embedder, config.lora, config.model.adapter, t.gradient_checkpointing)
    data = tokenize_triplets(embedder.tokenize, triplets, t.hard_negatives)
    warn_if_anisotropic(embedder, data.anchors[:32], t.lr)
    loss_fn = build_loss(config.train, embedder)
    optimizer, params = build_optimizer(embedder.model, loss_fn, t.lr, t.weight_decay)
    state = TrainState(out, 0, total_steps(len(data), t.batch_size, t.epochs, t.max_steps), t.eval_steps, embedder,
                       loss_fn, optimizer)
    scheduler = cosine_with_warmup(optimizer, t.warmup_ratio, lambda: state.total_steps)
    flops_per_token = 4 * non_embedding_parameters(embedder.model)  # LoRA: forward 2N + input-grad backward 2N

    # Resume: adapter, optimiser, scheduler, RNG, step and best score from the newest checkpoint.
    latest = ckpt.latest_checkpoint(out) if t.resume else None
    if latest is not None:
        saved = ckpt.load_checkpoint(latest, embedder.model)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        loss_fn.load_state_dict(saved["loss"], strict=False)
        ckpt.set_rng_state(saved["rng"])
        state.step, state.best = saved["step"], saved["best"]
        state.total_steps = saved.get("total_steps", state.total_steps)
        state.eval_steps = saved.get("eval_steps", state.eval_steps)
        log.info("resuming from %s (step %d)", latest, state.step)
    metrics = MetricsLog(out / METRICS, state.step if latest is not None else None)

    def save(at_step: int) -> Path:
        saved = {"step": at_step, "total_steps": state.total_steps, "eval_steps": state.eval_steps,
                 "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "loss": loss_fn.state_dict(),
                 "rng": ckpt.rng_state(), "best": state.best}
        return ckpt.save_checkpoint(out, at_step, embedder.model, saved, t.save_total_limit)

    for callback in callbacks:
        callback.on_train_start(state)
    bar = tqdm(total=state.total_steps, initial=state.step, desc="training", unit="step", dynamic_ncols=True)
    with stop_requests() as signals, embedder.backend.training_attention(embedder.model):
        while state.step < state.total_steps:
            batch = data.batch(batch_rows(state.step, len(data), t.batch_size, t.seed))
            started = time.perf_counter()
            loss = loss_fn(batch)
            if not torch.isfinite(loss):
                last = ckpt.latest_checkpoint(out)
                raise TrainingError(f"loss is {loss.item()} at step {state.step + 1}; stopped. Last good checkpoint: "
                                    f"{last or 'none'}. Try a lower --lr or --precision fp32.")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm)
            optimizer.step()
            loss_fn.clamp_temperature()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1

            embedder.backend.synchronize()
            seconds = time.perf_counter() - started
            tokens_per_s = batch.n_tokens / seconds
            event = {"step": state.step, "loss": round(loss.item(), 6), "lr": scheduler.get_last_lr()[0],
                     "tokens_per_s": round(tokens_per_s, 1), "seconds": round(seconds, 3),
                     "gflops": round(flops_per_token * tokens_per_s / 1e9, 1), "peak_rss_gb": round(peak_rss_gb(), 3)}
            if t.learnable_temperature:
                event["temperature"] = round(loss_fn.temperature.item(), 5)
            metrics.write(event)
            for callback in callbacks:
                callback.on_step_end(state, event)
            bar.total = state.total_steps  # a callback may have resized the run (e.g. a time budget)
            bar.set_postfix(loss=f"{event['loss']:.4f}", tok_s=f"{tokens_per_s:.0f}")
            bar.update(1)

            last_step = state.step == state.total_steps
            if evaluator is not None and state.eval_steps and (state.step % state.eval_steps == 0 or last_step):
                result = evaluator(embedder)
                event = {"step": state.step, "eval": {k: v["spearman"] for k, v in result["tasks"].items()}}
                metrics.write(event)
                score = evaluator.primary_score(result)
                bar.write(f"step {state.step}: STSBenchmark dev Spearman {score:.2f}")
                if state.best["score"] is None or score > state.best["score"]:
                    state.best = {"step": state.step, "score": score}
                    ckpt.save_adapter_atomically(embedder.model, out / "best")
                for callback in callbacks:
                    callback.on_evaluate(state, event)
            if state.step % t.save_steps == 0 or last_step or signals["stop"]:
                save(state.step)
            if signals["stop"]:
                bar.close()
                raise TrainingStopped(f"stopped by signal at step {state.step}; checkpoint saved in "
                                      f"{out / ckpt.CHECKPOINTS}; continue with --resume")
    bar.close()

    final = ckpt.save_adapter_atomically(embedder.model, out / "final")
    (out / "best.json").write_text(json.dumps(state.best) + "\n")
    plot_training(out / METRICS, out)
    for callback in callbacks:
        callback.on_train_end(state, final)
    return final
