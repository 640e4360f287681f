"""The training attention must give SDPA's outputs and gradients, with and without padding masks."""
from __future__ import annotations

import pytest
import torch

from embedtune.models.attention import MAX_MATH_LENGTH, NAME, math_attention, training_attention
from embedtune.models.embedder import Embedder

TEXTS = ["A man is playing a guitar.", "x", "the quick brown fox jumps over the lazy dog " * 2, "hello world !"]


def embeddings_and_grads(embedder: Embedder, padding_side: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
    embedder.model.zero_grad()
    vectors = embedder.embed_batch(embedder.pad(embedder.tokenize(TEXTS), padding_side))
    (vectors * torch.linspace(-1, 1, vectors.shape[1])).sum().backward()
    return vectors.detach(), [p.grad.clone() for p in embedder.model.parameters() if p.grad is not None]


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_training_attention_matches_sdpa_outputs_and_gradients(tiny_arch_dir, padding_side, monkeypatch):
    from embedtune.models import attention

    used = []
    monkeypatch.setattr(attention, "math_attention", lambda *a, **k: used.append(1) or math_attention(*a, **k))
    embedder = Embedder(str(tiny_arch_dir), precision="fp32", device="cpu")
    embedder.model.train()
    vectors, grads = embeddings_and_grads(embedder, padding_side)
    with training_attention(embedder.model):
        assert embedder.model.config._attn_implementation == NAME
        ours, our_grads = embeddings_and_grads(embedder, padding_side)
    assert used, "the math path never ran"
    assert embedder.model.config._attn_implementation == "sdpa"  # restored: exports never name our function
    assert torch.allclose(ours, vectors, atol=1e-5)
    assert len(our_grads) == len(grads)
    for mine, theirs in zip(our_grads, grads, strict=True):
        assert torch.allclose(mine, theirs, atol=1e-5, rtol=1e-4)


def test_math_attention_matches_sdpa_with_grouped_heads_and_long_causal_masks():
    torch.manual_seed(0)
    q = torch.randn(3, 4, 7, 16)
    k, v = torch.randn(3, 2, 7, 16), torch.randn(3, 2, 7, 16)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    assert torch.allclose(math_attention(q, k, v, None, 16 ** -0.5, True), expected, atol=1e-5)
    window = torch.ones(7, 7, dtype=torch.bool).tril() & ~torch.ones(7, 7, dtype=torch.bool).tril(-3)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=window, enable_gqa=True)
    assert torch.allclose(math_attention(q, k, v, window[None, None], 16 ** -0.5, False), expected, atol=1e-5)


def test_inference_and_long_inputs_still_go_to_sdpa(tiny_arch_dir, monkeypatch):
    from embedtune.models import attention

    used = []
    monkeypatch.setattr(attention, "math_attention", lambda *a, **k: used.append(1) or math_attention(*a, **k))
    embedder = Embedder(str(tiny_arch_dir), precision="fp32", device="cpu")
    with training_attention(embedder.model):
        embedder.encode(TEXTS)
        assert not used
        embedder.model.train()
        embedder.embed_batch(embedder.pad(embedder.tokenize(TEXTS))).sum().backward()
        assert used
    assert MAX_MATH_LENGTH >= 128
