"""Matryoshka: the weighted sum of the contrastive loss over truncated, re-normalised prefixes of the vectors."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from embedtune.config import Config, TrainConfig
from embedtune.errors import ConfigError
from embedtune.losses import build_loss
from embedtune.losses.gradcache import CachedInfoNCELoss
from embedtune.losses.infonce import InfoNCELoss, compute_loss_from_embeddings
from embedtune.losses.matryoshka import MatryoshkaObjective, sizes_and_weights, truncated
from tests.losses.test_infonce import _batch, _lora_embedder, _loss_and_grads, close_relative_to_scale


def _infonce_by_hand(anchors: list[list[float]], positives: list[list[float]], negatives: list[list[float]],
                     t: float) -> float:
    """Mean over anchors of -cos(a, own p)/t + log sum exp(cos(a, every p and n)/t), in plain Python."""
    def unit(v):
        norm = math.sqrt(sum(x * x for x in v))
        return [x / norm for x in v]

    def cos(a, b):
        return sum(x * y for x, y in zip(unit(a), unit(b), strict=True))

    total = 0.0
    for i, a in enumerate(anchors):
        scores = [cos(a, c) / t for c in positives + negatives]
        total += -scores[i] + math.log(sum(math.exp(s) for s in scores))
    return total / len(anchors)


ANCHORS = [[1.0, 0.0, 2.0, -1.0], [0.0, 1.0, -1.0, 3.0]]
POSITIVES = [[1.0, 1.0, 0.0, 1.0], [0.5, 1.0, 1.0, 0.0]]
NEGATIVES = [[-1.0, 0.0, 1.0, 1.0], [1.0, 0.2, 0.0, -2.0]]


def _tensors():
    return tuple(F.normalize(torch.tensor(rows), dim=-1) for rows in (ANCHORS, POSITIVES, NEGATIVES))


def test_loss_equals_the_weighted_hand_computation_over_prefixes():
    t = 0.1
    expected = sum(w * _infonce_by_hand([r[:d] for r in ANCHORS], [r[:d] for r in POSITIVES],
                                        [r[:d] for r in NEGATIVES], t) for d, w in ((2, 0.5), (4, 2.0)))
    objective = MatryoshkaObjective(*sizes_and_weights([4, 2], [2.0, 0.5]))  # given out of order: paired, sorted
    assert objective.dims == (2, 4) and objective.weights == (0.5, 2.0)
    loss = objective(*_tensors(), t)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # The first two dimensions alone score differently from the whole vector: the truncation is real.
    assert _infonce_by_hand([r[:2] for r in ANCHORS], [r[:2] for r in POSITIVES], [r[:2] for r in NEGATIVES], t) != \
        pytest.approx(_infonce_by_hand(ANCHORS, POSITIVES, NEGATIVES, t), rel=1e-3)


def test_the_full_width_alone_at_weight_one_is_the_plain_loss():
    anchors, positives, negatives = _tensors()
    plain = compute_loss_from_embeddings(anchors, positives, negatives, 0.05, symmetric=True, hardness=2.0)
    matryoshka = MatryoshkaObjective((4,), (1.0,))(anchors, positives, negatives, 0.05, symmetric=True, hardness=2.0)
    assert matryoshka.item() == pytest.approx(plain.item(), rel=1e-6)


def test_truncated_prefixes_are_unit_vectors():
    vectors = torch.tensor([[3.0, 4.0, 12.0], [0.0, 2.0, 1.0]])
    cut = truncated(vectors, 2)
    assert torch.allclose(cut, torch.tensor([[0.6, 0.8], [0.0, 1.0]]))


@pytest.mark.parametrize("dims,weights,width,message", [
    ([64, 64], None, 64, r"distinct whole numbers >= 1, got \[64, 64\]"),
    ([0, 32], None, 64, r"got \[0, 32\]"),
    ([-8], None, 64, r"got \[-8\]"),
    ([32, 128], None, 64, "128 is above the model's width 64"),
    ([16, 32], [1.0], 64, r"one weight per size: got \[1.0\] for \[16, 32\]"),
    ([], None, 64, "empty"),
])
def test_bad_sizes_are_one_line_errors_naming_the_value(dims, weights, width, message):
    with pytest.raises(ConfigError, match=message) as caught:
        sizes_and_weights(dims, weights, width)
    assert "\n" not in str(caught.value)


def test_build_loss_checks_the_sizes_against_the_model_width():
    embedder = SimpleNamespace(hidden_size=64, device="cpu")
    with pytest.raises(ConfigError, match="train.matryoshka_dims: 96 is above the model's width 64"):
        build_loss(TrainConfig(matryoshka_dims=[32, 96]), embedder)
    loss = build_loss(TrainConfig(matryoshka_dims=[64, 16], matryoshka_weights=[1.0, 0.25], loss="cached"), embedder)
    assert isinstance(loss, CachedInfoNCELoss) and loss.objective == MatryoshkaObjective((16, 64), (0.25, 1.0))
    assert build_loss(TrainConfig(), embedder).objective is compute_loss_from_embeddings


@pytest.mark.parametrize("dropout,plain_chunk", [(0.0, 4096), (0.1, 24)])  # dropout: the same chunks, same masks
def test_cached_matryoshka_loss_equals_the_plain_one_with_the_same_gradients(tiny_model_dir, dropout, plain_chunk):
    embedder = _lora_embedder(tiny_model_dir, dropout)
    batch = _batch(embedder)
    objective = MatryoshkaObjective((8, 32, 64), (1.0, 0.5, 1.0))
    plain = InfoNCELoss(embedder, chunk_tokens=plain_chunk, packing=False, objective=objective)
    cached = CachedInfoNCELoss(embedder, mini_batch_tokens=24, packing=False, objective=objective)
    loss_a, grads_a = _loss_and_grads(plain, batch, seed=7)
    loss_b, grads_b = _loss_and_grads(cached, batch, seed=7)
    loss_c, grads_c = _loss_and_grads(InfoNCELoss(embedder, chunk_tokens=plain_chunk, packing=False), batch, seed=7)
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 0
    for name in grads_a:
        assert close_relative_to_scale(grads_a[name], grads_b[name]), name
        assert not close_relative_to_scale(grads_a[name], grads_b[name] * 1.01), name
    # Not the plain loss in disguise: other numbers, other gradients.
    assert loss_c != pytest.approx(loss_a, rel=1e-3)
    assert any(not close_relative_to_scale(grads_a[n], grads_c[n]) for n in grads_a)


@pytest.mark.parametrize("field,value,message", [
    ("matryoshka_dims", "64,64", r"train.matryoshka_dims must be distinct whole numbers >= 1, got \[64, 64\]"),
    ("matryoshka_dims", "0,64", r"got \[0, 64\]"),
    ("matryoshka_dims", "-32", r"got \[-32\]"),
    ("matryoshka_dims", "64,abc", "expected int, got 'abc'"),
    ("matryoshka_dims", "6.5", "expected int, got '6.5'"),
    ("matryoshka_dims", [64, [128]], "expected a list of names"),
    ("matryoshka_weights", "1,-1", r"train.matryoshka_weights must be finite numbers > 0, got \[1.0, -1.0\]"),
    ("matryoshka_weights", "1,nan", "must be finite numbers > 0"),
    ("matryoshka_weights", "1,x", "expected float, got 'x'"),
])
def test_bad_config_values_are_one_line_errors(field, value, message):
    with pytest.raises(ConfigError, match=message) as caught:
        Config.from_dict({"train": {field: value}}).validate()
    assert "\n" not in str(caught.value)


def test_weights_must_match_the_sizes_in_number():
    config = Config.from_dict({"train": {"matryoshka_dims": "64,128", "matryoshka_weights": [1.0]}})
    with pytest.raises(ConfigError, match=r"one weight per size of train.matryoshka_dims: got \[1.0\] for \[64, 128\]"):
        config.validate()


def test_sizes_take_a_yaml_list_or_a_comma_string():
    assert Config.from_dict({"train": {"matryoshka_dims": [64, 128]}}).train.matryoshka_dims == [64, 128]
    assert Config.from_dict({"train": {"matryoshka_dims": "64, 128,256"}}).train.matryoshka_dims == [64, 128, 256]
    assert Config.from_dict({"train": {"matryoshka_weights": "1,0.5"}}).train.matryoshka_weights == [1.0, 0.5]
