"""Each speed lever alone: seconds per training step and evaluation throughput, switched on one at a time.

    .venv/bin/python -m benchmarks.levers --data-dir ../shared/data [--steps 5] [--batch 32] [--paired-only]

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

Each lever is a field of the embedder's `Backend` (models/backend.py: fuse_gemma, compile_kernels,
short_text_attention, shared_dropout, dtype) or an argument of the call that applies it (`fuse_gemma`,
`speed_up_lora`, the loss's `packing`); the one-chunk baseline is the loss embedding the whole batch as one
padded batch (`Embedder.embed_batch`). Nothing is patched and no environment variable is read.
"""
from __future__ import annotations

if not __package__:  # started as a file (python benchmarks/X.py): re-run as python -m benchmarks.X
    import _bootstrap  # noqa: F401

import argparse
import contextlib
import dataclasses
import statistics
import time
from collections.abc import Iterator

import torch

from benchmarks import harness
from embedtune.config import LoraConfig
from embedtune.data.sampling import batch_rows, tokenize_triplets
from embedtune.data.sts import STS_TASKS, load_sts, resolve_data_dir
from embedtune.losses.infonce import InfoNCELoss
from embedtune.models.backend import Backend
from embedtune.models.embedder import Embedder
from embedtune.models.fused import fuse_gemma, unfuse_gemma
from embedtune.models.lora import attach_lora, prepare_for_training, speed_up_lora


class OneChunkInfoNCELoss(InfoNCELoss):
    """The baseline's loss: the batch's distinct texts as one padded batch (every text padded to the longest)."""

    def embed_unique(self, unique: list[list[int]]) -> torch.Tensor:
        return self.embedder.embed_batch(self.embedder.pad(unique))


def plain_backend(device: str, precision: str) -> Backend:
    """The device's backend with every lever off: transformers' own Gemma ops and SDPA, torch's dropout."""
    return dataclasses.replace(Backend.for_device(device, precision), fuse_gemma=False, compile_kernels=False,
                               short_text_attention=False, shared_dropout=False)


def autocast_over_fp32(embedder: Embedder) -> Embedder:
    """fp32 weights, bf16 autocast: the Embedder stores weights in its backend's dtype at load, so it loads in
    fp32 and its backend's compute dtype is switched afterwards (every forward reads embedder.backend)."""
    embedder.backend = dataclasses.replace(embedder.backend, dtype=torch.bfloat16)
    embedder.dtype = torch.bfloat16
    return embedder


def train_step_seconds(model: str, triplets, batch: int, steps: int, chunks: bool, bf16_weights: bool,
                       fast_dropout: bool, device: str = "auto") -> float:
    if bf16_weights:
        embedder = Embedder(model, backend=plain_backend(device, "bf16"))
    else:
        embedder = autocast_over_fp32(Embedder(model, backend=plain_backend(device, "fp32")))
    embedder.model = attach_lora(embedder.model, LoraConfig())
    if fast_dropout:
        speed_up_lora(embedder.model, under_autocast=True, shared_dropout=True)
    embedder.model.train()
    data = tokenize_triplets(embedder.tokenize, triplets)
    loss_fn = (InfoNCELoss if chunks else OneChunkInfoNCELoss)(embedder, packing=False)
    params = [p for p in embedder.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=5e-5)
    times = []
    for step in range(steps + 1):
        start = time.perf_counter()
        loss_fn(data.batch(batch_rows(step, len(data), batch, 0))).backward()
        optimizer.step()
        optimizer.zero_grad()
        embedder.backend.synchronize()
        times.append(time.perf_counter() - start)
    return min(times[1:])


@contextlib.contextmanager
def lever_state(embedder: Embedder, loss_fn: InfoNCELoss, level: int) -> Iterator[None]:
    """Levels: 0 +dropout, 1 +math-attn, 2 +packing, 3 +fused (eager kernels), 4 +compiled (compiled kernels)."""
    loss_fn.packing = level >= 2
    if level >= 3:
        fuse_gemma(embedder.model, compile_kernels=level >= 4)
    backend = dataclasses.replace(embedder.backend, short_text_attention=level >= 1)
    try:
        with backend.training_attention(embedder.model):
            yield
    finally:
        unfuse_gemma(embedder.model)


def paired_levers(model: str, triplets, batch: int, rounds: int, device: str = "auto") -> None:
    backend = dataclasses.replace(plain_backend(device, "bf16"), shared_dropout=True)
    embedder = Embedder(model, backend=backend)
    prepare_for_training(embedder, LoraConfig())  # LoRA, the shared dropout mask, bf16 inputs kept bf16
    data = tokenize_triplets(embedder.tokenize, triplets)
    loss_fn = InfoNCELoss(embedder)
    names = ["+dropout", "+math-attn", "+packing", "+fused", "+compiled"]
    times: dict[str, list[float]] = {name: [] for name in names}
    for step in range(rounds + 1):
        for level, name in enumerate(names):
            with lever_state(embedder, loss_fn, level):
                start = time.perf_counter()
                loss_fn(data.batch(batch_rows(step, len(data), batch, 0))).backward()
                embedder.model.zero_grad(set_to_none=True)
                embedder.backend.synchronize()
                if step:  # the first round warms up
                    times[name].append(time.perf_counter() - start)
    print(f"training, batch {batch}, one model, levers alternating step by step, {rounds} rounds")
    base = statistics.median(times[names[0]])
    for name in names:
        median = statistics.median(times[name])
        print(f"  {name:<10} {median:6.2f} s/step median  {min(times[name]):6.2f} best  x{base / median:.2f}",
              flush=True)


def evaluation_embedder(model: str, variant: str, device: str) -> Embedder:
    """fp32; autocast (fp32 weights, bf16 compute); bf16 (weights too); +fused (the device's default backend in
    bf16: fused Gemma ops, compiled kernels where it compiles)."""
    if variant == "fp32":
        return Embedder(model, backend=plain_backend(device, "fp32"))
    if variant == "autocast":
        return autocast_over_fp32(Embedder(model, backend=plain_backend(device, "fp32")))
    if variant == "bf16":
        return Embedder(model, backend=plain_backend(device, "bf16"))
    return Embedder(model, backend=Backend.for_device(device, "bf16"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.add_common_options(parser, device="auto", device_help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--paired-only", action="store_true", help="only the levers alternating on one model")
    parser.add_argument("--eval-texts", type=int, default=3000, help="unique sentences timed in the evaluation part")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    data_dir = resolve_data_dir(args.data_dir)
    triplets = harness.shared_triplets(data_dir, args.batch * (args.steps + 1))
    if args.paired_only:
        paired_levers(args.model, triplets, args.batch, args.steps, args.device)
        return

    print(f"training, batch {args.batch}, best of {args.steps} steps")
    variants = [("baseline", False, False, False), ("+chunks", True, False, False), ("+bf16", True, True, False),
                ("+dropout", True, True, True)]
    base = None
    for name, chunks, bf16, dropout in variants:
        seconds = train_step_seconds(args.model, triplets, args.batch, args.steps, chunks, bf16, dropout, args.device)
        base = base or seconds
        print(f"  {name:<10} {seconds:6.2f} s/step  x{base / seconds:.2f}", flush=True)

    paired_levers(args.model, triplets, args.batch, args.steps, args.device)

    sentences = (load_sts(STS_TASKS["stsbenchmark"], data_dir).sentences1
                 + load_sts(STS_TASKS["sickr"], data_dir).sentences1)
    texts = list(dict.fromkeys(sentences))[: args.eval_texts]
    print(f"evaluation, {len(texts)} unique sentences")
    base = None
    for name in ("fp32", "autocast", "bf16", "+fused"):
        embedder = evaluation_embedder(args.model, name, args.device)
        embedder.encode(texts[:64])
        start = time.perf_counter()
        embedder.encode(texts)
        seconds = time.perf_counter() - start
        base = base or seconds
        print(f"  {name:<10} {seconds:6.1f} s  {len(texts) / seconds:6.0f} sentences/s  x{base / seconds:.2f}",
              flush=True)


if __name__ == "__main__":
    main()
