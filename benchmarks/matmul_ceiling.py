"""The ceiling of the efficiency figures: how fast this model's own matrix products run here, alone.

compare_peer rates efficiency as achieved GFLOP/s (2 x non-embedding parameters per real token for
evaluation, 4 x for LoRA training) over the best square bf16 matmul it times. This script asks how high that
ratio could go if everything but the frozen weights' products took no time at all. Per round it times:

  probe        square bf16 products (1024^2, 2048^2) in a loop: the best one (compare_peer's peak) and the median
  eval         Embedder.encode over the unique STSBenchmark test sentences (the real pass)
  eval mm      only the linear layers' products of that pass: the same length-sorted padded batches, the same
               bf16 weights, inputs of the same shapes, nothing else
  train        one training step at batch 32 (packed row, LoRA, loss, backward, AdamW), as `embedtune train`
  train mm     only its frozen products: x W^T forward and g W backward (input gradient) per linear layer

and prints each as GFLOP/s in the efficiency metric's units (metric FLOPs / seconds) and as a share of the
probe's best. Rounds interleave the parts so that the machine's drift hits all of them.

    .venv/bin/python -m benchmarks.matmul_ceiling --data-dir ../shared/data [--rounds 3]
"""
from __future__ import annotations

if not __package__:  # started as a file (python benchmarks/X.py): re-run as python -m benchmarks.X
    import _bootstrap  # noqa: F401

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from benchmarks import harness
from benchmarks.harness import matmul_probe_rates, shared_triplets
from embedtune.config import Config
from embedtune.data.sampling import batch_rows, tokenize_triplets
from embedtune.data.sts import STS_TASKS, load_sts, resolve_data_dir
from embedtune.losses.infonce import InfoNCELoss
from embedtune.models.backend import PACKED_ROW_MULTIPLE
from embedtune.models.batching import length_sorted_batches, packed_rows
from embedtune.models.embedder import Embedder
from embedtune.models.lora import prepare_for_training
from embedtune.runtime import apply_kernel_cache_limits
from embedtune.training.metrics import non_embedding_parameters


def probe(seconds: float = 3.0) -> tuple[float, float]:
    """Best and median GFLOP/s of the benchmarks' square-product probe (harness.matmul_probe_rates)."""
    rates = matmul_probe_rates(seconds)
    return max(rates), statistics.median(rates)


def frozen_weights(model: torch.nn.Module) -> list[torch.Tensor]:
    """The weight of every linear layer but LoRA's own small matrices (frozen in training)."""
    return [m.weight for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "lora_" not in name]


class Replay:
    """The products of one pass: for each row count M, x[M, K] W^T for every weight (and g[M, N] W if backward)."""

    def __init__(self, weights: list[torch.Tensor], row_counts: list[int], backward: bool):
        self.weights, self.row_counts, self.backward = weights, row_counts, backward
        most = max(row_counts)
        widths = {w.shape[1] for w in weights} | {w.shape[0] for w in weights}
        self.inputs = {k: torch.randn(most, k, dtype=weights[0].dtype) for k in widths}

    def flops(self) -> float:
        per_row = sum(2 * w.numel() for w in self.weights) * (2 if self.backward else 1)
        return per_row * sum(self.row_counts)

    def run(self) -> float:
        start = time.perf_counter()
        for m in self.row_counts:
            for w in self.weights:
                F.linear(self.inputs[w.shape[1]][:m], w)
                if self.backward:
                    torch.mm(self.inputs[w.shape[0]][:m], w)
        return time.perf_counter() - start


def eval_row_counts(embedder: Embedder, ids: list[list[int]], batch_size: int, max_tokens: int) -> list[int]:
    """Rows of each padded batch Embedder.encode runs (texts x longest text)."""
    lengths = [len(x) for x in ids]
    return [len(b) * max(lengths[i] for i in b) for b in length_sorted_batches(lengths, batch_size, max_tokens)]


def train_row_counts(unique: list[list[int]], chunk_tokens: int, row_multiple: int = PACKED_ROW_MULTIPLE) -> list[int]:
    """Rows of each packed forward call of a training step (real tokens rounded up as models/packing.pack does,
    to the backend's row multiple)."""
    counts = []
    for groups in packed_rows([len(x) for x in unique], chunk_tokens):
        tokens = sum(len(unique[i]) for group in groups for i in group)
        counts.append(tokens + -tokens % row_multiple)
    return counts


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.add_common_options(parser)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    apply_kernel_cache_limits()  # as the embedtune command runs
    torch.manual_seed(0)

    data = load_sts(STS_TASKS["stsbenchmark"], resolve_data_dir(args.data_dir))
    sentences = list(dict.fromkeys(data.sentences1 + data.sentences2))
    evaluator_embedder = Embedder(args.model, precision="bf16")
    eval_ids = evaluator_embedder.tokenize(sentences)
    eval_tokens = sum(map(len, eval_ids))
    n_params = non_embedding_parameters(evaluator_embedder.model)
    eval_replay = Replay(frozen_weights(evaluator_embedder.model),
                         eval_row_counts(evaluator_embedder, eval_ids, 64, 4096), backward=False)

    config = Config.from_dict({"model": {"name": args.model}, "train": {"batch_size": args.batch,
                                                                          "precision": "bf16"}}).validate()
    trainer_embedder = Embedder(args.model, precision="bf16")
    prepare_for_training(trainer_embedder, config.lora)
    triplets = tokenize_triplets(trainer_embedder.tokenize, shared_triplets(args.data_dir, limit=args.batch * 8))
    loss_fn = InfoNCELoss(trainer_embedder, chunk_tokens=config.train.chunk_tokens)
    params = [p for p in trainer_embedder.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=5e-5)
    batches = [triplets.batch(batch_rows(s, len(triplets), args.batch, 0)) for s in range(8)]
    unique = [list(t) for t in dict.fromkeys(tuple(x) for x in batches[0].texts())]
    train_replay = Replay(frozen_weights(trainer_embedder.model),
                          train_row_counts(unique, config.train.chunk_tokens, trainer_embedder.backend.row_multiple),
                          backward=True)
    print(f"{args.model}: {n_params / 1e6:.1f}M non-embedding parameters; eval: {len(sentences)} sentences, "
          f"{eval_tokens} tokens in {len(eval_replay.row_counts)} batches; train: batch {args.batch}, "
          f"{batches[0].n_tokens} real tokens, packed rows {train_replay.row_counts}")

    def train_step(batch) -> float:
        start = time.perf_counter()
        with trainer_embedder.backend.training_attention(trainer_embedder.model):
            loss_fn(batch).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        trainer_embedder.backend.synchronize()
        return time.perf_counter() - start

    train_step(batches[1])  # warm-up: kernels compiled, optimiser state allocated
    evaluator_embedder.encode(sentences[:300])
    header = f"{'round':>5}{'probe best':>12}{'median':>8}{'eval':>8}{'eval mm':>9}{'train':>8}{'train mm':>10}"
    print("GFLOP/s in the metric's units (metric FLOPs / seconds)\n" + header)
    shares: dict[str, list[float]] = {k: [] for k in ("eval", "eval mm", "train", "train mm")}
    for round_ in range(args.rounds):
        best, median = probe()
        start = time.perf_counter()
        evaluator_embedder.encode(sentences)
        rates = {"eval": 2 * n_params * eval_tokens / (time.perf_counter() - start) / 1e9,
                 "eval mm": 2 * n_params * eval_tokens / eval_replay.run() / 1e9}
        batch = batches[2 + round_ % 6]
        rates["train"] = 4 * n_params * batch.n_tokens / train_step(batch) / 1e9
        # The replay's rows are batch 0's; scale its time to this batch's real tokens.
        rates["train mm"] = 4 * n_params * batches[0].n_tokens / train_replay.run() / 1e9
        for key, rate in rates.items():
            shares[key].append(rate / best)
        print(f"{round_ + 1:>5}{best:>12.0f}{median:>8.0f}" + "".join(
            f"{rates[k]:>{w}.0f}" for k, w in (("eval", 8), ("eval mm", 9), ("train", 8), ("train mm", 10))))
    print("share of the probe's best, median over rounds: " + ", ".join(
        f"{k} {100 * statistics.median(v):.0f}%" for k, v in shares.items()))
    print(f"actual FLOPs per metric FLOP: eval mm {eval_replay.flops() / (2 * n_params * eval_tokens):.2f} "
          f"(padding), train mm {train_replay.flops() / (4 * n_params * batches[0].n_tokens):.2f} (row padding)")


if __name__ == "__main__":
    main()
