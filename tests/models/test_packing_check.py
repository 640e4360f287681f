"""The packing self-check: a model that swallows the packing layout and attends across texts must not pack."""
from __future__ import annotations

import logging

import pytest
import torch
from transformers import AutoTokenizer, LlamaModel

from embedtune.models.attention import use_attention
from embedtune.models.embedder import EOS_CHECK_TEXTS, Embedder


class LeakyLlama(LlamaModel):
    """A remote-code-style model: forward takes **kwargs, drops `packing`, and runs its own attention over the row.

    `leak=None`: plain causal attention over the whole packed row. `leak=k`: text boundaries off by k tokens
    (each text also sees the last k tokens of the text before it), a subtler bug.
    """

    leak: int | None = None

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, **kwargs):
        kwargs.pop("packing", None)
        if attention_mask is None and position_ids is not None and input_ids.shape[0] == 1:
            if self.leak is None:
                attention_mask = torch.ones_like(input_ids)  # a 2D mask: transformers then sees no packed sequences
            else:
                positions = position_ids[0]
                query = torch.arange(len(positions))[:, None]
                key = torch.arange(len(positions))[None, :]
                text_start = query - positions[:, None]
                attention_mask = ((key <= query) & (key >= text_start - self.leak))[None, None]
        with use_attention(self, "sdpa"):  # its own attention, whatever the config names
            return super().forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                   **kwargs)


def leaky_embedder(model_dir, leak: int | None, precision: str) -> Embedder:
    """The tiny Llama's weights in the leaky model."""
    model = LeakyLlama.from_pretrained(model_dir)
    model.leak = leak
    return Embedder(model.eval(), tokenizer=AutoTokenizer.from_pretrained(model_dir), precision=precision,
                    device="cpu")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_real_tiny_models_stay_packable(tiny_arch_dir, precision):
    embedder = Embedder(str(tiny_arch_dir), precision=precision, device="cpu")
    errors = embedder._packing_errors()
    if precision == "fp32":
        assert errors["cross_text"] < 1e-6 and errors["padded"] < 1e-6
    else:
        # bf16: packed rows reproduce a text alone exactly; padded batches round differently (~1e-2 of scale)
        assert errors["cross_text"] < 1e-3 and errors["padded"] < 3e-2 and errors["padded_cosine"] > 0.999
    assert embedder.packable
    assert embedder.model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("leak", [None, 1])
def test_a_model_that_attends_across_texts_is_not_packable(tiny_model_dir, leak, precision, caplog):
    embedder = leaky_embedder(tiny_model_dir, leak, precision)
    errors = embedder._packing_errors()
    assert errors["cross_text"] > 0.1  # measured: > 0.2 for a one-token leak, > 0.5 for the whole row
    with caplog.at_level(logging.WARNING):
        assert not embedder.packable
    assert "cross text boundaries" in caplog.text and "padded chunks" in caplog.text
    # and training falls back to padded chunks, which match the model's own padded vectors
    ids = embedder.tokenize(["a man is playing a guitar .", "x", "the dog runs in the park"])
    with torch.no_grad():
        assert torch.allclose(embedder.embed_tokens(ids), embedder.embed_tokens(ids, packing=False))


def test_the_old_cosine_check_is_fooled_by_a_one_token_leak(tiny_model_dir):
    """Why the check compares values: the previous rule (cosine with padded > 0.95) let this leak pack."""
    embedder = leaky_embedder(tiny_model_dir, 1, "fp32")
    ids = embedder.tokenize(EOS_CHECK_TEXTS)
    with torch.no_grad():
        cosine = float((embedder.embed_batch(embedder.pad(ids)) * embedder._embed_packed(ids, 4096)).sum(-1).min())
    assert 0.95 < cosine < 0.999
    assert not embedder.packable
