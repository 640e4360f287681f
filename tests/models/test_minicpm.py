"""MiniCPM natively (models/minicpm.py): the same hidden states as OpenBMB's own modeling file, loaded from a
MiniCPMForCausalLM-style checkpoint without remote code, and every fast path Llama gets."""
from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import pytest
import torch

from embedtune.models.attention import training_attention
from embedtune.models.embedder import Embedder
from embedtune.models.lora import lora_targets
from embedtune.models.minicpm import MiniCPMConfig, MiniCPMModel

REFERENCE = Path(__file__).parent / "minicpm_reference"
TEXTS = ["A man is playing a guitar.", "x", "the quick brown fox jumps over the lazy dog " * 2, "hello world !",
         "A child reads a big old book at the table, in the house ."]
# The hub config of openbmb/MiniCPM-2B-sft-bf16, shrunk: auto_map to its remote code, a CausalLM architecture.
HUB_CONFIG = {
    "architectures": ["MiniCPMForCausalLM"], "model_type": "minicpm",
    "auto_map": {"AutoConfig": "configuration_minicpm.MiniCPMConfig", "AutoModel": "modeling_minicpm.MiniCPMModel",
                 "AutoModelForCausalLM": "modeling_minicpm.MiniCPMForCausalLM"},
    "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0, "hidden_act": "silu", "hidden_size": 64,
    "initializer_range": 0.1, "intermediate_size": 128, "max_position_embeddings": 256, "num_attention_heads": 4,
    "num_hidden_layers": 2, "num_key_value_heads": 2, "rms_norm_eps": 1e-05, "rope_scaling": None,
    "torch_dtype": "bfloat16", "transformers_version": "4.36.0", "use_cache": True,
    "scale_emb": 12, "dim_model_base": 16, "scale_depth": 1.4,
}


@pytest.fixture(autouse=True)
def native_classes():
    """What models/loading does before every load; tests calling AutoModel directly need it too."""
    from embedtune.models.loading import register_native_architectures

    register_native_architectures()


@pytest.fixture(scope="module")
def causal_lm_checkpoint(tmp_path_factory, tiny_tokenizer) -> Path:
    """A tiny random MiniCPM saved as the hub's is: keys `model.*` plus `lm_head.weight`, remote-code files present
    (here they fail loudly if anything imports them)."""
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("tiny_minicpm_causal_lm")
    torch.manual_seed(0)
    config = {k: v for k, v in HUB_CONFIG.items() if k not in ("architectures", "auto_map", "model_type",
                                                                "torch_dtype", "transformers_version")}
    model = MiniCPMModel(MiniCPMConfig(**config | {"vocab_size": len(tiny_tokenizer)}))
    weights = {f"model.{name}": tensor.contiguous() for name, tensor in model.state_dict().items()}
    weights["lm_head.weight"] = torch.randn(len(tiny_tokenizer), 64)
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(HUB_CONFIG | {"vocab_size": len(tiny_tokenizer)}))
    for remote in ("configuration_minicpm.py", "modeling_minicpm.py"):
        (path / remote).write_text("raise RuntimeError('the hub remote code ran')\n")
    tiny_tokenizer.save_pretrained(path)
    return path


def _causal_4d_mask(mask, input_shape, inputs_embeds, past_key_values_length=0, sliding_window=None):
    """transformers 4's _prepare_4d_causal_attention_mask: causal and padding mask, additive, dtype's minimum."""
    batch, length = input_shape
    total = length + past_key_values_length
    allowed = torch.ones(length, total, dtype=torch.bool).tril(past_key_values_length)
    allowed = allowed[None, None].expand(batch, 1, length, total)
    if mask is not None:
        allowed = allowed & mask[:, None, None, :].bool()
    dtype = inputs_embeds.dtype
    return torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)


@pytest.fixture(scope="module")
def reference():
    """OpenBMB's modeling_minicpm.py, imported with shims for only what transformers 5 removed."""
    import transformers.pytorch_utils
    import transformers.utils.import_utils

    removed = types.ModuleType("transformers.modeling_attn_mask_utils")
    removed.AttentionMaskConverter = type("AttentionMaskConverter", (), {})  # only its deprecated helpers use it
    removed._prepare_4d_attention_mask = None  # likewise
    removed._prepare_4d_causal_attention_mask = _causal_4d_mask
    removed._prepare_4d_causal_attention_mask_for_sdpa = _causal_4d_mask  # the same mask; SDPA takes it as is
    layernorms = list(transformers.pytorch_utils.ALL_LAYERNORM_LAYERS)  # the module appends its RMSNorm to it
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, removed.__name__, removed)
        patch.setattr(transformers.utils.import_utils, "is_torch_fx_available", lambda: False, raising=False)
        patch.syspath_prepend(str(REFERENCE))  # it imports `configuration_minicpm` absolutely
        spec = importlib.util.spec_from_file_location("minicpm_reference_modeling", REFERENCE / "modeling_minicpm.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        configuration = sys.modules.pop("configuration_minicpm")
    transformers.pytorch_utils.ALL_LAYERNORM_LAYERS[:] = layernorms
    return module, configuration


def reference_model(reference, checkpoint: Path, attention: str):
    from safetensors.torch import load_file

    module, configuration = reference
    settings = json.loads((checkpoint / "config.json").read_text())
    for key in ("architectures", "auto_map", "model_type", "torch_dtype", "transformers_version"):
        settings.pop(key)
    config = configuration.MiniCPMConfig(**settings)
    config.rope_parameters = None  # transformers 5 standardises rope_scaling=None into a dict the old code misreads
    config._attn_implementation = attention
    model = module.MiniCPMModel(config).eval()
    weights = load_file(checkpoint / "model.safetensors")
    model.load_state_dict({k.removeprefix("model."): v for k, v in weights.items() if k.startswith("model.")})
    return model


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_hidden_states_equal_the_original_modeling_file(causal_lm_checkpoint, reference, attention, padding_side):
    from transformers import AutoModel

    theirs = reference_model(reference, causal_lm_checkpoint, attention)
    ours = AutoModel.from_pretrained(causal_lm_checkpoint, dtype=torch.float32, attn_implementation=attention).eval()
    assert isinstance(ours, MiniCPMModel) and type(theirs.layers[0].self_attn).__name__ == (
        "MiniCPMSdpaAttention" if attention == "sdpa" else "MiniCPMAttention")
    embedder = Embedder(ours, tokenizer=_tokenizer(causal_lm_checkpoint), precision="fp32", device="cpu")
    batch = embedder.pad(embedder.tokenize(TEXTS), padding_side)  # embedtune's mask and position ids
    with torch.no_grad():
        mine = ours(**batch).last_hidden_state
        reference_states = theirs(**batch, use_cache=False).last_hidden_state
    real = batch["attention_mask"].bool()
    assert torch.allclose(mine[real], reference_states[real], atol=1e-5, rtol=0)
    assert mine.abs().max() > 1  # not trivially small


def test_the_scalings_matter(causal_lm_checkpoint):
    """The same weights as a plain Llama (scale_emb and scale_depth ignored) give clearly different states."""
    from transformers import AutoModel, LlamaConfig, LlamaModel

    ours = AutoModel.from_pretrained(causal_lm_checkpoint, dtype=torch.float32).eval()
    llama = LlamaModel(LlamaConfig(**{k: v for k, v in ours.config.to_dict().items()
                                      if k not in ("model_type", "scale_emb", "scale_depth", "dim_model_base")}))
    llama.load_state_dict(ours.state_dict())
    ids = torch.tensor([[2, 10, 11, 12, 1]])
    with torch.no_grad():
        assert (ours(input_ids=ids).last_hidden_state - llama.eval()(input_ids=ids).last_hidden_state).abs().max() > 0.1


@pytest.mark.parametrize("trust_remote_code", [False, True])
def test_a_hub_style_checkpoint_loads_natively_without_its_lm_head(causal_lm_checkpoint, trust_remote_code):
    """auto_map names remote code, but the registered class wins either way (the fixture's remote files raise)."""
    from safetensors.torch import load_file
    from transformers import AutoModel

    model, info = AutoModel.from_pretrained(causal_lm_checkpoint, dtype=torch.float32, output_loading_info=True,
                                            trust_remote_code=trust_remote_code)
    assert isinstance(model, MiniCPMModel) and model.config.scale_emb == 12 and model.config.scale_depth == 1.4
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set() and info["mismatched_keys"] == set()
    saved = load_file(causal_lm_checkpoint / "model.safetensors")
    assert all(torch.equal(t, saved[f"model.{name}"]) for name, t in model.state_dict().items())
    embedder = Embedder(str(causal_lm_checkpoint), precision="fp32", device="cpu", trust_remote_code=trust_remote_code)
    assert isinstance(embedder.model, MiniCPMModel) and embedder.model.config._attn_implementation == "sdpa"


def test_packing_short_text_attention_and_lora_work_as_for_llama(causal_lm_checkpoint, tiny_builders):
    embedder = Embedder(str(causal_lm_checkpoint), precision="fp32", device="cpu")
    ids = embedder.tokenize(TEXTS)
    with torch.no_grad():
        padded = embedder.embed_tokens(ids, packing=False)
        packed = embedder.embed_tokens(ids, max_tokens=20, packing=True)
    assert embedder.packable and torch.allclose(padded, packed, atol=1e-5)
    embedder.model.train()
    plain = embedder.embed_batch(embedder.pad(ids))
    with training_attention(embedder.model):
        short = embedder.embed_batch(embedder.pad(ids))
    assert torch.allclose(plain, short, atol=1e-5)
    embedder.model.eval()
    assert lora_targets(embedder.model, "attention") == [
        "self_attn.k_proj", "self_attn.o_proj", "self_attn.q_proj", "self_attn.v_proj"]
    before, after = tiny_builders.lora_step(embedder, TEXTS)
    assert after < before


def test_config_defaults_and_round_trip(tmp_path):
    from transformers import AutoConfig

    from embedtune.models.minicpm import register

    config = MiniCPMConfig()
    assert (config.model_type, config.scale_emb, config.scale_depth, config.dim_model_base) == ("minicpm", 1, 1, 256)
    register()
    register()  # idempotent
    MiniCPMConfig(hidden_size=64, num_attention_heads=4, scale_emb=12, scale_depth=1.4).save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, MiniCPMConfig) and (loaded.scale_emb, loaded.scale_depth) == (12, 1.4)


@pytest.mark.parametrize("extra", [{"num_experts": 8}, {"sparse_config": {"kernel_size": 32}}])
def test_minicpm_variants_it_cannot_compute_are_refused(extra):
    with pytest.raises(ValueError, match="not supported"):
        MiniCPMModel(MiniCPMConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
                                   vocab_size=32, **extra))


def _tokenizer(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)
