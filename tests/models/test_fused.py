"""Fused Gemma RMSNorm/GeGLU: identical forward values, the same gradients, only where they apply."""
from __future__ import annotations

import shutil

import pytest
import torch

from embedtune.config import LoraConfig
from embedtune.models import kernels
from embedtune.models.embedder import Embedder
from embedtune.models.fused import fuse_gemma, unfuse_gemma
from embedtune.models.lora import attach_lora

# torch's inductor builds its CPU kernels with a C++ compiler; without one the kernels run eager (one warning).
HAS_COMPILER = any(shutil.which(c) for c in ("c++", "g++", "clang++"))
TEXTS = ["A man is playing a guitar.", "x", "the quick brown fox jumps over the lazy dog", "hello world !"]


def vectors_and_grads(embedder: Embedder) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    embedder.model.zero_grad(set_to_none=True)
    vectors = embedder.embed_batch(embedder.pad(embedder.tokenize(TEXTS)))
    (vectors * torch.linspace(-1, 1, vectors.shape[1])).sum().backward()
    return vectors.detach(), {n: p.grad.clone() for n, p in embedder.model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_fused_gemma_matches_transformers(tiny_arch_dir, precision, compiled, monkeypatch):
    if compiled and not HAS_COMPILER:
        pytest.skip("no C++ compiler on this machine: the compiled kernels cannot be built")
    monkeypatch.setenv(kernels.ENV, "1" if compiled else "0")
    embedder = Embedder(str(tiny_arch_dir), precision=precision, device="cpu")
    unfuse_gemma(embedder.model)  # the reference: transformers' own modules
    embedder.model = attach_lora(embedder.model, LoraConfig(dropout=0.0))
    with torch.no_grad():  # non-zero lora_B so that gradients flow through every layer
        for name, p in embedder.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    embedder.model.train()
    vectors, grads = vectors_and_grads(embedder)
    changed = fuse_gemma(embedder.model, compile_kernels=compiled)
    if "gemma" not in embedder.model.config.model_type:
        assert changed == 0
        return
    assert changed == 2 * (4 + 2 + 1) + 1  # per layer 4 norms + q/k norms + the MLP; the final norm
    fused, fused_grads = vectors_and_grads(embedder)
    if compiled:
        assert kernels.RMS_NORM_FORWARD.compiled is not None and not kernels.RMS_NORM_FORWARD.failed
    if compiled:  # the compiled kernels may sum a row in another order: the last bit can differ
        assert torch.allclose(fused, vectors, atol=1e-6 if precision == "fp32" else 1e-2, rtol=0)
    else:
        assert torch.equal(fused, vectors)  # eager: forward values are bit-identical
    for name, grad in grads.items():
        if precision == "fp32":
            assert torch.allclose(fused_grads[name], grad, atol=1e-5, rtol=1e-5), name
        else:  # bf16 roundings differ between the paths and add up through the layers: compare whole tensors
            assert float((fused_grads[name] - grad).norm() / grad.norm()) < 2e-2, name


def test_trainable_norms_get_their_gradients(tiny_arch_dir):
    embedder = Embedder(str(tiny_arch_dir), precision="fp32", device="cpu")
    if "gemma" not in embedder.model.config.model_type:
        pytest.skip("Gemma only")
    unfuse_gemma(embedder.model)
    embedder.model.train()
    with torch.no_grad():  # non-zero norm weights, so that a wrong scale gradient would show
        for name, p in embedder.model.named_parameters():
            if "norm" in name:
                p.normal_(0, 0.1)
    vectors, grads = vectors_and_grads(embedder)
    assert fuse_gemma(embedder.model) == 2 * (4 + 2 + 1) + 1  # trainable norms are fused too
    fused, fused_grads = vectors_and_grads(embedder)
    assert torch.allclose(fused, vectors, atol=1e-6)
    norm_grads = [n for n in grads if "norm" in n]
    assert norm_grads
    for name in norm_grads:
        assert torch.allclose(fused_grads[name], grads[name], atol=1e-5, rtol=1e-4), name


def test_embedder_fuses_gemma_on_load_and_unfuse_restores(tiny_arch_dir):
    embedder = Embedder(str(tiny_arch_dir), precision="fp32", device="cpu")
    fused = [m for m in embedder.model.modules() if "forward" in m.__dict__]
    if "gemma" not in embedder.model.config.model_type:
        assert not fused
        return
    assert len(fused) == 2 * (4 + 2 + 1) + 1
    assert all(m.compile_kernels == embedder.backend.compile_kernels for m in fused)  # the backend's choice
    unfuse_gemma(embedder.model)
    assert not [m for m in embedder.model.modules() if "forward" in m.__dict__]
