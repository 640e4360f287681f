"""Padding-free packing: layout, rows, and the fallback when a model cannot take it."""
from __future__ import annotations

import logging

import torch

from embedtune.errors import ModelError
from embedtune.models import packing
from embedtune.models.embedder import Embedder
from embedtune.models.packing import pack

TEXTS = ["A man is playing a guitar.", "x", "the quick brown fox jumps over the lazy dog " * 2, "hello world !"]


def test_pack_restarts_positions_and_finds_each_last_token():
    ids = [[5, 6, 7], [8], [9, 10]]
    layout = pack(ids, [[0, 2], [1]])
    assert layout.input_ids.tolist() == [[5, 6, 7, 9, 10, 8]]
    assert layout.position_ids.tolist() == [[0, 1, 2, 0, 1, 0]]
    assert layout.last_index.tolist() == [2, 4, 5]
    first = layout.groups[0]
    assert (first.start, first.end, first.n_texts, first.width) == (0, 5, 2, 3)
    assert first.slots.tolist() == [0, 1, 2, 3, 4]
    # second text of the group: keys beyond its 2 tokens are never attended
    assert first.allowed[1, 0].tolist() == [[True, False, False], [True, True, False], [True, True, False]]


def test_padded_slots_gather_from_a_zero_row_and_the_tail_rounds_the_row():
    ids = [[5, 6, 7], [8], [9, 10]]
    layout = pack(ids, [[0, 2], [1]], multiple=8, pad_id=0)
    assert layout.input_ids.tolist() == [[5, 6, 7, 9, 10, 8, 0, 0]]
    assert layout.position_ids.tolist() == [[0, 1, 2, 0, 1, 0, 0, 1]]
    assert layout.tail == 2 and layout.last_index.tolist() == [2, 4, 5]
    # group 0 pads text 2 (2 tokens) to width 3: its third slot reads the zero row one past the span (5)
    assert layout.groups[0].sources.tolist() == [0, 1, 2, 3, 4, 5]


def test_tail_padding_changes_no_vector_and_no_gradient(tiny_arch_dir):
    embedder = Embedder(str(tiny_arch_dir), precision="fp32", device="cpu")
    ids = embedder.tokenize(TEXTS)
    results = []
    for multiple in (1, 64):
        embedder.model.zero_grad()
        layout = pack(ids, [list(range(len(ids)))], multiple, embedder.pad_id)
        with packing.packed_attention(embedder.model):
            hidden = embedder.model(input_ids=layout.input_ids, position_ids=layout.position_ids, use_cache=False,
                                    packing=layout).last_hidden_state
        hidden[0, layout.last_index].square().sum().backward()
        grads = [p.grad.clone() for p in embedder.model.parameters() if p.grad is not None]
        results.append((hidden[0, layout.last_index].detach(), grads, layout.input_ids.shape[1]))
    (plain, plain_grads, n_plain), (padded, padded_grads, n_padded) = results
    assert n_padded == 64 and n_plain < 64
    assert torch.allclose(plain, padded, atol=1e-5)
    # Relative to the gradients' scale: summation order differs between CPUs' kernels (AVX2, AVX-512, AMX, ARM). With
    # oneDNN limited to AVX2, near-zero gradients of the tiny Gemma differed by ~2e-5 absolute (1e-5 of the largest);
    # a tail leaking into attention changes them by the order of the gradients themselves.
    scale = max(float(b.abs().max()) for b in padded_grads)
    assert all(float((a - b).abs().max()) <= 1e-4 * scale for a, b in zip(plain_grads, padded_grads, strict=True))


def test_packed_vectors_equal_padded_ones_and_the_config_is_restored(tiny_arch_dir, tiny_device):
    embedder = Embedder(str(tiny_arch_dir), precision="fp32", device=tiny_device)
    ids = embedder.tokenize(TEXTS)
    with torch.no_grad():
        padded = embedder.embed_tokens(ids, packing=False)
        packed = embedder.embed_tokens(ids, max_tokens=20, packing=True)
    assert embedder.packable and packed.device.type == tiny_device
    assert torch.allclose(padded, packed, atol=1e-5)
    assert embedder.model.config._attn_implementation == "sdpa"


def test_a_model_that_cannot_pack_falls_back_with_a_warning(tiny_arch_dir, monkeypatch, caplog):
    def refuse(module, *args, **kwargs):
        raise ModelError("no packing here")

    monkeypatch.setattr(packing, "packed_attention_forward", refuse)
    embedder = Embedder(str(tiny_arch_dir), precision="fp32", device="cpu")
    with caplog.at_level(logging.WARNING):
        assert not embedder.packable
    assert "padded chunks" in caplog.text
    assert embedder.model.config._attn_implementation == "sdpa"


def test_encoders_never_pack(tiny_tokenizer):
    from transformers import BertConfig, BertModel

    model = BertModel(BertConfig(vocab_size=len(tiny_tokenizer), hidden_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=64))
    assert not Embedder(model, tokenizer=tiny_tokenizer, precision="fp32", device="cpu").packable
