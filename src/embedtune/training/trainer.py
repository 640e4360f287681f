"""The training loop: short and linear, read it top to bottom.

data -> embedder + LoRA -> InfoNCE -> AdamW + cosine schedule -> checkpoints, dev evaluation, metrics.jsonl.
"""
from __future__ import annotations

import json
import logging
import math
import resource
import signal
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from tqdm.auto import tqdm

from embedtune.config import Config
from embedtune.data.nli import Triplet, load_triplets
from embedtune.data.sts import STS_TASKS, load_sts, resolve_data_dir, resolve_tasks
from embedtune.errors import TrainingError, TrainingStopped
from embedtune.evaluation.report import plot_training
from embedtune.evaluation.sts import STSEvaluator
from embedtune.losses.gradcache import CachedInfoNCELoss
from embedtune.losses.infonce import InfoNCELoss, TripletBatch
from embedtune.models.attention import training_attention
from embedtune.models.embedder import Embedder
from embedtune.models.lora import attach_lora, speed_up_lora, trainable_parameters
from embedtune.training import checkpoint as ckpt

log = logging.getLogger(__name__)
METRICS = "metrics.jsonl"


@dataclass
class TokenizedTriplets:
    anchors: list[list[int]]
    positives: list[list[int]]
    negatives: list[list[int]]

    def batch(self, rows: list[int], hard_negatives: bool) -> TripletBatch:
        return TripletBatch([self.anchors[i] for i in rows], [self.positives[i] for i in rows],
                            [self.negatives[i] for i in rows] if hard_negatives else None)

    def __len__(self) -> int:
        return len(self.anchors)


def tokenize_triplets(embedder: Embedder, triplets: list[Triplet]) -> TokenizedTriplets:
    """Tokenise every text once up front, so that steps do no tokenizer work."""
    return TokenizedTriplets(embedder.tokenize([t.anchor for t in triplets]),
                             embedder.tokenize([t.positive for t in triplets]),
                             embedder.tokenize([t.negative for t in triplets]))


def batch_rows(step: int, n_rows: int, batch_size: int, seed: int) -> list[int]:
    """Rows of global step `step`: a fixed shuffle per epoch, so a resumed run sees the same batches."""
    per_epoch = n_rows // batch_size
    epoch, position = divmod(step, per_epoch)
    order = torch.randperm(n_rows, generator=torch.Generator().manual_seed(seed + epoch))
    return order[position * batch_size:(position + 1) * batch_size].tolist()


def total_steps(config: Config, n_rows: int) -> int:
    per_epoch = n_rows // config.train.batch_size
    if per_epoch == 0:
        raise TrainingError(f"{n_rows} training rows cannot fill one batch of {config.train.batch_size}")
    return config.train.max_steps or per_epoch * config.train.epochs


def cosine_with_warmup(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on `device`: CUDA kernels run asynchronously, so a step's wall time read without
    this leaves out the GPU still running its backward and optimiser step (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far, GiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 ** 3 if sys.platform == "darwin" else peak / 1024 ** 2


def non_embedding_parameters(model: torch.nn.Module) -> int:
    """Parameters that do work per token (the token-embedding table is a lookup)."""
    embedding = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding))
    return sum(p.numel() for p in model.parameters()) - embedding


@contextmanager
def stop_requests() -> Iterator[dict[str, bool]]:
    """SIGINT/SIGTERM set a flag; the loop saves a checkpoint and exits at the end of the step."""
    flag = {"stop": False}

    def handler(signum, frame):
        if flag["stop"]:  # a second signal: the user insists
            raise KeyboardInterrupt
        flag["stop"] = True
        log.warning("signal %s: saving a checkpoint after this step, then stopping", signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


class MetricsLog:
    """metrics.jsonl: one JSON object per event, appended and flushed so that a crash loses nothing."""

    def __init__(self, path: Path, resume_step: int | None):
        self.path = path
        if resume_step is None:
            path.write_text("")
        else:  # drop events from after the checkpoint we resume from: they will be logged again
            kept = [line for line in path.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= resume_step] if path.exists() else []
            path.write_text("".join(line + "\n" for line in kept))

    def write(self, event: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(event) + "\n")


def dev_evaluator(config: Config) -> STSEvaluator | None:
    if config.train.eval_steps == 0:
        return None
    data = load_sts(STS_TASKS["stsbenchmark"], resolve_data_dir(config.data.data_dir), split="dev")
    return STSEvaluator([data], batch_size=config.eval.batch_size, show_progress=False, name_suffix="-dev")


def eval_sentences(config: Config) -> set[str] | None:
    """Every sentence of the nine evaluation sets, for decontamination (None when they cannot be read)."""
    if not config.data.decontaminate:
        return None
    data_dir = resolve_data_dir(config.data.data_dir)
    sentences: set[str] = set()
    for task in resolve_tasks(None):
        data = load_sts(task, data_dir)
        sentences.update(data.sentences1, data.sentences2)
    return sentences


def mean_cosine(embedder: Embedder, ids: list[list[int]]) -> float:
    """Mean cosine between embeddings of different texts: near 1 means every text looks alike to the model."""
    with torch.no_grad():
        vectors = embedder.embed_ids(ids)
    cos = vectors @ vectors.T
    n = len(ids)
    return float((cos.sum() - cos.diagonal().sum()) / (n * (n - 1)))


def warn_if_anisotropic(embedder: Embedder, data: TokenizedTriplets, lr: float) -> None:
    """SmolLM2-135M's EOS states have mean cosine 0.93: InfoNCE starts at chance and LoRA at lr 5e-5 barely
    moves it (docs/RESULTS.md). Say so at the start instead of after an hour of flat loss."""
    similarity = mean_cosine(embedder, data.anchors[:32])
    log.warning("base model: mean cosine between unrelated training sentences %.3f", similarity)
    if similarity > 0.8 and lr < 2e-4:
        log.warning("embeddings are nearly parallel (mean cosine %.2f > 0.8): at lr %g training may stall near "
                    "chance; lr 2e-4 to 5e-4 trains such models (paper Table 4 found 5e-4 best for MiniCPM)",
                    similarity, lr)


def prepare_for_training(embedder: Embedder, config: Config) -> None:
    """LoRA on the base model, our faster dropout, train mode: the model every step sees (the Embedder has already
    fused Gemma's norms and GeGLU)."""
    embedder.model = attach_lora(embedder.model, config.lora)
    speed_up_lora(embedder.model, under_autocast=embedder.dtype != torch.float32)
    if config.train.gradient_checkpointing:
        # With frozen inputs, checkpointed blocks would see no tensor that needs grad and LoRA would get none.
        embedder.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        embedder.model.enable_input_require_grads()
    embedder.model.train()


def build_loss(config: Config, embedder: Embedder) -> InfoNCELoss:
    t = config.train
    # Packing swaps the attention function only during the forward call; checkpointed blocks recompute in
    # backward, outside it, so the two do not mix.
    options = dict(temperature=t.temperature, learnable_temperature=t.learnable_temperature,
                   hard_negatives=t.hard_negatives, chunk_tokens=t.chunk_tokens,
                   packing=t.packing and not t.gradient_checkpointing)
    if t.loss == "cached":
        return CachedInfoNCELoss(embedder, mini_batch_tokens=t.mini_batch_tokens, **options)
    return InfoNCELoss(embedder, **options)


def train(config: Config, embedder: Embedder | None = None) -> Path:
    """Train LoRA adapters contrastively; returns OUTPUT/final (the final adapter)."""
    t = config.train
    out = Path(t.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(t.seed)

    # Data first: bad files fail before the model loads.
    triplets, cleaning = load_triplets(config.data, resolve_data_dir(config.data.data_dir), eval_sentences(config))
    log.warning("training data: %s", cleaning.summary())
    (out / "data_report.json").write_text(json.dumps(cleaning.as_dict(), indent=2) + "\n")
    evaluator = dev_evaluator(config)
    (out / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")

    # Model: base + LoRA, a loss around it, and the optimiser over the trainable weights only.
    m = config.model
    embedder = embedder or Embedder(m.name, pooling=m.pooling, prompt=m.prompt, max_length=m.max_length,
                                    precision=t.precision, trust_remote_code=m.trust_remote_code)
    prepare_for_training(embedder, config)
    data = tokenize_triplets(embedder, triplets)
    warn_if_anisotropic(embedder, data, t.lr)
    loss_fn = build_loss(config, embedder)
    params = trainable_parameters(embedder.model) + trainable_parameters(loss_fn)
    params = list({id(p): p for p in params}.values())
    optimizer = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    steps = total_steps(config, len(data))
    scheduler = cosine_with_warmup(optimizer, int(t.warmup_ratio * steps), steps)
    flops_per_token = 4 * non_embedding_parameters(embedder.model)  # LoRA: forward 2N + input-grad backward 2N

    # Resume: adapter, optimiser, scheduler, RNG, step and best score from the newest checkpoint.
    step, best = 0, {"step": None, "score": None}
    latest = ckpt.latest_checkpoint(out) if t.resume else None
    if latest is not None:
        state = ckpt.load_checkpoint(latest, embedder.model)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        loss_fn.load_state_dict(state["loss"], strict=False)
        ckpt.set_rng_state(state["rng"])
        step, best = state["step"], state["best"]
        log.warning("resuming from %s (step %d)", latest, step)
    metrics = MetricsLog(out / METRICS, step if latest is not None else None)

    def save(at_step: int) -> Path:
        state = {"step": at_step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                 "loss": loss_fn.state_dict(), "rng": ckpt.rng_state(), "best": best}
        return ckpt.save_checkpoint(out, at_step, embedder.model, state, t.save_total_limit)

    bar = tqdm(total=steps, initial=step, desc="training", unit="step", dynamic_ncols=True)
    # training_attention: math attention for short texts (SDPA's CPU flash backward is slow on them).
    with stop_requests() as signals, training_attention(embedder.model):
        while step < steps:
            batch = data.batch(batch_rows(step, len(data), t.batch_size, t.seed), t.hard_negatives)
            started = time.perf_counter()
            loss = loss_fn(batch)
            if not torch.isfinite(loss):
                last = ckpt.latest_checkpoint(out)
                raise TrainingError(f"loss is {loss.item()} at step {step + 1}; stopped. Last good checkpoint: "
                                    f"{last or 'none'}. Try a lower --lr or --precision fp32.")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1

            synchronize(embedder.device)
            seconds = time.perf_counter() - started
            tokens_per_s = batch.n_tokens / seconds
            event = {"step": step, "loss": round(loss.item(), 6), "lr": scheduler.get_last_lr()[0],
                     "tokens_per_s": round(tokens_per_s, 1), "seconds": round(seconds, 3),
                     "gflops": round(flops_per_token * tokens_per_s / 1e9, 1), "peak_rss_gb": round(peak_rss_gb(), 3)}
            if t.learnable_temperature:
                event["temperature"] = round(loss_fn.temperature.item(), 5)
            metrics.write(event)
            bar.set_postfix(loss=f"{event['loss']:.4f}", tok_s=f"{tokens_per_s:.0f}")
            bar.update(1)

            if evaluator is not None and (step % t.eval_steps == 0 or step == steps):
                scores = {k: v["spearman"] for k, v in evaluator(embedder)["tasks"].items()}
                metrics.write({"step": step, "eval": scores})
                score = scores["stsbenchmark-dev"]
                bar.write(f"step {step}: STSBenchmark dev Spearman {score:.2f}")
                if best["score"] is None or score > best["score"]:
                    best = {"step": step, "score": score}
                    ckpt.save_adapter_atomically(embedder.model, out / "best")
            if step % t.save_steps == 0 or step == steps or signals["stop"]:
                save(step)
            if signals["stop"]:
                bar.close()
                raise TrainingStopped(f"stopped by signal at step {step}; checkpoint saved in "
                                      f"{out / ckpt.CHECKPOINTS}; continue with --resume")
    bar.close()

    final = ckpt.save_adapter_atomically(embedder.model, out / "final")
    (out / "best.json").write_text(json.dumps(best) + "\n")
    plot_training(out / METRICS, out)
    return final
