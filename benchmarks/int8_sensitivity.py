"""Which int8 scheme keeps the embeddings, and which layers break them: vectors against fp32, in one run.

    .venv/bin/python -m benchmarks.int8_sensitivity --data-dir ../shared/data [--tasks sts17 biosses]
        [--schemes per-tensor per-channel ...] [--layers] [--matmuls]

Encodes each unique sentence of the tasks in fp32 and under each int8 scheme (dynamic int8 linear layers, fbgemm,
activations quantised per call), and prints per scheme: the encoding time, the cosine of each vector to its fp32
vector (mean and minimum) and each task's Spearman. Schemes:

- `per-tensor`: what `--quantize int8` does (one weight scale per layer);
- `per-channel`: one weight scale per output row;
- `per-channel-fp32-down`: per-channel, the MLP's down projections kept in fp32 (its input has the widest range);
- `smooth`: per-channel after SmoothQuant's migration (alpha 0.5: each input channel's range split between the
  activations and the weights, from channel maxima over 128 NLI training sentences, never the evaluated ones);
- `smooth-fp32-down`: both.

`--layers` quantises one projection kind, or one decoder layer, at a time (per-channel) and prints the cosine to
fp32 on 200 sentences: where the error comes from. `--matmuls` times fp32 against int8 products at this model's
projection shapes (fbgemm's dynamic linear; torch._int_mm).
"""
from __future__ import annotations

if not __package__:  # started as a file (python benchmarks/X.py): re-run as python -m benchmarks.X
    import _bootstrap  # noqa: F401

import argparse
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks import harness
from embedtune.evaluation.sts import paired_cosine, spearman_x100, unique_sentences
from embedtune.models.embedder import Embedder

SCHEMES = ("per-tensor", "per-channel", "per-channel-fp32-down", "smooth", "smooth-fp32-down")
SMOOTH_ALPHA = 0.5
CALIBRATION_TEXTS = 128
SENSITIVITY_TEXTS = 200
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class InputScale(torch.nn.Module):
    """Multiplies a linear layer's input by fixed per-channel factors (the weights carry the inverse)."""

    def __init__(self, factors: torch.Tensor):
        super().__init__()
        self.register_buffer("factors", factors)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factors


def linear_names(model: torch.nn.Module, keep: Callable[[str], bool]) -> set[str]:
    return {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and keep(n)}


def input_channel_maxima(embedder: Embedder, texts: list[str]) -> dict[str, torch.Tensor]:
    maxima: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def record(module, inputs, output) -> None:
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).abs().amax(0)
            maxima[name] = torch.maximum(maxima[name], x) if name in maxima else x
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in embedder.model.named_modules()
               if isinstance(m, torch.nn.Linear)]
    embedder.encode(texts)
    for handle in handles:
        handle.remove()
    return maxima


def smooth(embedder: Embedder, calibration: list[str]) -> None:
    """SmoothQuant: x W^T = (x / s)(W s)^T with s_j = max|x_j|^a / max|W_:j|^(1-a), exact in fp32."""
    maxima = input_channel_maxima(embedder, calibration)
    parents = dict(embedder.model.named_modules())
    for name in maxima:
        parent_name, _, child_name = name.rpartition(".")
        parent, child = parents[parent_name], parents[name]
        act, weight = maxima[name].clamp(min=1e-5), child.weight.data.abs().amax(0).clamp(min=1e-5)
        factors = (act ** SMOOTH_ALPHA / weight ** (1 - SMOOTH_ALPHA)).clamp(min=1e-5)
        child.weight.data *= factors
        setattr(parent, child_name, torch.nn.Sequential(InputScale(1 / factors), child))


def quantize(embedder: Embedder, names: set[str]) -> None:
    """Per-channel dynamic int8 for the linear layers named (the product's own `--quantize int8` is per-tensor)."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's deprecation notice for its quantised tensor types
        embedder.model = quantize_dynamic(embedder.model.eval(), {n: per_channel_dynamic_qconfig for n in names},
                                          dtype=torch.qint8)


def build(model: str, scheme: str, calibration: list[str]) -> Embedder:
    if scheme == "per-tensor":
        return Embedder(model, precision="fp32", quantize="int8")  # exactly what `--quantize int8` runs
    embedder = Embedder(model, precision="fp32")
    if scheme == "fp32":
        return embedder
    if scheme.startswith("smooth"):
        smooth(embedder, calibration)
    keep_down = scheme.endswith("fp32-down")
    quantize(embedder, linear_names(embedder.model, lambda n: not (keep_down and "down_proj" in n)))
    return embedder


def task_scores(vectors: np.ndarray, texts: list[str], datasets) -> list[float]:
    row = {t: i for i, t in enumerate(texts)}
    return [spearman_x100(paired_cosine(vectors[[row[s] for s in d.sentences1]],
                                        vectors[[row[s] for s in d.sentences2]]), d.scores) for d in datasets]


def compare_schemes(args: argparse.Namespace, texts: list[str], datasets, calibration: list[str]) -> np.ndarray:
    names = [d.name for d in datasets]
    print("scheme\tseconds\tcosine mean\tcosine min\t" + "\t".join(names))
    reference = None
    for scheme in ("fp32", *args.schemes):
        embedder = build(args.model, scheme, calibration)
        embedder.encode(harness.warmup_sample(texts))
        start = time.perf_counter()
        vectors = embedder.encode(texts)
        seconds = time.perf_counter() - start
        reference = vectors if reference is None else reference
        cosine = (vectors * reference).sum(1)
        scores = "\t".join(f"{s:.2f}" for s in task_scores(vectors, texts, datasets))
        print(f"{scheme}\t{seconds:.1f}\t{cosine.mean():.4f}\t{cosine.min():.4f}\t{scores}", flush=True)
    return reference


def layer_sensitivity(args: argparse.Namespace, texts: list[str], reference: np.ndarray) -> None:
    sample, expected = texts[:SENSITIVITY_TEXTS], reference[:SENSITIVITY_TEXTS]
    layers = Embedder(args.model, precision="fp32").model.config.num_hidden_layers
    parts: dict[str, Callable[[str], bool]] = {p: (lambda n, p=p: n.endswith(p)) for p in PROJECTIONS}
    parts |= {f"layer {i}": (lambda n, i=i: f"layers.{i}." in n) for i in range(layers)}
    print(f"\nint8 (per-channel) in one part only, cosine to fp32 over {len(sample)} sentences")
    print("part\tcosine mean\tcosine min")
    for part, keep in parts.items():
        embedder = Embedder(args.model, precision="fp32")
        quantize(embedder, linear_names(embedder.model, keep))
        cosine = (embedder.encode(sample) * expected).sum(1)
        print(f"{part}\t{cosine.mean():.4f}\t{cosine.min():.4f}", flush=True)


def best_seconds(fn: Callable[[], object], repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_rates(rows: int = 1100) -> None:
    """GFLOP/s of one projection's product, fp32 against int8, at a typical evaluation batch's row count."""
    print(f"\nproducts at {rows} rows, GFLOP/s (best of 5)")
    print("shape\tfp32 F.linear\tint8 fbgemm dynamic\tint8 torch._int_mm")
    torch.backends.quantized.engine = "fbgemm"
    for out_features, in_features in ((1024, 640), (2048, 640), (640, 2048)):
        rates = shape_rates(rows, out_features, in_features)
        print(f"{out_features}x{in_features}\t" + "\t".join(f"{r:.1f}" for r in rates), flush=True)


def shape_rates(rows: int, out_features: int, in_features: int) -> list[float]:
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    x, weight = torch.randn(rows, in_features), torch.randn(out_features, in_features)
    dynamic = DynamicLinear(in_features, out_features, bias_=False, dtype=torch.qint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dynamic.set_weight_bias(torch.quantize_per_channel(
            weight, weight.abs().amax(1) / 127, torch.zeros(out_features, dtype=torch.long), 0, torch.qint8), None)
    x8 = torch.randint(-127, 127, (rows, in_features), dtype=torch.int8)
    w8 = torch.randint(-127, 127, (out_features, in_features), dtype=torch.int8).t()
    gflop = 2 * rows * out_features * in_features / 1e9
    products = (lambda: F.linear(x, weight), lambda: dynamic(x), lambda: torch._int_mm(x8, w8))
    return [gflop / best_seconds(product) for product in products]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.add_common_options(parser)
    parser.add_argument("--tasks", nargs="+", default=["sts17", "biosses"])
    parser.add_argument("--schemes", nargs="*", choices=SCHEMES, default=list(SCHEMES))
    parser.add_argument("--layers", action="store_true", help="int8 in one projection kind or layer at a time")
    parser.add_argument("--matmuls", action="store_true", help="time fp32 against int8 products")
    args = parser.parse_args()
    print(harness.describe_cpu())
    datasets = harness.sts_sets(args.data_dir, args.tasks)
    texts = unique_sentences(datasets)
    triplets = harness.shared_triplets(args.data_dir, CALIBRATION_TEXTS // 2)
    calibration = [t.anchor for t in triplets] + [t.positive for t in triplets]
    print(f"model {args.model}\t{len(texts)} unique sentences\tcalibration {len(calibration)} NLI sentences")
    reference = compare_schemes(args, texts, datasets, calibration)
    if args.layers:
        layer_sensitivity(args, texts, reference)
    if args.matmuls:
        matmul_rates()


if __name__ == "__main__":
    main()
