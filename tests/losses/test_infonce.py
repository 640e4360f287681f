"""InfoNCE against a hand computation, hard-negative behaviour, and cached == plain."""
from __future__ import annotations

import inspect
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from embedtune.config import LoraConfig
from embedtune.losses.gradcache import CachedInfoNCELoss
from embedtune.losses.infonce import InfoNCELoss, TripletBatch, compute_loss_from_embeddings, hardness_weighted_columns
from embedtune.models.embedder import Embedder
from embedtune.models.lora import attach_lora


def unit(*rows):
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)


def hand_vectors() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Anchors, positives and hard negatives of the hand computations below."""
    return unit([1.0, 0.0], [0.0, 1.0]), unit([1.0, 1.0], [0.0, 1.0]), unit([-1.0, 0.0], [1.0, 0.0])


def test_loss_equals_hand_computed_infonce():
    anchors, positives, negatives = hand_vectors()
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


def test_symmetric_loss_averages_the_hand_computed_reverse_direction():
    anchors, positives, negatives = hand_vectors()
    t = 0.05
    s = 1 / math.sqrt(2)
    forward = compute_loss_from_embeddings(anchors, positives, negatives, t).item()
    # positive 0: cos with [a0, a1] = [s, s]; target a0. positive 1: cos = [0, 1]; target a1. Hard negatives
    # are not candidates in this direction (they have no anchor of their own).
    r0 = -s / t + math.log(math.exp(s / t) + math.exp(s / t))
    r1 = -1 / t + math.log(math.exp(0) + math.exp(1 / t))
    symmetric = compute_loss_from_embeddings(anchors, positives, negatives, t, symmetric=True).item()
    assert symmetric == pytest.approx((forward + (r0 + r1) / 2) / 2, rel=1e-5)
    assert r0 == pytest.approx(math.log(2))  # a positive equally close to two anchors: chance between them


def test_hardness_adds_the_weighted_cosine_to_the_own_hard_negative_only():
    anchors, positives, _ = hand_vectors()
    negatives = unit([1.0, 1.0], [-1.0, 0.0])
    t, alpha = 0.05, 5.0
    s = 1 / math.sqrt(2)
    # anchor 0: cos with [p0, p1, n0, n1] = [s, 0, s, -1]; its own hard negative n0 gets alpha x s more.
    # anchor 1: cos = [s, 1, s, 0]; its own hard negative n1 (cos 0) gets nothing, n0 (another's) is not weighted.
    l0 = -s / t + _logsumexp([s / t, 0, s / t + alpha * s, -1 / t])
    l1 = -1 / t + _logsumexp([s / t, 1 / t, s / t, 0])
    loss = compute_loss_from_embeddings(anchors, positives, negatives, t, hardness=alpha)
    assert loss.item() == pytest.approx((l0 + l1) / 2, rel=1e-5)
    plain = compute_loss_from_embeddings(anchors, positives, negatives, t).item()
    assert loss.item() - plain > 0.1


def test_hardness_columns_follow_the_rank_offset():
    # rank 1 of 2, two local anchors: columns are [4 positives; 4 negatives], its targets 2 and 3
    targets = torch.tensor([2, 3])
    own_negative = hardness_weighted_columns(torch.Size([2, 8]), targets, True, "hard_negatives")
    assert own_negative.nonzero().tolist() == [[0, 6], [1, 7]]
    in_batch = hardness_weighted_columns(torch.Size([2, 8]), targets, True, "in_batch")
    assert in_batch.nonzero().tolist() == [[0, c] for c in (0, 1, 3, 4, 5, 7)] + [[1, c] for c in (0, 1, 2, 4, 5, 6)]
    everything = hardness_weighted_columns(torch.Size([2, 8]), targets, True, "all")
    assert (~everything).nonzero().tolist() == [[0, 2], [1, 3]]
    without_negatives = hardness_weighted_columns(torch.Size([2, 4]), targets, False, "in_batch")
    assert without_negatives.nonzero().tolist() == [[0, 0], [0, 1], [0, 3], [1, 0], [1, 1], [1, 2]]
    with pytest.raises(ValueError, match="hardness_mode must be one of"):
        hardness_weighted_columns(torch.Size([2, 8]), targets, True, "hard")


def test_hardness_weight_carries_no_gradient():
    g = torch.Generator().manual_seed(0)
    anchors, positives, negatives = (F.normalize(torch.randn(4, 8, generator=g), dim=-1) for _ in range(3))
    t, alpha = 0.05, 5.0
    a = anchors.clone().requires_grad_()
    compute_loss_from_embeddings(a, positives, negatives, t, hardness=alpha, hardness_mode="all").backward()
    candidates = torch.cat([positives, negatives])
    weighted = ~torch.eye(4, 8, dtype=torch.bool)

    def reference_grad(detach_weight: bool) -> torch.Tensor:
        b = anchors.clone().requires_grad_()
        cosines = b @ candidates.T
        weight = cosines.detach() if detach_weight else cosines
        F.cross_entropy(cosines / t + torch.where(weighted, alpha * weight, 0.0), torch.arange(4)).backward()
        return b.grad

    assert torch.allclose(a.grad, reference_grad(detach_weight=True), atol=1e-5)
    assert not torch.allclose(a.grad, reference_grad(detach_weight=False), atol=1e-2)


# hard_negatives without hard negatives is refused by the config (nothing to weight), so it has no case here.
@pytest.mark.parametrize("mode,peer_mode,with_negatives", [
    ("hard_negatives", "hard_negatives", True),
    ("in_batch", "in_batch_negatives", True), ("in_batch", "in_batch_negatives", False),
    ("all", "all_negatives", True), ("all", "all_negatives", False),
])
def test_hardness_equals_sentence_transformers(mode, peer_mode, with_negatives):
    peer_loss = _peer_loss_or_skip("hardness_mode")
    g = torch.Generator().manual_seed(0)
    vectors = [F.normalize(torch.randn(6, 16, generator=g), dim=-1) for _ in range(3 if with_negatives else 2)]
    peer = peer_loss(None, scale=20.0, hardness_mode=peer_mode, hardness_strength=9.0)
    expected = peer.compute_loss_from_embeddings(vectors, None).item()
    negatives = vectors[2] if with_negatives else None
    ours = compute_loss_from_embeddings(vectors[0], vectors[1], negatives, 0.05, hardness=9.0, hardness_mode=mode)
    assert ours.item() == pytest.approx(expected, rel=1e-5)
    plain = compute_loss_from_embeddings(vectors[0], vectors[1], negatives, 0.05)
    assert abs(ours.item() - plain.item()) > 1e-3  # the weighting reached the loss


def test_all_directions_is_one_softmax_over_the_hand_computed_gte_terms():
    anchors = unit([1.0, 0.0], [0.0, 1.0])
    positives = unit([1.0, 1.0], [0.0, 1.0])
    t = 0.05
    s = 1 / math.sqrt(2)
    # triplet 0: anchor vs [p0, p1] = [s, 0]; vs the other anchor a1: 0; p0 vs [a0, a1] = [s, s]; p0 vs p1: s.
    # triplet 1: anchor vs [p0, p1] = [s, 1]; vs a0: 0; p1 vs [a0, a1] = [0, 1]; p1 vs p0: s.
    l0 = -s / t + _logsumexp([s / t, 0, 0, s / t, s / t, s / t])
    l1 = -1 / t + _logsumexp([s / t, 1 / t, 0, 0, 1 / t, s / t])
    loss = compute_loss_from_embeddings(anchors, positives, None, t, all_directions=True)
    assert loss.item() == pytest.approx((l0 + l1) / 2, rel=1e-5)


@pytest.mark.parametrize("with_negatives", [True, False])
@pytest.mark.parametrize("hardness", [0.0, 5.0])
def test_all_directions_equals_sentence_transformers_gte_loss(with_negatives, hardness):
    peer_loss = _peer_loss_or_skip("directions")
    g = torch.Generator().manual_seed(1)
    vectors = [F.normalize(torch.randn(6, 16, generator=g), dim=-1) for _ in range(3 if with_negatives else 2)]
    peer = peer_loss(None, scale=20.0, directions=("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc"),
                     partition_mode="joint", hardness_mode="all_negatives" if hardness else None,
                     hardness_strength=hardness)
    negatives = vectors[2] if with_negatives else None
    ours = compute_loss_from_embeddings(vectors[0], vectors[1], negatives, 0.05, all_directions=True,
                                        hardness=hardness, hardness_mode="all")
    assert ours.item() == pytest.approx(peer.compute_loss_from_embeddings(vectors, None).item(), rel=1e-5)
    one_direction = compute_loss_from_embeddings(vectors[0], vectors[1], negatives, 0.05, hardness=hardness,
                                                 hardness_mode="all")
    assert ours.item() - one_direction.item() > 0.1  # the extra terms reached the loss


def _peer_loss_or_skip(parameter: str):
    """sentence-transformers' MultipleNegativesRankingLoss where it has `parameter`, else skip."""
    losses = pytest.importorskip("sentence_transformers.sentence_transformer.losses")
    if parameter not in inspect.signature(losses.MultipleNegativesRankingLoss).parameters:
        pytest.skip(f"this sentence-transformers' MultipleNegativesRankingLoss has no {parameter}")
    return losses.MultipleNegativesRankingLoss


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


def close_relative_to_scale(a: torch.Tensor, b: torch.Tensor, tolerance: float = 1e-4) -> bool:
    """Equal up to fp32 summation order, whatever the tensors' scale: the largest difference is small next to
    the largest value. Layouts, chunk sizes and SIMD widths (AVX2, AVX-512, AMX, ARM) add the same terms in
    different orders, which moves gradients by ~1e-6 of their scale (4.8e-6 of ~1 seen on AVX2); a logic bug
    moves them by far more (a gradient 1% off is 1e-2 of its scale)."""
    scale = max(a.abs().max().item(), b.abs().max().item())
    return (a - b).abs().max().item() <= tolerance * scale


def test_relative_closeness_accepts_rounding_and_rejects_a_one_percent_error_at_any_scale():
    g = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    for scale in (1e-4, 1.0, 1e4):
        assert close_relative_to_scale(g * scale, g * scale * (1 + 4.8e-6))
        assert not close_relative_to_scale(g * scale, g * scale * 1.01)
    assert close_relative_to_scale(torch.zeros(3), torch.zeros(3))
    assert not close_relative_to_scale(torch.zeros(3), torch.tensor([0.0, 1e-3, 0.0]))


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
        assert close_relative_to_scale(grads_a[name], grads_b[name]), name
        assert not close_relative_to_scale(grads_a[name], grads_b[name] * 1.01), name  # a real error still shows


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


@pytest.mark.parametrize("symmetric", [False, True])
def test_packed_cached_loss_equals_packed_plain_loss(tiny_arch_dir, symmetric):
    embedder = _lora_embedder(tiny_arch_dir, 0.0)
    batch = _batch(embedder)
    loss_a, grads_a = _loss_and_grads(InfoNCELoss(embedder, symmetric=symmetric), batch, seed=7)
    loss_b, grads_b = _loss_and_grads(CachedInfoNCELoss(embedder, mini_batch_tokens=24, symmetric=symmetric), batch,
                                      seed=7)
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    if symmetric:  # the reverse direction reached the loss, so the equality above covers it
        loss_one_way, _ = _loss_and_grads(InfoNCELoss(embedder), batch, seed=7)
        assert abs(loss_a - loss_one_way) > 1e-3
    for name in grads_a:
        assert close_relative_to_scale(grads_a[name], grads_b[name]), name


def test_learnable_temperature_gets_a_gradient(tiny_model_dir):
    embedder = _lora_embedder(tiny_model_dir, 0.0)
    loss_fn = InfoNCELoss(embedder, temperature=0.05, learnable_temperature=True)
    assert loss_fn.temperature.item() == pytest.approx(0.05)
    loss_fn(_batch(embedder)).backward()
    assert loss_fn.log_scale.grad is not None and loss_fn.log_scale.grad.abs().item() > 0


def _fixed_vectors_loss(temperature: float, learnable: bool = False) -> InfoNCELoss:
    """An InfoNCELoss whose embed() returns the hand-computed test's unit vectors: no model involved."""
    loss_fn = InfoNCELoss(SimpleNamespace(device=torch.device("cpu")), temperature=temperature,
                          learnable_temperature=learnable)
    vectors = hand_vectors()
    loss_fn.embed = lambda batch: vectors
    return loss_fn


def _logsumexp(values) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def test_fixed_temperature_below_the_learnable_range_is_used_exactly():
    loss_fn = _fixed_vectors_loss(0.005)
    assert loss_fn.temperature.item() == pytest.approx(0.005, rel=1e-6)  # was clamped to 0.01
    # Logits are cosines x 200 (not x 100): cosines as in test_loss_equals_hand_computed_infonce.
    s = 1 / math.sqrt(2)
    l0 = -200 * s + _logsumexp([200 * c for c in (s, 0, -1, 1)])
    l1 = -200 * 1 + _logsumexp([200 * c for c in (s, 1, 0, 0)])
    assert (l0 + l1) / 2 == pytest.approx(29.2893, abs=1e-3)  # at scale 100 it would be 14.64
    assert loss_fn(None).item() == pytest.approx((l0 + l1) / 2, rel=1e-5)


def test_learnable_temperature_moves_freely_in_a_step_and_is_clamped_after_it():
    for push, bound in ((10.0, 0.01), (-10.0, 1.0)):  # config.MIN_TEMPERATURE, config.MAX_TEMPERATURE
        loss_fn = _fixed_vectors_loss(0.05, learnable=True)
        optimizer = torch.optim.SGD([loss_fn.log_scale], lr=1.0)
        (-push * loss_fn.log_scale).backward()  # one step moves log(1/temperature) by `push`
        optimizer.step()
        assert loss_fn.temperature.item() == pytest.approx(0.05 * math.exp(-push), rel=1e-5)  # no clamp inside
        loss_fn.clamp_temperature()
        assert loss_fn.temperature.item() == pytest.approx(bound, rel=1e-6)
    from embedtune.config import MAX_TEMPERATURE, MIN_TEMPERATURE

    assert (MIN_TEMPERATURE, MAX_TEMPERATURE) == (0.01, 1.0)


def test_clamping_leaves_a_fixed_temperature_alone():
    loss_fn = _fixed_vectors_loss(0.005)
    loss_fn.clamp_temperature()
    assert loss_fn.temperature.item() == pytest.approx(0.005, rel=1e-6)
    assert list(loss_fn.parameters()) == []


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda:0", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA GPU"))])
@pytest.mark.parametrize("learnable", [False, True])
def test_log_scale_is_created_on_the_embedders_device(device, learnable):
    embedder = SimpleNamespace(device=torch.device(device))
    loss_fn = InfoNCELoss(embedder, temperature=0.05, learnable_temperature=learnable)
    assert loss_fn.log_scale.device == embedder.device
    assert loss_fn.temperature.device == embedder.device
