"""Distributed cost model from embedtune's own tensor sizes: what a step moves between GPUs against what it computes.

For the paper's three models (built on the meta device, so nothing is downloaded or allocated) it counts the
LoRA parameters our default targets create and the non-embedding parameters, measures the average tokens per
text of the local NLI triplets with a model's tokenizer (`--model`, default Gemma-3-270M), and prints, for K GPUs
at a fixed per-rank batch, per rank and step:

- compute: 4 N FLOPs per token for LoRA training (forward 2N, input-gradient backward 2N; 6N with GradCache's
  extra forward) over the rank's 3 n texts, at the given GPU speed and MFU;
- embeddings: the all-gather of every rank's positives and hard negatives (2 n K vectors of d floats, fp32) and,
  with gradient, the all-reduce of their gradient in backward (losses/infonce.py);
- LoRA gradients: DDP's all-reduce of the trainable parameters (fp32);

with ring bandwidth terms (2 (K-1)/K of the bytes for an all-reduce, (K-1)/K for an all-gather) and a
tree latency term (2 log2 K hops). Nothing is overlapped: the gather sits on the loss's critical path and the
gradient all-reduce is counted in full (DDP overlaps most of it with backward: an upper bound).

    .venv/bin/python -m benchmarks.distributed_cost --data-dir ../shared/data [--per-rank-batch 8] [--model M]
        [--gpus 8 64 512] [--tflops 989] [--mfu 0.4] [--intra-gbs 360] [--inter-gbs 45] [--latency-us 8]
"""
from __future__ import annotations

if not __package__:  # started as a file (python benchmarks/X.py): re-run as python -m benchmarks.X
    import _bootstrap  # noqa: F401

import argparse
import math
import statistics

from benchmarks import harness

GPUS_PER_NODE = 8


def paper_models() -> dict:
    """Config objects of the paper's three models at their published sizes."""
    from transformers import GemmaConfig, PhiConfig

    from embedtune.models.minicpm import MiniCPMConfig

    return {
        "MiniCPM-2B": MiniCPMConfig(hidden_size=2304, intermediate_size=5760, num_hidden_layers=40,
                                    num_attention_heads=36, num_key_value_heads=36, vocab_size=122753),
        "Phi-2": PhiConfig(hidden_size=2560, intermediate_size=10240, num_hidden_layers=32, num_attention_heads=32,
                           vocab_size=51200),
        "Gemma-2B": GemmaConfig(hidden_size=2048, intermediate_size=16384, num_hidden_layers=18,
                                num_attention_heads=8, num_key_value_heads=1, head_dim=256, vocab_size=256000),
    }


def sizes(config, targets: str) -> dict:
    """LoRA (rank 8, our default targets) and non-embedding parameter counts, from the model built on meta."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    from embedtune.models.lora import lora_targets
    from embedtune.training.metrics import non_embedding_parameters

    with torch.device("meta"):
        model = AutoModel.from_config(config)
    n_model = non_embedding_parameters(model)
    peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=32, target_modules=lora_targets(model, targets)))
    lora = sum(p.numel() for p in peft.parameters() if p.requires_grad)
    return {"non_embedding": n_model, "lora": lora, "hidden": config.hidden_size}


def tokens_per_text(data_dir: str, model: str, limit: int = 3000) -> float:
    from embedtune.models.embedder import Embedder

    triplets = harness.shared_triplets(data_dir, limit)
    embedder = Embedder(model, precision="fp32")
    texts = [t for row in triplets for t in (row.anchor, row.positive, row.negative)]
    return statistics.mean(len(ids) for ids in embedder.tokenize(texts))


def step_costs(size: dict, k: int, n: int, tokens: float, args: argparse.Namespace, cached: bool = False) -> dict:
    flops = (6 if cached else 4) * size["non_embedding"] * 3 * n * tokens
    compute_s = flops / (args.tflops * 1e12 * args.mfu)
    bandwidth = (args.intra_gbs if k <= GPUS_PER_NODE else args.inter_gbs) * 1e9
    latency = 2 * math.log2(max(k, 2)) * args.latency_us * 1e-6
    gathered = 2 * n * k * size["hidden"] * 4  # positives + negatives of every rank, fp32
    gather_s = (k - 1) / k * gathered / bandwidth + latency
    gather_grad_s = 2 * (k - 1) / k * gathered / bandwidth + latency
    lora_bytes = 4 * size["lora"]
    lora_s = 2 * (k - 1) / k * lora_bytes / bandwidth + latency
    communication = gather_s + gather_grad_s + lora_s
    return {"compute_ms": 1e3 * compute_s, "gathered_mb": gathered / 1e6, "gather_ms": 1e3 * (gather_s + gather_grad_s),
            "lora_mb": lora_bytes / 1e6, "lora_ms": 1e3 * lora_s, "efficiency": compute_s / (compute_s + communication),
            "without_grad_efficiency": compute_s / (compute_s + gather_s + lora_s)}


def main() -> None:
    parser = harness.add_common_options(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--per-rank-batch", type=int, default=8, help="triplets per GPU per step (n)")
    parser.add_argument("--gpus", type=int, nargs="+", default=[8, 64, 512])
    parser.add_argument("--targets", default="attention", help="LoRA targets, as --lora-targets")
    parser.add_argument("--tflops", type=float, default=989.0, help="GPU dense bf16 peak (H100/H200 SXM: 989)")
    parser.add_argument("--mfu", type=float, default=0.4, help="fraction of the peak training reaches")
    parser.add_argument("--intra-gbs", type=float, default=360.0, help="NCCL bus bandwidth within a node, GB/s")
    parser.add_argument("--inter-gbs", type=float, default=45.0, help="per-GPU bandwidth across nodes, GB/s")
    parser.add_argument("--latency-us", type=float, default=8.0, help="per-hop collective latency")
    args = parser.parse_args()
    tokens = tokens_per_text(args.data_dir, args.model)
    print(f"tokens per text (local NLI triplets, {args.model}'s tokenizer, EOS included): {tokens:.1f}")
    print(f"per-rank batch {args.per_rank_batch}; {args.tflops:.0f} TFLOP/s x MFU {args.mfu}; bandwidth "
          f"{args.intra_gbs:.0f} GB/s within a node of {GPUS_PER_NODE}, {args.inter_gbs:.0f} GB/s across nodes")
    print("| model | LoRA params | GPUs | global batch | compute ms | embeddings all-gathered MB | gather+grad ms "
          "| LoRA all-reduce MB | ms | efficiency | without gather grad |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, config in paper_models().items():
        size = sizes(config, args.targets)
        for k in args.gpus:
            c = step_costs(size, k, args.per_rank_batch, tokens, args)
            print(f"| {name} | {size['lora'] / 1e6:.2f}M | {k} | {k * args.per_rank_batch} | {c['compute_ms']:.1f} "
                  f"| {c['gathered_mb']:.1f} | {c['gather_ms']:.2f} | {c['lora_mb']:.1f} | {c['lora_ms']:.2f} "
                  f"| {c['efficiency']:.0%} | {c['without_grad_efficiency']:.0%} |")


if __name__ == "__main__":
    main()
