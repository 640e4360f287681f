"""The int8 benchmark's SmoothQuant migration must be exact before quantisation, or its figures mean nothing."""
from __future__ import annotations

import torch

from benchmarks.int8_sensitivity import InputScale, build, linear_names, quantize, smooth
from embedtune.models.embedder import Embedder


def test_smoothing_leaves_fp32_vectors_unchanged_and_rescales_every_linear(tiny_model_dir, tiny_texts):
    embedder = Embedder(str(tiny_model_dir), precision="fp32")
    before = embedder.encode(tiny_texts)
    weights = {n: m.weight.detach().clone() for n, m in embedder.model.named_modules()
               if isinstance(m, torch.nn.Linear)}
    smooth(embedder, tiny_texts[:4])
    scaled = [m for m in embedder.model.modules() if isinstance(m, torch.nn.Sequential)]
    assert len(scaled) == len(weights) > 0
    assert all(isinstance(s[0], InputScale) for s in scaled)
    changed = [n for n, m in embedder.model.named_modules() if isinstance(m, torch.nn.Linear)
               and not torch.equal(m.weight, weights[n.removesuffix(".1")])]
    assert len(changed) == len(weights)  # the weights carry the factors
    assert torch.allclose(torch.from_numpy(embedder.encode(tiny_texts)), torch.from_numpy(before), atol=1e-5)


def test_quantize_replaces_only_the_named_layers(tiny_model_dir):
    embedder = Embedder(str(tiny_model_dir), precision="fp32")
    names = linear_names(embedder.model, lambda n: "down_proj" not in n)
    quantize(embedder, names)
    modules = dict(embedder.model.named_modules())
    assert names and all(type(modules[n]).__module__.startswith("torch.ao.nn.quantized.dynamic") for n in names)
    downs = [m for n, m in modules.items() if n.endswith("down_proj")]
    assert downs and all(type(m) is torch.nn.Linear for m in downs)


def test_the_schemes_quantise_as_named(tiny_model_dir):
    per_tensor = build(str(tiny_model_dir), "per-tensor", [])  # the product's `--quantize int8`
    down_kept = build(str(tiny_model_dir), "per-channel-fp32-down", [])

    def schemes(embedder: Embedder) -> dict[str, object]:
        return {n: m.weight().qscheme() if callable(m.weight) else None for n, m in embedder.model.named_modules()
                if n.endswith("_proj")}

    assert set(schemes(per_tensor).values()) == {torch.per_tensor_affine}
    kept = schemes(down_kept)
    assert {s for n, s in kept.items() if n.endswith("down_proj")} == {None}
    assert {s for n, s in kept.items() if not n.endswith("down_proj")} == {torch.per_channel_affine}
