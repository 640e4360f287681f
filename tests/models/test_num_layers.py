"""num_layers: the first N decoder layers kept, the rest dropped; the setting travels with adapters and exports."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from embedtune.api import train
from embedtune.config import Config, ModelConfig
from embedtune.errors import ModelError
from embedtune.export import export_model
from embedtune.models.adapter_average import average_adapters
from embedtune.models.embedder import Embedder, last_token_index
from embedtune.models.export_format import EXPORT_INFO_FILE
from embedtune.models.loading import keep_first_layers

TEXTS = ["a man plays a guitar", "two dogs run on the grass in the park", "a bowl of soup"]


def reference_vectors(model_dir, n: int) -> np.ndarray:
    """The full model's hidden state after layer n, through its final norm, at each text's EOS."""
    full = Embedder(str(model_dir), precision="fp32", device="cpu")
    batch = full.pad(full.tokenize(TEXTS))
    with torch.no_grad():
        hidden = full.model(**batch, output_hidden_states=True).hidden_states[n]
        norm = getattr(full.model, "norm", None) or full.model.final_layernorm
        rows = norm(hidden)[torch.arange(len(TEXTS)), last_token_index(batch["attention_mask"])]
    return F.normalize(rows, dim=-1).numpy()


def test_kept_layers_give_the_hidden_state_after_the_last_of_them(tiny_arch_dir):
    cut = Embedder(str(tiny_arch_dir), precision="fp32", device="cpu", num_layers=1)
    assert (cut.num_layers, len(cut.model.layers), cut.model.config.num_hidden_layers) == (1, 1, 1)
    vectors = cut.encode(TEXTS)
    np.testing.assert_allclose(vectors, reference_vectors(tiny_arch_dir, 1), atol=1e-5)
    full = Embedder(str(tiny_arch_dir), precision="fp32", device="cpu").encode(TEXTS)
    assert np.abs(vectors - full).max() > 1e-2  # the dropped layer mattered


def test_gemma3_keeps_the_attention_kind_of_each_kept_layer(tiny_architecture_dir):
    cut = Embedder(str(tiny_architecture_dir("gemma3")), precision="fp32", device="cpu", num_layers=1)
    assert len(cut.model.config.layer_types) == 1


def test_every_layer_changes_nothing_and_more_than_there_are_is_refused(tiny_model_dir):
    kept = Embedder(str(tiny_model_dir), precision="fp32", device="cpu", num_layers=2)
    assert kept.num_layers == 2
    np.testing.assert_array_equal(kept.encode(TEXTS),
                                  Embedder(str(tiny_model_dir), precision="fp32", device="cpu").encode(TEXTS))
    with pytest.raises(ModelError, match=r"has 2 layers: cannot keep 3$"):
        Embedder(str(tiny_model_dir), precision="fp32", device="cpu", num_layers=3)


def test_a_model_without_a_layer_list_is_refused():
    from transformers import BertConfig, BertModel

    encoder = BertModel(BertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                                   vocab_size=50))
    with pytest.raises(ModelError, match="tiny-bert: num_layers needs a decoder with a list of layers"):
        keep_first_layers(encoder, 1, "tiny-bert")


@pytest.fixture(scope="module")
def cut_run(tiny_model_dir, tiny_data_dir, tmp_path_factory):
    """A short training run on the first of the tiny model's two layers."""
    out = tmp_path_factory.mktemp("cut_run")
    config = Config.from_dict({
        "model": {"name": str(tiny_model_dir), "num_layers": 1},
        "data": {"data_dir": str(tiny_data_dir)},
        "lora": {"dropout": 0.0},
        "train": {"output_dir": str(out), "batch_size": 8, "lr": 1e-2, "max_steps": 2, "precision": "fp32",
                  "eval_steps": 0, "save_steps": 2},
    }).validate()
    train(config)
    return out


def test_a_trained_adapter_saves_its_layers_and_loads_onto_its_base_with_them(cut_run, tiny_model_dir):
    info = json.loads((cut_run / "final" / EXPORT_INFO_FILE).read_text())
    assert (info["num_layers"], info["pooling"], info["format"]) == (1, "eos", "peft-lora-adapter")
    weights = (cut_run / "final" / "adapter_model.safetensors").read_bytes()
    assert b"layers.0." in weights and b"layers.1." not in weights
    loaded = Embedder(str(tiny_model_dir), adapter=str(cut_run / "final"), precision="fp32", device="cpu")
    assert loaded.num_layers == 1
    base_cut = Embedder(str(tiny_model_dir), precision="fp32", device="cpu", num_layers=1)
    assert np.abs(loaded.encode(TEXTS) - base_cut.encode(TEXTS)).max() > 1e-4  # the adapter is on


def test_exports_carry_the_layers(cut_run, tiny_model_dir, tmp_path):
    model = ModelConfig(name=str(tiny_model_dir), adapter=str(cut_run / "final"))
    expected = Embedder.from_config(model, precision="fp32").encode(TEXTS)
    adapter_only = export_model(model, tmp_path / "adapter", adapter_only=True)
    assert json.loads((adapter_only / EXPORT_INFO_FILE).read_text())["num_layers"] == 1
    merged = export_model(model, tmp_path / "merged")
    assert json.loads((merged / "config.json").read_text())["num_hidden_layers"] == 1
    reloaded = Embedder(str(merged), precision="fp32", device="cpu")
    assert reloaded.num_layers == 1
    np.testing.assert_allclose(reloaded.encode(TEXTS), expected, atol=1e-5)


def test_averaging_carries_the_recorded_settings_and_refuses_adapters_saved_with_others(cut_run, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    for path in (cut_run / "final").iterdir():
        (other / path.name).write_bytes(path.read_bytes())
    averaged = average_adapters([cut_run / "final", other], tmp_path / "averaged")
    assert json.loads((averaged / EXPORT_INFO_FILE).read_text())["num_layers"] == 1
    info = json.loads((other / EXPORT_INFO_FILE).read_text())
    (other / EXPORT_INFO_FILE).unlink()  # saved by peft alone: it records nothing, and does not object
    averaged = average_adapters([other, cut_run / "final"], tmp_path / "averaged-with-one-silent")
    assert json.loads((averaged / EXPORT_INFO_FILE).read_text())["num_layers"] == 1
    (other / EXPORT_INFO_FILE).write_text(json.dumps(info | {"prompt": "{} is:"}))
    with pytest.raises(ModelError, match="was trained with other settings than"):
        average_adapters([cut_run / "final", other], tmp_path / "refused")
