"""InfoNCE against a hand computation, hard-negative behaviour, and cached == plain."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from embedtune.config import LoraConfig
from embedtune.losses.gradcache import CachedInfoNCELoss
from embedtune.losses.infonce import InfoNCELoss, TripletBatch, compute_loss_from_embeddings
from embedtune.models.embedder import Embedder
from embedtune.models.lora import attach_lora


def unit(*rows):
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)


def test_loss_equals_hand_computed_infonce():
    anchors = unit([1.0, 0.0], [0.0, 1.0])
    positives = unit([1.0, 1.0], [0.0, 1.0])
    negatives = unit([-1.0, 0.0], [1.0, 0.0])
    t = 0.05
    # anchor 0: cos with [p0, p1, n0, n1] = [1/sqrt2, 0, -1, 1]; target p0
    # anchor 1: cos = [1/sqrt2, 1, 0, 0]; target p1
    s = 1 / math.sqrt(2)
    l0 = -s / t + math.log(sum(math.exp(c / t) for c in (s, 0, -1, 1)))
    l1 = -1 / t + math.log(sum(math.exp(c / t) for c in (s, 1, 0, 0)))
    loss = compute_loss_from_embeddings(anchors, positives, negatives, t)
    assert loss.item() == pytest.approx((l0 + l1) / 2, rel=1e-5)


def test_without_hard_negatives_only_in_batch_positives_compete():
    anchors = unit([1.0, 0.0], [0.0, 1.0])
    positives = unit([1.0, 1.0], [0.0, 1.0])
    t = 0.05
    s = 1 / math.sqrt(2)
    l0 = -s / t + math.log(math.exp(s / t) + math.exp(0))
    l1 = -1 / t + math.log(math.exp(s / t) + math.exp(1 / t))
    assert compute_loss_from_embeddings(anchors, positives, None, t).item() == pytest.approx((l0 + l1) / 2, rel=1e-5)


def test_hard_negatives_raise_the_loss_as_they_get_closer():
    anchors = unit([1.0, 0.0], [0.0, 1.0])
    positives = unit([1.0, 0.2], [0.2, 1.0])
    far = unit([-1.0, 0.0], [0.0, -1.0])
    near = unit([1.0, 0.1], [0.1, 1.0])
    base = compute_loss_from_embeddings(anchors, positives, None, 0.05)
    with_far = compute_loss_from_embeddings(anchors, positives, far, 0.05)
    with_near = compute_loss_from_embeddings(anchors, positives, near, 0.05)
    assert base.item() <= with_far.item() < with_near.item()
    assert with_far.item() == pytest.approx(base.item(), abs=1e-6)  # exp(-1/0.05) is negligible


def test_temperature_scales_logits():
    anchors = unit([1.0, 0.0], [0.0, 1.0])
    positives = unit([1.0, 0.5], [0.5, 1.0])
    sharp = compute_loss_from_embeddings(anchors, positives, None, 0.05)
    soft = compute_loss_from_embeddings(anchors, positives, None, 1.0)
    assert sharp.item() < soft.item()  # the right answers win by more at low temperature


def close_relative_to_scale(a: torch.Tensor, b: torch.Tensor, tolerance: float = 1e-5) -> bool:
    """Equal up to fp32 summation order: packed and padded layouts add the same terms in different orders."""
    return (a - b).abs().max().item() <= tolerance * max(1.0, a.abs().max().item())


def _lora_embedder(model_dir, dropout: float) -> Embedder:
    embedder = Embedder(str(model_dir), precision="fp32", device="cpu")
    embedder.model = attach_lora(embedder.model, LoraConfig(dropout=dropout))
    with torch.no_grad():  # non-zero lora_B so that gradients reach lora_A too
        for name, p in embedder.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(3)) * 0.1)
    embedder.model.train()
    return embedder


def _batch(embedder: Embedder) -> TripletBatch:
    words = ["a man is playing a guitar", "the dog runs in the park", "x", "a woman reads a book",
             "the cat sits on the table", "hello world", "the quick brown fox", "one two three red blue"]
    ids = embedder.tokenize(words + words[::-1] + words[3:] + words[:3])
    return TripletBatch(ids[:8], ids[8:16], ids[16:24])


def _loss_and_grads(loss_fn, batch, seed: int):
    torch.manual_seed(seed)
    loss = loss_fn(batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in loss_fn.embedder.model.named_parameters() if p.grad is not None}
    loss_fn.embedder.model.zero_grad(set_to_none=True)
    return loss.item(), grads


@pytest.mark.parametrize("dropout,plain_chunk,cached_chunk", [(0.0, 4096, 24), (0.1, 24, 24)])
def test_cached_loss_equals_plain_loss(tiny_model_dir, dropout, plain_chunk, cached_chunk):
    embedder = _lora_embedder(tiny_model_dir, dropout)
    batch = _batch(embedder)
    plain = InfoNCELoss(embedder, chunk_tokens=plain_chunk, packing=False)  # the cached loss runs padded chunks
    cached = CachedInfoNCELoss(embedder, mini_batch_tokens=cached_chunk, packing=False)
    loss_a, grads_a = _loss_and_grads(plain, batch, seed=7)
    loss_b, grads_b = _loss_and_grads(cached, batch, seed=7)
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 0
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], atol=1e-6, rtol=1e-4), name


@pytest.mark.parametrize("row_tokens", [4096, 40])
def test_packed_loss_equals_padded_loss(tiny_arch_dir, row_tokens):
    embedder = _lora_embedder(tiny_arch_dir, 0.0)
    batch = _batch(embedder)
    assert embedder.packable
    loss_a, grads_a = _loss_and_grads(InfoNCELoss(embedder, chunk_tokens=row_tokens, packing=False), batch, seed=7)
    loss_b, grads_b = _loss_and_grads(InfoNCELoss(embedder, chunk_tokens=row_tokens, packing=True), batch, seed=7)
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 0
    for name in grads_a:
        assert close_relative_to_scale(grads_a[name], grads_b[name]), name


def test_packed_cached_loss_equals_packed_plain_loss(tiny_arch_dir):
    embedder = _lora_embedder(tiny_arch_dir, 0.0)
    batch = _batch(embedder)
    loss_a, grads_a = _loss_and_grads(InfoNCELoss(embedder), batch, seed=7)
    loss_b, grads_b = _loss_and_grads(CachedInfoNCELoss(embedder, mini_batch_tokens=24), batch, seed=7)
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    for name in grads_a:
        assert close_relative_to_scale(grads_a[name], grads_b[name]), name


def test_learnable_temperature_gets_a_gradient(tiny_model_dir):
    embedder = _lora_embedder(tiny_model_dir, 0.0)
    loss_fn = InfoNCELoss(embedder, temperature=0.05, learnable_temperature=True)
    assert loss_fn.temperature.item() == pytest.approx(0.05)
    loss_fn(_batch(embedder)).backward()
    assert loss_fn.log_scale.grad is not None and loss_fn.log_scale.grad.abs().item() > 0
