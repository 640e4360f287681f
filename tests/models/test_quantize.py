"""--quantize int8: dynamic int8 linear layers for CPU inference, close to fp32, refused where it cannot run."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from embedtune.config import Config, ModelConfig
from embedtune.errors import ConfigError
from embedtune.models.embedder import Embedder


def test_int8_vectors_stay_close_to_fp32(tiny_model_dir, tiny_texts):
    config = ModelConfig(name=str(tiny_model_dir), device="cpu")
    fp32 = Embedder.from_config(config, precision="fp32")
    int8 = Embedder.from_config(ModelConfig(name=str(tiny_model_dir), device="cpu", quantize="int8"))
    assert int8.dtype == torch.float32  # auto precision becomes fp32 around the int8 matmuls
    linear = [m for m in int8.model.modules() if type(m).__name__ == "Linear"]
    assert not any(isinstance(m, torch.nn.Linear) and type(m) is torch.nn.Linear for m in linear)
    assert any("quantized" in type(m).__module__ for m in int8.model.modules())
    a, b = fp32.encode(tiny_texts), int8.encode(tiny_texts)
    cosines = np.sum(a * b, axis=1)
    assert cosines.min() > 0.99 and not np.allclose(a, b, atol=1e-7)  # close, and really quantised


def test_int8_is_refused_in_bf16_and_unknown_schemes_are_config_errors(tiny_model_dir):
    with pytest.raises(ConfigError, match="runs on CPU in fp32"):
        Embedder.from_config(ModelConfig(name=str(tiny_model_dir), device="cpu", quantize="int8"), precision="bf16")
    with pytest.raises(ConfigError, match="model.quantize must be one of int8"):
        Config.from_dict({"model": {"quantize": "int4"}}).validate()
