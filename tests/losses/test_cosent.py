"""CoSENT's ranking term: hand computations, the peer's CoSENTLoss, and its place in the InfoNCE loss."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from embedtune.losses.cosent import ranked_groups_loss
from embedtune.losses.infonce import compute_loss_from_embeddings


def test_one_pair_above_another_is_a_softplus_of_their_scaled_difference():
    loss = ranked_groups_loss([torch.tensor([0.75]), torch.tensor([0.5])], 20.0)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(20 * (0.5 - 0.75))), rel=1e-6)
    swapped = ranked_groups_loss([torch.tensor([0.5]), torch.tensor([0.75])], 20.0)
    assert swapped.item() == pytest.approx(math.log(1 + math.exp(20 * 0.25)), rel=1e-6)  # the wrong order costs


def test_three_groups_equal_the_double_sum_over_every_higher_and_lower_pair():
    groups = [torch.tensor([0.9, 0.7]), torch.tensor([0.6, 0.75, 0.2]), torch.tensor([0.1, 0.65])]
    scale = 7.0
    terms = [math.exp(scale * (lo - hi)) for g, higher in enumerate(groups) for lower in groups[g + 1:]
             for hi in higher.tolist() for lo in lower.tolist()]
    assert len(terms) == 2 * 3 + 2 * 2 + 3 * 2
    assert ranked_groups_loss(groups, scale).item() == pytest.approx(math.log(1 + sum(terms)), rel=1e-6)


def test_equals_sentence_transformers_cosent_over_the_same_pairs():
    losses = pytest.importorskip("sentence_transformers.sentence_transformer.losses")
    g = torch.Generator().manual_seed(0)
    anchors, positives, negatives = (F.normalize(torch.randn(6, 16, generator=g), dim=-1) for _ in range(3))
    peer = losses.CoSENTLoss.__new__(losses.CoSENTLoss)  # its constructor wants a model; the loss needs none
    torch.nn.Module.__init__(peer)
    peer.similarity_fct, peer.scale = F.cosine_similarity, 20.0
    labels = torch.tensor([1.0] * 6 + [0.0] * 6)
    expected = peer.compute_loss_from_embeddings([torch.cat([anchors, anchors]), torch.cat([positives, negatives])],
                                                 labels)
    ours = ranked_groups_loss([(anchors * positives).sum(-1), (anchors * negatives).sum(-1)], 20.0)
    assert ours.item() == pytest.approx(expected.item(), rel=1e-5)


def test_infonce_adds_the_weighted_term_over_positive_and_hard_negative_pairs():
    g = torch.Generator().manual_seed(2)
    anchors, positives, negatives = (F.normalize(torch.randn(5, 8, generator=g), dim=-1) for _ in range(3))
    plain = compute_loss_from_embeddings(anchors, positives, negatives, 0.05, symmetric=True)
    ranked = ranked_groups_loss([(anchors * positives).sum(-1), (anchors * negatives).sum(-1)], 1 / 0.05)
    ours = compute_loss_from_embeddings(anchors, positives, negatives, 0.05, symmetric=True, cosent=0.3)
    assert ranked.item() > 1.0
    assert ours.item() == pytest.approx(plain.item() + 0.3 * ranked.item(), rel=1e-6)


def test_its_gradient_raises_positive_pairs_that_score_below_another_triplets_negative():
    # Triplet 0's positive pair (0.3) scores below triplet 1's negative pair (0.6): InfoNCE, which compares only
    # within an anchor's row, is indifferent to that; CoSENT pushes the first pair up and the second down.
    cosines = [torch.tensor([0.3, 0.9], requires_grad=True), torch.tensor([0.0, 0.6], requires_grad=True)]
    ranked_groups_loss(cosines, 20.0).backward()
    assert cosines[0].grad[0] < 0 and cosines[1].grad[1] > 0
    assert abs(cosines[0].grad[0]) > 10 * abs(cosines[0].grad[1])  # the pair in the wrong order gets the push
