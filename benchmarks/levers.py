"""Each speed lever alone: seconds per training step and evaluation throughput, switched on one at a time.

    .venv/bin/python benchmarks/levers.py --data-dir ../shared/data [--steps 5] [--batch 32] [--paired-only]

Training (Gemma-3-270M, LoRA r 8 on q/k/v/o, batch of triplets, forward + backward per step):
  one model per variant, best of N steps after one warm-up:
  baseline    fp32 weights + bf16 autocast, whole contrastive batch as one padded chunk, torch dropout
  +chunks     padding-aware length-grouped chunks inside the contrastive batch
  +bf16       frozen weights stored in bf16 (no per-call weight casts)
  +dropout    cheaper LoRA dropout mask, shared by q/k/v
  then one model, the variants alternating step by step on the same batches (median and best of N rounds):
  +dropout    as above (the reference of this part)
  +math-attn  matmul + softmax attention instead of SDPA's flash kernel for short texts
  +packing    the batch's texts packed into one row, no padding (attention per group of texts)
  +fused      Gemma's RMSNorm and GeGLU as fused autograd functions, eager kernels
  +compiled   their pointwise kernels compiled by torch.compile (embedtune's default path = all levers)
Evaluation (3,000 unique STSBenchmark/SICK-R sentences): fp32, bf16 autocast, bf16 weights, + fused Gemma ops
(compiled kernels). `--paired-only`: the alternating training part alone.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from collections.abc import Iterator

import torch

from embedtune.config import Config, DataConfig
from embedtune.data.nli import load_triplets
from embedtune.data.sts import STS_TASKS, load_sts, resolve_data_dir
from embedtune.losses.infonce import InfoNCELoss
from embedtune.models import embedder as embedder_module
from embedtune.models import kernels
from embedtune.models.attention import training_attention
from embedtune.models.embedder import Embedder
from embedtune.models.fused import fuse_gemma, unfuse_gemma
from embedtune.models.lora import attach_lora, speed_up_lora
from embedtune.training.trainer import batch_rows, tokenize_triplets


def one_chunk(lengths, max_tokens, overhead_tokens=48, max_batch=256):
    return [sorted(range(len(lengths)), key=lambda i: -lengths[i])]


def train_step_seconds(model: str, triplets, batch: int, steps: int, chunks: bool, bf16_weights: bool,
                       fast_dropout: bool) -> float:
    embedder = Embedder(model, precision="fp32")
    unfuse_gemma(embedder.model)  # the fused ops are a lever of their own (paired_levers)
    if bf16_weights:
        embedder.model.to(torch.bfloat16)
    embedder.dtype = torch.bfloat16  # autocast in every variant
    embedder.model = attach_lora(embedder.model, Config().lora)
    if fast_dropout:
        speed_up_lora(embedder.model, under_autocast=True)
    embedder.model.train()
    data = tokenize_triplets(embedder, triplets)
    loss_fn = InfoNCELoss(embedder, packing=False)
    params = [p for p in embedder.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=5e-5)
    original = embedder_module.padding_aware_chunks
    if not chunks:
        embedder_module.padding_aware_chunks = one_chunk
    try:
        times = []
        for step in range(steps + 1):
            start = time.perf_counter()
            loss_fn(data.batch(batch_rows(step, len(data), batch, 0), True)).backward()
            optimizer.step()
            optimizer.zero_grad()
            times.append(time.perf_counter() - start)
    finally:
        embedder_module.padding_aware_chunks = original
    return min(times[1:])


@contextlib.contextmanager
def lever_state(embedder: Embedder, loss_fn: InfoNCELoss, level: int) -> Iterator[None]:
    """Levels: 0 +dropout, 1 +math-attn, 2 +packing, 3 +fused (eager kernels), 4 +compiled (compiled kernels)."""
    loss_fn.packing = level >= 2
    if level >= 3:
        fuse_gemma(embedder.model)
    previous = os.environ.get(kernels.ENV)
    os.environ[kernels.ENV] = "1" if level >= 4 else "0"  # read at each call
    try:
        with training_attention(embedder.model) if level >= 1 else contextlib.nullcontext():
            yield
    finally:
        unfuse_gemma(embedder.model)
        if previous is None:
            os.environ.pop(kernels.ENV)
        else:
            os.environ[kernels.ENV] = previous


def paired_levers(model: str, triplets, batch: int, rounds: int) -> None:
    embedder = Embedder(model, precision="bf16")
    unfuse_gemma(embedder.model)
    embedder.model = attach_lora(embedder.model, Config().lora)
    speed_up_lora(embedder.model, under_autocast=True)
    embedder.model.train()
    data = tokenize_triplets(embedder, triplets)
    loss_fn = InfoNCELoss(embedder)
    names = ["+dropout", "+math-attn", "+packing", "+fused", "+compiled"]
    times: dict[str, list[float]] = {name: [] for name in names}
    for step in range(rounds + 1):
        for level, name in enumerate(names):
            with lever_state(embedder, loss_fn, level):
                start = time.perf_counter()
                loss_fn(data.batch(batch_rows(step, len(data), batch, 0), True)).backward()
                embedder.model.zero_grad(set_to_none=True)
                if step:  # the first round warms up
                    times[name].append(time.perf_counter() - start)
    print(f"training, batch {batch}, one model, levers alternating step by step, {rounds} rounds")
    base = statistics.median(times[names[0]])
    for name in names:
        median = statistics.median(times[name])
        print(f"  {name:<10} {median:6.2f} s/step median  {min(times[name]):6.2f} best  x{base / median:.2f}",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--paired-only", action="store_true", help="only the levers alternating on one model")
    args = parser.parse_args()
    data_dir = resolve_data_dir(args.data_dir)
    triplets, _ = load_triplets(DataConfig(decontaminate=False), data_dir, None)
    triplets = triplets[: args.batch * (args.steps + 1)]
    if args.paired_only:
        paired_levers(args.model, triplets, args.batch, args.steps)
        return

    print(f"training, batch {args.batch}, best of {args.steps} steps")
    variants = [("baseline", False, False, False), ("+chunks", True, False, False), ("+bf16", True, True, False),
                ("+dropout", True, True, True)]
    base = None
    for name, chunks, bf16, dropout in variants:
        seconds = train_step_seconds(args.model, triplets, args.batch, args.steps, chunks, bf16, dropout)
        base = base or seconds
        print(f"  {name:<10} {seconds:6.2f} s/step  x{base / seconds:.2f}", flush=True)

    paired_levers(args.model, triplets, args.batch, args.steps)

    sentences = load_sts(STS_TASKS["stsbenchmark"], data_dir).sentences1 + load_sts(STS_TASKS["sickr"], data_dir).sentences1
    texts = list(dict.fromkeys(sentences))[:3000]
    print(f"evaluation, {len(texts)} unique sentences")
    base = None
    for name, precision, fused in (("fp32", "fp32", False), ("autocast", None, False), ("bf16", "bf16", False),
                                   ("+fused", "bf16", True)):
        embedder = Embedder(args.model, precision=precision or "fp32")
        if not fused:
            unfuse_gemma(embedder.model)
        if precision is None:
            embedder.dtype = torch.bfloat16  # autocast over fp32 weights
        embedder.encode(texts[:64])
        start = time.perf_counter()
        embedder.encode(texts)
        seconds = time.perf_counter() - start
        base = base or seconds
        print(f"  {name:<10} {seconds:6.1f} s  {len(texts) / seconds:6.0f} sentences/s  x{base / seconds:.2f}",
              flush=True)


if __name__ == "__main__":
    main()
