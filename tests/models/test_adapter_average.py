"""Averaging LoRA adapters: the averaged adapter's merged weights are the weighted mean of the adapters' merged
weights, exactly, whatever their ranks and scales; adapters that cannot be averaged fail in one line."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from embedtune.cli import main
from embedtune.errors import ModelError
from embedtune.models.adapter_average import average_adapters

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def merged_weights(model_dir: Path, adapter: Path) -> dict[str, torch.Tensor]:
    from peft import PeftModel
    from transformers import AutoModel

    model = PeftModel.from_pretrained(AutoModel.from_pretrained(model_dir), str(adapter)).merge_and_unload()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tiny_builders, tmp_path_factory) -> list[Path]:
    """Two adapters of one base with different seeds, ranks, alphas and rsLoRA: different scales per adapter."""
    root = tmp_path_factory.mktemp("adapters")
    return [tiny_builders.adapter(tiny_model_dir, root / "one", seed=1),
            tiny_builders.adapter(tiny_model_dir, root / "two", seed=2, r=4, alpha=8, use_rslora=True)]


def test_the_average_merges_to_the_weighted_mean_of_the_merged_adapters(tiny_model_dir, adapters, tmp_path):
    one, two = (merged_weights(tiny_model_dir, a) for a in adapters)
    changed = [k for k in one if not torch.equal(one[k], two[k])]
    assert len(changed) == 2 * len(TARGETS)  # q, k, v, o in both layers: the only weights the adapters move
    for weights, (w1, w2) in [(None, (0.5, 0.5)), ([3, 1], (0.75, 0.25))]:
        out = average_adapters(adapters, tmp_path / f"avg-{w1}", weights)
        averaged = merged_weights(tiny_model_dir, out)
        for key in one:
            torch.testing.assert_close(averaged[key], w1 * one[key] + w2 * two[key], rtol=0, atol=2e-6)
        config = json.loads((out / "adapter_config.json").read_text())
        assert (config["r"], config["lora_alpha"], config["use_rslora"]) == (12, 12, False)
        sources = json.loads((out / "averaged_from.json").read_text())
        assert [s["weight"] for s in sources] == [w1, w2]


def test_a_scale_moves_the_merged_weights_along_the_line_to_the_base_model(tiny_model_dir, adapters, tmp_path):
    from transformers import AutoModel

    base = {k: v.detach().clone() for k, v in AutoModel.from_pretrained(tiny_model_dir).state_dict().items()}
    one, two = (merged_weights(tiny_model_dir, a) for a in adapters)
    halfway = merged_weights(tiny_model_dir, average_adapters(adapters, tmp_path / "avg", scale=0.5))
    single = merged_weights(tiny_model_dir, average_adapters(adapters[:1], tmp_path / "one", scale=0.8))
    for key in base:
        torch.testing.assert_close(halfway[key], base[key] + 0.5 * ((one[key] + two[key]) / 2 - base[key]),
                                   rtol=0, atol=2e-6)
        torch.testing.assert_close(single[key], base[key] + 0.8 * (one[key] - base[key]), rtol=0, atol=2e-6)
    sources = json.loads((tmp_path / "avg" / "averaged_from.json").read_text())
    assert [(s["weight"], s["scale"]) for s in sources] == [(0.5, 0.5), (0.5, 0.5)]


def test_an_adapter_averaged_with_itself_gives_its_own_embeddings(tiny_model_dir, adapters, tmp_path, tiny_texts):
    from embedtune.config import ModelConfig
    from embedtune.models.embedder import Embedder

    out = average_adapters([adapters[0], adapters[0]], tmp_path / "self")
    model = ModelConfig(name=str(tiny_model_dir), device="cpu")
    before = Embedder.from_config(model, adapter=str(adapters[0]), precision="fp32").encode(tiny_texts)
    after = Embedder.from_config(model, adapter=str(out), precision="fp32").encode(tiny_texts)
    torch.testing.assert_close(torch.as_tensor(after), torch.as_tensor(before), rtol=0, atol=1e-5)


def test_adapters_that_cannot_be_averaged_fail_in_one_line(tiny_model_dir, tiny_builders, adapters, tmp_path):
    qv = tiny_builders.adapter(tiny_model_dir, tmp_path / "qv", seed=3, targets=("q_proj", "v_proj"))
    dora = tiny_builders.adapter(tiny_model_dir, tmp_path / "dora", seed=3, use_dora=True)
    cases = [([adapters[0]], "at least two"),
             ([adapters[0], qv], "other modules"),
             ([adapters[0], dora], "use_dora"),
             ([adapters[0], tmp_path], "no adapter_config.json")]
    for given, message in cases:
        with pytest.raises(ModelError, match=message) as err:
            average_adapters(given, tmp_path / "out")
        assert "\n" not in str(err.value)
    with pytest.raises(ModelError, match="non-negative weights"):
        average_adapters(adapters, tmp_path / "out", [1.0, -1.0])
    for scale in (0.0, -1.0, float("nan")):
        with pytest.raises(ModelError, match="scale of the averaged update must be > 0"):
            average_adapters(adapters, tmp_path / "out", scale=scale)
    assert not (tmp_path / "out").exists()


def test_the_cli_writes_the_averaged_adapter(adapters, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["average-adapters", *map(str, adapters), "--out", str(out), "--weights", "1", "3"]) == 0
    assert f"averaged 2 adapters into {out}" in capsys.readouterr().out
    assert [s["weight"] for s in json.loads((out / "averaged_from.json").read_text())] == [0.25, 0.75]
    assert main(["average-adapters", str(adapters[0]), "--out", str(out)]) == 2
    assert "at least two adapters (or one, with a scale other than 1)" in capsys.readouterr().err
    assert main(["average-adapters", str(adapters[0]), "--out", str(tmp_path / "scaled"), "--scale", "0.8"]) == 0
    assert f"scaled the update of {adapters[0]} by 0.8 into {tmp_path / 'scaled'}" in capsys.readouterr().out
