"""EOS handling, padding invariance and batching of the Embedder, on tiny Gemma3/Phi/Llama models."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from embedtune.errors import ConfigError, ModelError
from embedtune.models.embedder import Embedder, last_token_index

TEXTS = ["A man is playing a guitar.", "x", "the quick brown fox jumps over the lazy dog", "hello world !",
         "A child reads a big old book at the table, in the house ."]


def fp32_embedder(path, **kwargs) -> Embedder:
    return Embedder(str(path), precision="fp32", device="cpu", **kwargs)


def test_eos_is_the_last_real_token_exactly_once(tiny_arch_dir):
    embedder = fp32_embedder(tiny_arch_dir)
    for side in ("left", "right"):
        batch = embedder.pad(embedder.tokenize(TEXTS), padding_side=side)
        last = last_token_index(batch["attention_mask"])
        for row in range(len(TEXTS)):
            real = batch["input_ids"][row][batch["attention_mask"][row].bool()].tolist()
            assert real[-1] == embedder.eos_id
            assert real.count(embedder.eos_id) == 1
            assert batch["input_ids"][row, last[row]].item() == embedder.eos_id


def test_left_and_right_padding_give_the_same_vectors(tiny_arch_dir):
    embedder = fp32_embedder(tiny_arch_dir)
    ids = embedder.tokenize(TEXTS)
    with torch.no_grad():
        right = embedder.embed_batch(embedder.pad(ids, "right"))
        left = embedder.embed_batch(embedder.pad(ids, "left"))
    assert (right - left).abs().max().item() <= 1e-5


def test_a_batch_gives_the_same_vectors_as_one_text_at_a_time(tiny_arch_dir):
    embedder = fp32_embedder(tiny_arch_dir)
    together = embedder.encode(TEXTS, batch_size=len(TEXTS))
    alone = np.stack([embedder.encode([t])[0] for t in TEXTS])
    assert np.abs(together - alone).max() <= 1e-5
    assert np.allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)


def test_eos_appended_once_even_when_the_tokenizer_adds_it(tiny_model_dir, tiny_tokenizer):
    from tokenizers import processors

    tokenizer = type(tiny_tokenizer).from_pretrained(tiny_model_dir)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", bos), ("<eos>", eos)])
    assert tokenizer("hello world")["input_ids"][-1] == eos  # the tokenizer now appends EOS itself
    from transformers import AutoModel

    embedder = Embedder(AutoModel.from_pretrained(tiny_model_dir), tokenizer=tokenizer, precision="fp32")
    for ids in embedder.tokenize(TEXTS):
        assert ids[-1] == eos and ids.count(eos) == 1


def test_no_chat_template_is_applied(tiny_model_dir):
    embedder = fp32_embedder(tiny_model_dir)
    assert embedder.tokenizer.chat_template  # the fixture tokenizer ships one on purpose
    ids = embedder.tokenize(["hello world"])[0]
    assert embedder.tokenizer.convert_ids_to_tokens(ids) == ["<bos>", "hello", "world", "<eos>"]


def test_prompt_template_wraps_the_text(tiny_model_dir):
    embedder = fp32_embedder(tiny_model_dir, prompt="{} is a sentence")
    plain = fp32_embedder(tiny_model_dir)
    assert embedder.tokenize(["hello world"]) == plain.tokenize(["hello world is a sentence"])
    prefix = fp32_embedder(tiny_model_dir, prompt="the text ")
    assert prefix.tokenize(["x"]) == plain.tokenize(["the text x"])


def test_mean_and_cls_pooling_ignore_padding(tiny_model_dir):
    for pooling in ("mean", "cls"):
        embedder = fp32_embedder(tiny_model_dir, pooling=pooling)
        assert embedder.eos_id is None
        ids = embedder.tokenize(TEXTS)
        with torch.no_grad():
            right = embedder.embed_batch(embedder.pad(ids, "right"))
            alone = torch.cat([embedder.embed_batch(embedder.pad([x])) for x in ids])
        assert (right - alone).abs().max().item() <= 1e-5


def test_missing_eos_fails_loudly_at_load(tiny_model_dir, monkeypatch):
    monkeypatch.setattr(Embedder, "tokenize", lambda self, texts: [[5, 6, 7] for _ in texts])
    with pytest.raises(ModelError, match="EOS"):
        fp32_embedder(tiny_model_dir)


def test_unknown_pooling_is_rejected(tiny_model_dir):
    with pytest.raises(ConfigError, match="pooling"):
        fp32_embedder(tiny_model_dir, pooling="max")
