"""LoRA helpers: continuing from a saved adapter, the shared-mask dropout and its boolean-mask autograd function."""
from __future__ import annotations

import warnings

import pytest
import torch

from embedtune.config import LoraConfig
from embedtune.errors import ModelError
from embedtune.models.embedder import Embedder
from embedtune.models.lora import KeepMask, SharedMaskDropout, attach_lora


def test_attach_lora_continues_from_a_saved_adapter_trainably(tiny_model_dir, tiny_adapter_dir):
    from safetensors.torch import load_file
    from transformers import AutoModel

    saved = load_file(tiny_adapter_dir / "adapter_model.safetensors")
    model = attach_lora(AutoModel.from_pretrained(tiny_model_dir), LoraConfig(r=4, targets="qv"),
                        str(tiny_adapter_dir))
    loaded = {n.replace(".default", ""): p for n, p in model.named_parameters() if "lora_" in n}
    assert loaded.keys() == saved.keys() and len(saved) == 16  # the adapter's r=8 on q, k, v, o; not the config's
    assert all(p.requires_grad for p in loaded.values())
    assert all(torch.equal(loaded[k].detach(), saved[k]) for k in saved)
    assert [n for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n] == []
    with pytest.raises(ModelError, match="adapter not found"):
        attach_lora(AutoModel.from_pretrained(tiny_model_dir), LoraConfig(), str(tiny_model_dir))


def test_keep_mask_matches_multiplying_by_the_scaled_mask_in_value_and_gradient():
    torch.manual_seed(0)
    x = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    keep = torch.rand(6, 5) > 0.3
    ours = KeepMask.apply(x, keep, 1 / 0.7)
    reference = x * (keep.double() / 0.7)
    assert torch.equal(ours, reference)
    grad = torch.randn(6, 5, dtype=torch.float64)
    (g_ours,) = torch.autograd.grad(ours, x, grad)
    (g_ref,) = torch.autograd.grad(reference, x, grad)
    assert torch.equal(g_ours, g_ref)
    assert torch.autograd.gradcheck(lambda t: KeepMask.apply(t, keep, 2.0), (x,))


def test_keep_mask_saves_a_boolean_mask_not_a_copy_of_it():
    x = torch.randn(64, 64, dtype=torch.bfloat16, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        KeepMask.apply(x, torch.rand(64, 64) > 0.1, 1 / 0.9)
    assert [t.dtype for t in saved] == [torch.bool]


def test_shared_mask_dropout_drops_at_rate_p_and_shares_one_output():
    torch.manual_seed(0)
    shared: dict = {}
    q, v = SharedMaskDropout(0.1, shared), SharedMaskDropout(0.1, shared)
    x = torch.ones(200, 500)
    out = q(x)
    assert v(x) is out  # same input: one dropped copy serves every branch
    assert abs(float((out == 0).float().mean()) - 0.1) < 0.005
    assert torch.allclose(out[out != 0], torch.full_like(out[out != 0], 1 / 0.9))
    q.eval()
    assert q(x) is x


def test_wrapping_a_model_prints_no_deprecation_warning_from_pefts_probes(tiny_model_dir, tiny_adapter_dir):
    from transformers import AutoModel

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # the project's pytest settings ignore FutureWarning; this test may not
        attach_lora(AutoModel.from_pretrained(tiny_model_dir), LoraConfig())
        attach_lora(AutoModel.from_pretrained(tiny_model_dir), LoraConfig(), str(tiny_adapter_dir))
        Embedder(str(tiny_model_dir), adapter=str(tiny_adapter_dir), precision="fp32", device="cpu")  # merged
    assert [str(w.message) for w in caught if "is_gradient_checkpointing" in str(w.message)] == []
