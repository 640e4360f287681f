"""Nine-set STS evaluation: embedtune vs sentence-transformers' `encode`, same model, same sets, one run.

The peer encodes each set's sentences as MTEB drives it (sentences1, then sentences2, per task) with EOS
appended to the text and last-token pooling, in bf16; embedtune encodes each unique sentence once, in
padding-aware length buckets. Prints both times, sentences/s, the scores, and the ratio.

    .venv/bin/python -m benchmarks.eval_speed --data-dir ../shared/data [--quick] [--model gemma3-270m]
"""
from __future__ import annotations

if not __package__:  # started as a file (python benchmarks/X.py): re-run as python -m benchmarks.X
    import _bootstrap  # noqa: F401

import argparse
import gc
import time

import torch

from benchmarks import harness
from benchmarks.harness import QUICK_TASKS
from embedtune.evaluation.sts import STSEvaluator, average_and_std, paired_cosine, spearman_x100
from embedtune.models.embedder import Embedder
from embedtune.models.loading import resolve_model


def peer_model(folder: str, device: str = "cpu"):
    from sentence_transformers import SentenceTransformer, models

    transformer = models.Transformer(folder, model_args={"dtype": torch.bfloat16})
    pooling = models.Pooling(transformer.get_word_embedding_dimension(), pooling_mode="lasttoken")
    return SentenceTransformer(modules=[transformer, pooling, models.Normalize()], device=device)


def run_peer(folder: str, datasets, batch_size: int, device: str = "cpu") -> tuple[dict, float]:
    return encode_peer(peer_model(folder, device), datasets, batch_size)


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
    parser.add_argument("--peer-batch-size", type=int, default=32)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    datasets = harness.sts_sets(args.data_dir, QUICK_TASKS if args.quick else None)
    n_sentences = sum(2 * len(d) for d in datasets)

    evaluator = STSEvaluator(datasets, show_progress=False)
    ours = harness.timed_evaluation(evaluator, Embedder(args.model))
    gc.collect()
    peer_scores, peer_seconds = run_peer(resolve_model(args.model).location, datasets, args.peer_batch_size)

    peer_avg, peer_std = average_and_std(list(peer_scores.values()))
    print(f"sets: {len(datasets)}, sentences: {n_sentences}, unique: {len(evaluator.unique_sentences)}")
    print(f"{'task':<14}{'embedtune':>10}{'peer':>10}")
    for name, task in ours["tasks"].items():
        print(f"{name:<14}{task['spearman']:>10.2f}{peer_scores[name]:>10.2f}")
    print(f"{'average':<14}{ours['average']:>10.2f}{peer_avg:>10.2f}   (std {ours['std']:.2f} / {peer_std:.2f})")
    print(f"embedtune_seconds {ours['seconds']:.1f}  ({n_sentences / ours['seconds']:.0f} sentences/s)")
    print(f"peer_seconds {peer_seconds:.1f}  ({n_sentences / peer_seconds:.0f} sentences/s)")
    print(f"ratio eval_speed {peer_seconds / ours['seconds']:.2f}")


if __name__ == "__main__":
    main()
