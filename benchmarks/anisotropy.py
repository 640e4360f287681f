"""Why a model does or does not train at a given lr: how alike its base embeddings are.

Prints the mean cosine between embeddings of unrelated sentences, the share of the EOS hidden state's norm held
by its largest few dimensions, and the InfoNCE loss of the untrained model against chance (log 2B).

    .venv/bin/python -m benchmarks.anisotropy --model smollm2-135m --data-dir ../shared/data
"""
from __future__ import annotations

if not __package__:  # started as a file (python benchmarks/X.py): re-run as python -m benchmarks.X
    import _bootstrap  # noqa: F401

import argparse
import math

import torch

from benchmarks import harness
from embedtune.evaluation.diagnostics import mean_cosine
from embedtune.losses.infonce import compute_loss_from_embeddings
from embedtune.models.embedder import Embedder, last_token_index


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.add_common_options(parser, data_dir=None)
    parser.add_argument("--n", type=int, default=64)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    triplets = harness.shared_triplets(args.data_dir, args.n)
    embedder = Embedder(args.model, precision="fp32")
    anchor_ids = embedder.tokenize([t.anchor for t in triplets])
    anchors = torch.from_numpy(embedder.encode_ids(anchor_ids))
    positives = torch.from_numpy(embedder.encode([t.positive for t in triplets]))
    negatives = torch.from_numpy(embedder.encode([t.negative for t in triplets]))
    cos = anchors @ anchors.T
    off_diagonal = cos[~torch.eye(len(cos), dtype=torch.bool)]
    mean = mean_cosine(embedder, anchor_ids)  # the trainer's anisotropy warning reads the same figure
    head = min(16, len(triplets))
    with torch.no_grad():
        batch = {k: v.to(embedder.device) for k, v in embedder.pad(anchor_ids[:head]).items()}
        hidden = embedder.model(**batch).last_hidden_state
        eos = hidden[torch.arange(head, device=hidden.device), last_token_index(batch["attention_mask"])]
    top = eos.abs().topk(4, dim=-1).values.pow(2).sum(-1) / eos.pow(2).sum(-1)
    loss = compute_loss_from_embeddings(anchors, positives, negatives, 0.05).item()
    print(f"model {args.model}: mean cosine between unrelated sentences {mean:.3f} "
          f"(min {off_diagonal.min():.3f}); EOS state norm {eos.norm(dim=-1).mean():.1f}, "
          f"top-4 dimensions hold {100 * top.mean():.0f}% of its squared norm")
    print(f"untrained InfoNCE loss {loss:.3f} vs chance log(2B) = {math.log(2 * len(triplets)):.3f}")


if __name__ == "__main__":
    main()
