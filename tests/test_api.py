"""The Python API: evaluate() leaves the caller's config alone; encode() keeps one loaded model."""
from __future__ import annotations

import numpy as np
import pytest

import embedtune.api as api
from embedtune.config import Config
from embedtune.models.embedder import Embedder


def test_evaluate_uses_its_overrides_without_changing_the_callers_config(tiny_model_dir, tiny_data_dir):
    config = Config.from_dict({"data": {"data_dir": str(tiny_data_dir)},
                               "eval": {"tasks": ["sts12"], "batch_size": 8, "precision": "fp32"}})
    before = config.to_dict()
    result = api.evaluate(str(tiny_model_dir), config=config, tasks=["sts13"], pooling="mean", prompt="{} is:",
                          show_progress=False)
    assert config.to_dict() == before
    assert (config.model.name, config.model.pooling, config.eval.tasks) == ("gemma3-270m", None, ["sts12"])
    assert list(result["tasks"]) == ["sts13"]
    assert (result["model"], result["pooling"], result["prompt"]) == (str(tiny_model_dir), "mean", "{} is:")


@pytest.fixture
def counted_loads(monkeypatch) -> list[str]:
    """Names of the models loaded while the test runs; encode()'s cache starts empty and is put back after."""
    monkeypatch.setattr(api, "_LAST_EMBEDDER", {}, raising=False)
    loads: list[str] = []
    real_init = Embedder.__init__

    def counting_init(self, model=None, **kwargs):
        loads.append(f"{model}+{kwargs.get('adapter')}")
        real_init(self, model, **kwargs)

    monkeypatch.setattr(Embedder, "__init__", counting_init)
    return loads


def test_encode_loads_a_model_once_and_a_different_model_replaces_it(tiny_model_dir, tiny_adapter_dir,
                                                                     counted_loads):
    texts = ["a man is playing a guitar", "the dog runs"]
    first = api.encode(texts, str(tiny_model_dir))
    again = api.encode(texts[::-1], str(tiny_model_dir))
    assert counted_loads == [f"{tiny_model_dir}+None"]
    np.testing.assert_allclose(again, first[::-1], rtol=1e-5, atol=1e-6)

    tuned = api.encode(texts, str(tiny_model_dir), adapter=str(tiny_adapter_dir))
    assert counted_loads == [f"{tiny_model_dir}+None", f"{tiny_model_dir}+{tiny_adapter_dir}"]
    assert np.abs(tuned - first).max() > 1e-3  # the adapter's model, not the cached base model
    api.encode(texts, str(tiny_model_dir))  # the base model was replaced, not kept beside: loaded again
    assert len(counted_loads) == 3


def test_embedtune_export_stays_the_api_function_after_its_package_is_imported(tiny_model_dir, tmp_path):
    import embedtune
    import embedtune.export.metadata  # noqa: F401  (training and evaluation import parts of the package)

    out = embedtune.export(str(tiny_model_dir), None, tmp_path / "exported")
    assert (out / "embedtune_export.json").is_file() and (out / "modules.json").is_file()
    assert embedtune.Embedder(str(out)).encode(["a dog"]).shape == (1, 64)
