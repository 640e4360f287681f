"""Why a model does or does not train at a given lr: how alike its base embeddings are.

Prints the mean cosine between embeddings of unrelated sentences, the share of the EOS hidden state's norm held
by its largest few dimensions, and the InfoNCE loss of the untrained model against chance (log 2B).

    .venv/bin/python benchmarks/anisotropy.py --model smollm2-135m --data-dir ../shared/data
"""
from __future__ import annotations

import argparse
import math

import torch

from embedtune.config import DataConfig
from embedtune.data.nli import load_triplets
from embedtune.data.sts import resolve_data_dir
from embedtune.losses.infonce import compute_loss_from_embeddings
from embedtune.models.embedder import Embedder, last_token_index


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--n", type=int, default=64)
    args = parser.parse_args()
    triplets, _ = load_triplets(DataConfig(decontaminate=False), resolve_data_dir(args.data_dir), None)
    triplets = triplets[: args.n]
    embedder = Embedder(args.model, precision="fp32")
    anchors = torch.from_numpy(embedder.encode([t.anchor for t in triplets]))
    positives = torch.from_numpy(embedder.encode([t.positive for t in triplets]))
    negatives = torch.from_numpy(embedder.encode([t.negative for t in triplets]))
    cos = anchors @ anchors.T
    off_diagonal = cos[~torch.eye(len(cos), dtype=torch.bool)]
    with torch.no_grad():
        batch = embedder.pad(embedder.tokenize([t.anchor for t in triplets[:16]]))
        hidden = embedder.model(**batch).last_hidden_state
        eos = hidden[torch.arange(16), last_token_index(batch["attention_mask"])]
    top = eos.abs().topk(4, dim=-1).values.pow(2).sum(-1) / eos.pow(2).sum(-1)
    loss = compute_loss_from_embeddings(anchors, positives, negatives, 0.05).item()
    print(f"model {args.model}: mean cosine between unrelated sentences {off_diagonal.mean():.3f} "
          f"(min {off_diagonal.min():.3f}); EOS state norm {eos.norm(dim=-1).mean():.1f}, "
          f"top-4 dimensions hold {100 * top.mean():.0f}% of its squared norm")
    print(f"untrained InfoNCE loss {loss:.3f} vs chance log(2B) = {math.log(2 * len(triplets)):.3f}")


if __name__ == "__main__":
    main()
