"""Every architecture on every fast path, and the special-token habits of the real tokenizers.

Matrix (tiny random models, loaded from HF folders with trust_remote_code off):

| architecture | loaded attention | packs | fused Gemma ops | LoRA targets (attention) |
|---|---|---|---|---|
| Gemma-1 (GemmaModel) | sdpa | yes | 7 (norms + GeGLU) | q, k, v, o_proj |
| Gemma-2 (Gemma2Model) | eager (transformers refuses SDPA: softcapping) | yes, eager swapped | 11 | q, k, v, o_proj |
| Gemma-3 (Gemma3TextModel) | sdpa | yes | 15 | q, k, v, o_proj |
| Phi (PhiModel) | sdpa | yes | 0 | q, k, v_proj, dense |
| Llama, Qwen2, Mistral | sdpa | yes | 0 | q, k, v, o_proj |
| MiniCPM (models/minicpm.py) | sdpa | yes | 0 | q, k, v, o_proj |
"""
from __future__ import annotations

import pytest
import torch

from embedtune.errors import ModelError
from embedtune.models import fused, kernels
from embedtune.models.attention import NAME, swappable_configs, training_attention
from embedtune.models.embedder import Embedder
from embedtune.models.lora import lora_targets

TEXTS = ["A man is playing a guitar.", "x", "the quick brown fox jumps over the lazy dog " * 2, "hello world !",
         "A child reads a big old book at the table, in the house ."]
QKVO = ["self_attn.k_proj", "self_attn.o_proj", "self_attn.q_proj", "self_attn.v_proj"]
# architecture: (model class, attention after AutoModel load, fused Gemma modules, LoRA targets)
MATRIX = {
    "gemma": ("GemmaModel", "sdpa", 7, QKVO),  # 2 layers x (2 norms + GeGLU) + final norm
    "gemma2": ("Gemma2Model", "eager", 11, QKVO),  # 2 x (4 norms + GeGLU) + 1
    "gemma3": ("Gemma3TextModel", "sdpa", 15, QKVO),  # 2 x (4 norms + q/k norms + GeGLU) + 1
    "phi": ("PhiModel", "sdpa", 0, ["self_attn.dense", "self_attn.k_proj", "self_attn.q_proj", "self_attn.v_proj"]),
    "llama": ("LlamaModel", "sdpa", 0, QKVO),
    "minicpm": ("MiniCPMModel", "sdpa", 0, QKVO),
    "qwen2": ("Qwen2Model", "sdpa", 0, QKVO),
    "mistral": ("MistralModel", "sdpa", 0, QKVO),
}


@pytest.fixture(autouse=True)
def eager_kernels(monkeypatch):
    """Fused Gemma ops without compiling their loops: the same values, no minutes of compilation on a small CPU."""
    monkeypatch.setenv(kernels.ENV, "0")


def fused_modules(model: torch.nn.Module) -> int:
    return sum(getattr(m.__dict__.get("forward"), "__func__", None) in (fused._norm_forward, fused._mlp_forward)
               for m in model.modules())


@pytest.mark.parametrize("kind", list(MATRIX))
def test_each_architecture_loads_natively_fuses_where_gemma_and_packs(kind, tiny_architecture_dir):
    from transformers import AutoModel

    from embedtune.models.loading import register_native_architectures

    folder = tiny_architecture_dir(kind)
    class_name, attention, n_fused, targets = MATRIX[kind]
    register_native_architectures()
    assert AutoModel.from_pretrained(folder).config._attn_implementation == attention
    embedder = Embedder(str(folder), precision="fp32", device="cpu")
    assert type(embedder.model).__name__ == class_name
    assert fused_modules(embedder.model) == n_fused
    assert lora_targets(embedder.model, "attention") == targets
    assert embedder.packable and len(swappable_configs(embedder.model)) == 1
    ids = embedder.tokenize(TEXTS)
    with torch.no_grad():
        right = embedder.embed_tokens(ids, packing=False)
        left = embedder.embed_batch(embedder.pad(ids, "left"))
        packed = embedder.embed_tokens(ids, max_tokens=20, packing=True)  # several rows
    assert torch.allclose(right, left, atol=1e-5)
    assert torch.allclose(right, packed, atol=1e-5)
    assert embedder.model.config._attn_implementation == attention  # restored after packing


@pytest.mark.parametrize("kind", list(MATRIX))
def test_short_text_attention_gives_the_loaded_attention_values_and_gradients(kind, tiny_architecture_dir):
    embedder = Embedder(str(tiny_architecture_dir(kind)), precision="fp32", device="cpu")
    embedder.model.train()
    batch = embedder.pad(embedder.tokenize(TEXTS), "left")

    def vectors_and_grads():
        embedder.model.zero_grad(set_to_none=True)
        vectors = embedder.embed_batch(batch)
        (vectors * torch.linspace(-1, 1, vectors.shape[1])).sum().backward()
        return vectors.detach(), [p.grad.clone() for p in embedder.model.parameters() if p.grad is not None]

    reference, reference_grads = vectors_and_grads()
    with training_attention(embedder.model):
        assert embedder.model.config._attn_implementation == NAME
        ours, grads = vectors_and_grads()
    assert torch.allclose(ours, reference, atol=1e-5)
    assert len(grads) == len(reference_grads)
    assert all(torch.allclose(a, b, atol=1e-5, rtol=1e-4) for a, b in zip(grads, reference_grads, strict=True))


@pytest.mark.parametrize("kind", list(MATRIX))
def test_lora_trains_one_step(kind, tiny_architecture_dir, tiny_builders):
    embedder = Embedder(str(tiny_architecture_dir(kind)), precision="fp32", device="cpu")
    before, after = tiny_builders.lora_step(embedder, TEXTS)
    assert after < before
    trained = [n for n, p in embedder.model.named_parameters() if p.requires_grad]
    assert trained and all("lora_" in n for n in trained)


def test_gemma2_packs_exactly_with_softcapping_on_and_a_window_shorter_than_the_texts(tmp_path, tiny_tokenizer,
                                                                                     tiny_builders):
    """Gemma-2 runs eager (transformers refuses SDPA for it); the packed function applies the same softcap and
    sliding window, so packed vectors equal eager padded ones, and both settings visibly change the vectors."""
    vectors, windows = {}, {}
    for name, overrides in {"model": {}, "no softcap": {"attn_logit_softcapping": None},
                            "no window": {"sliding_window": 4096}}.items():
        folder = tmp_path / name.replace(" ", "_")
        tiny_builders.architecture("gemma2", len(tiny_tokenizer), **overrides).save_pretrained(folder)
        tiny_tokenizer.save_pretrained(folder)
        embedder = Embedder(str(folder), precision="fp32", device="cpu")
        assert embedder.model.config._attn_implementation == "eager" and embedder.packable
        ids = embedder.tokenize(TEXTS)
        windows[name] = embedder.model.config.sliding_window
        with torch.no_grad():
            vectors[name] = padded = embedder.embed_tokens(ids, packing=False)
            packed = embedder.embed_tokens(ids, max_tokens=20, packing=True)
            with training_attention(embedder.model):  # inference under the training attention: still softcapped
                short = embedder.embed_tokens(ids, packing=False)
        assert torch.allclose(padded, packed, atol=1e-5), name
        assert torch.allclose(padded, short, atol=1e-5), name
    assert windows["model"] == 3 and sum(len(x) > 3 for x in ids) == len(TEXTS) - 1  # all but "x" outgrow it
    assert (vectors["model"] - vectors["no softcap"]).abs().max() > 0.05
    assert (vectors["model"] - vectors["no window"]).abs().max() > 0.05


# ---- the real tokenizers' special tokens ---------------------------------------------------------------------

@pytest.mark.parametrize("style", ["phi2", "phi2_bos", "gemma", "llama3", "qwen"])
def test_each_tokenizer_style_ends_every_text_with_exactly_one_eos(style, tiny_builders):
    tokenizer = tiny_builders.tokenizer_like(style)
    _, bos, eos, pad, template = tiny_builders.tokenizer_styles[style]
    embedder = Embedder(tiny_builders.llama(len(tokenizer)), tokenizer=tokenizer, precision="fp32", device="cpu")
    assert embedder.eos_id == tokenizer.convert_tokens_to_ids(eos) and not embedder.tokenizer_adds_eos
    assert embedder.pad_id == tokenizer.convert_tokens_to_ids(pad or eos)  # no pad token: pad with EOS
    for limit in (None, 4):
        embedder.max_length = limit or 512
        for text, ids in zip(TEXTS, embedder.tokenize(TEXTS), strict=True):
            body = ids[1:] if template else ids  # the BOS, when one is added, may be the EOS token (phi2_bos)
            assert ids[-1] == embedder.eos_id and body.count(embedder.eos_id) == 1, (text, ids)
            assert len(ids) <= embedder.max_length
            if template:
                assert ids[0] == tokenizer.convert_tokens_to_ids(bos)
    embedder.max_length = 512
    vectors = embedder.encode(TEXTS)
    assert vectors.shape == (len(TEXTS), 64) and abs(float((vectors ** 2).sum(1).mean()) - 1) < 1e-5
    ids = embedder.tokenize(TEXTS)
    with torch.no_grad():
        padded = embedder.embed_tokens(ids, packing=False)
        packed = embedder.embed_tokens(ids, max_tokens=20, packing=True)
    assert embedder.packable and torch.allclose(padded, packed, atol=1e-5)
    assert torch.allclose(torch.from_numpy(vectors), padded, atol=1e-5)


def test_an_eos_inside_the_encoded_text_is_still_refused(tiny_builders):
    """The leading-BOS allowance covers only position 0: an EOS the tokenizer puts after the BOS fails the check."""
    from tokenizers import processors

    tokenizer = tiny_builders.tokenizer_like("gemma")
    ids = tokenizer.convert_tokens_to_ids(["<bos>", "<eos>"])
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> <eos> $A", special_tokens=list(zip(["<bos>", "<eos>"], ids, strict=True)))
    with pytest.raises(ModelError, match="exactly one EOS"):
        Embedder(tiny_builders.llama(len(tokenizer)), tokenizer=tokenizer, precision="fp32", device="cpu")
