"""Nine-set STS evaluation: embedtune vs sentence-transformers' `encode`, same model, same sets, one run.

The peer encodes each set's sentences as MTEB drives it (sentences1, then sentences2, per task) with EOS
appended to the text and last-token pooling; embedtune encodes each unique sentence once, in padding-aware
length buckets. Both run at one precision, `--precision` (default auto: what embedtune picks on this CPU, bf16
only where its matmul probe finds bf16 faster than fp32). Prints the CPU (name, ISA flags, torch's capability)
and the precision, both times, sentences/s, the scores, and the ratio.

First use is reported apart from warm speed: each side loads its model (timed: `load`) and encodes 64 texts
spread over the length range (timed: `warm-up`; embedtune compiles its kernels here, or loads them from torch's
cache) before the timed evaluation. `--cold` gives embedtune an empty torch inductor cache, so its first use
includes the whole kernel compile as on a fresh machine. `--repeat N` times the evaluation N times per side
(median reported). `ratio eval_speed` compares the warm evaluations; `ratio eval_speed with first use` the
totals (load + warm-up + evaluation).

    .venv/bin/python -m benchmarks.eval_speed --data-dir ../shared/data [--quick | --tasks T ...] [--model gemma3-270m]
        [--precision auto|fp32|bf16] [--cold] [--repeat N]
"""
from __future__ import annotations

if not __package__:  # started as a file (python benchmarks/X.py): re-run as python -m benchmarks.X
    import _bootstrap  # noqa: F401

import argparse
import gc
import os
import statistics
import time

import torch

from benchmarks import harness
from benchmarks.harness import QUICK_TASKS
from embedtune.evaluation.sts import STSEvaluator, average_and_std, paired_cosine, spearman_x100
from embedtune.models.embedder import Embedder
from embedtune.models.loading import resolve_model

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def peer_model(folder: str, device: str = "cpu", precision: str = "bf16"):
    from sentence_transformers import SentenceTransformer, models

    transformer = models.Transformer(folder, model_args={"dtype": DTYPES[precision]})
    pooling = models.Pooling(transformer.get_word_embedding_dimension(), pooling_mode="lasttoken")
    return SentenceTransformer(modules=[transformer, pooling, models.Normalize()], device=device)


def run_peer(folder: str, datasets, batch_size: int, device: str = "cpu", precision: str = "bf16",
             warmup_texts: list[str] | None = None) -> tuple[dict, float]:
    """The peer's scores and evaluation seconds; with `warmup_texts`, those are encoded first, untimed."""
    model = peer_model(folder, device, precision)
    if warmup_texts:
        warm_peer(model, warmup_texts, batch_size)
    return encode_peer(model, datasets, batch_size)


def warm_peer(model, texts: list[str], batch_size: int) -> None:
    model.encode([s + model.tokenizer.eos_token for s in texts], batch_size=batch_size, convert_to_numpy=True)


def encode_peer(model, datasets, batch_size: int) -> tuple[dict, float]:
    """Scores per set and seconds for the peer's encode calls (they return numpy, so GPU work is finished)."""
    eos = model.tokenizer.eos_token
    start = time.perf_counter()
    scores = {}
    for data in datasets:
        a = model.encode([s + eos for s in data.sentences1], batch_size=batch_size, convert_to_numpy=True)
        b = model.encode([s + eos for s in data.sentences2], batch_size=batch_size, convert_to_numpy=True)
        scores[data.name] = spearman_x100(paired_cosine(a, b), data.scores)
    return scores, time.perf_counter() - start


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.add_common_options(parser, data_dir=None)
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK_TASKS)}")
    parser.add_argument("--tasks", nargs="+", help="these STS sets instead (default: all nine)")
    parser.add_argument("--peer-batch-size", type=int, default=32)
    harness.add_precision_option(parser)
    harness.add_cold_option(parser)
    parser.add_argument("--repeat", type=int, default=1, help="timed evaluations per side (median reported)")
    return parser


def timed(function, *args):
    start = time.perf_counter()
    value = function(*args)
    return value, time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    datasets = harness.sts_sets(args.data_dir, args.tasks or (QUICK_TASKS if args.quick else None))
    n_sentences = sum(2 * len(d) for d in datasets)
    print(harness.describe_cpu(), flush=True)
    precision, why = harness.resolve_precision(args.precision)
    print(f"precision embedtune {precision}, peer {precision} ({why})", flush=True)
    cache = "torch's default (warm if these kernels were compiled before)"
    if args.cold:
        os.environ[harness.INDUCTOR_CACHE_ENV] = harness.fresh_kernel_cache()
        cache = f"empty ({os.environ[harness.INDUCTOR_CACHE_ENV]})"

    evaluator = STSEvaluator(datasets, show_progress=False)
    sample = harness.warmup_sample(evaluator.unique_sentences)
    embedder, ours_load = timed(lambda: Embedder(args.model, precision=precision))
    _, ours_warmup = timed(embedder.encode, sample)
    ours_runs = [harness.timed_evaluation(evaluator, embedder) for _ in range(max(1, args.repeat))]
    ours = ours_runs[0]
    ours_seconds = statistics.median(r["seconds"] for r in ours_runs)
    del embedder
    gc.collect()

    folder = resolve_model(args.model).location
    model, peer_load = timed(peer_model, folder, "cpu", precision)
    _, peer_warmup = timed(warm_peer, model, sample, args.peer_batch_size)
    peer_runs = [encode_peer(model, datasets, args.peer_batch_size) for _ in range(max(1, args.repeat))]
    peer_scores = peer_runs[0][0]
    peer_seconds = statistics.median(seconds for _, seconds in peer_runs)

    peer_avg, peer_std = average_and_std(list(peer_scores.values()))
    print(f"sets: {len(datasets)}, sentences: {n_sentences}, unique: {len(evaluator.unique_sentences)}")
    print(f"{'task':<14}{'embedtune':>10}{'peer':>10}")
    for name, task in ours["tasks"].items():
        print(f"{name:<14}{task['spearman']:>10.2f}{peer_scores[name]:>10.2f}")
    print(f"{'average':<14}{ours['average']:>10.2f}{peer_avg:>10.2f}   (std {ours['std']:.2f} / {peer_std:.2f})")
    if args.repeat > 1:
        print("embedtune_passes " + ", ".join(f"{r['seconds']:.1f}" for r in ours_runs) + " s")
        print("peer_passes " + ", ".join(f"{seconds:.1f}" for _, seconds in peer_runs) + " s")
    print(f"first use (before the timed evaluation, {len(sample)} warm-up texts; embedtune's inductor cache: {cache})")
    print(f"embedtune_first_use load {ours_load:.1f} s, warm-up {ours_warmup:.1f} s")
    print(f"peer_first_use load {peer_load:.1f} s, warm-up {peer_warmup:.1f} s")
    ours_total = ours_load + ours_warmup + ours_seconds
    peer_total = peer_load + peer_warmup + peer_seconds
    print(f"embedtune_total {ours_total:.1f} s (first use + evaluation); peer_total {peer_total:.1f} s")
    print(f"embedtune_seconds {ours_seconds:.1f}  ({n_sentences / ours_seconds:.0f} sentences/s)")
    print(f"peer_seconds {peer_seconds:.1f}  ({n_sentences / peer_seconds:.0f} sentences/s)")
    print(f"ratio eval_speed with first use {peer_total / ours_total:.2f}")
    print(f"ratio eval_speed {peer_seconds / ours_seconds:.2f}")

if __name__ == "__main__":
    main()
