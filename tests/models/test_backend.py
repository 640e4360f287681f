"""The per-device backend: one place decides dtype, fusion, compilation, attention and dropout."""
from __future__ import annotations

import json

import pytest
import torch

from embedtune.config import Config
from embedtune.errors import ConfigError
from embedtune.models import backend as backend_module
from embedtune.models.backend import Backend
from embedtune.training.metrics import METRICS


@pytest.fixture
def fresh_probe():
    backend_module.cpu_bf16_speedup.cache_clear()
    yield
    backend_module.cpu_bf16_speedup.cache_clear()


def test_cpu_backend_choices():
    backend = Backend.for_device("cpu", "fp32")
    assert (backend.device, backend.dtype) == (torch.device("cpu"), torch.float32)
    assert backend.fuse_gemma and backend.short_text_attention and backend.shared_dropout
    assert backend.row_multiple == 64
    assert Backend.for_device("cpu", "bf16").dtype == torch.bfloat16


def test_cuda_backend_choices_without_a_gpu():
    backend = Backend(torch.device("cuda", 0), torch.bfloat16)  # what for_device("cuda") builds, minus the check
    assert not backend.compile_kernels and not backend.short_text_attention and not backend.shared_dropout


@pytest.mark.parametrize("fp32_s,bf16_s,expected", [(1.0, 100.0, torch.float32), (1.0, 0.3, torch.bfloat16),
                                                    (1.0, 0.95, torch.float32)])
def test_auto_precision_follows_the_measured_probe(monkeypatch, fresh_probe, fp32_s, bf16_s, expected):
    seconds = {torch.float32: fp32_s, torch.bfloat16: bf16_s}
    monkeypatch.setattr(backend_module, "_matmul_seconds", lambda dtype: seconds[dtype])
    assert Backend.for_device("cpu", "auto").dtype == expected


def test_the_real_probe_measures_both_dtypes(fresh_probe):
    speedup = backend_module.cpu_bf16_speedup()
    assert 0 < speedup < 1e4 and backend_module.cpu_bf16_speedup() == speedup  # measured once, then cached


def test_bad_devices_are_config_errors():
    with pytest.raises(ConfigError, match="device must be one of"):
        Backend.for_device("tpu")
    with pytest.raises(ConfigError, match="model.device"):
        Config.from_dict({"model": {"device": "gpu"}}).validate()
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="sees no CUDA GPU"):
            Backend.for_device("cuda:0")


def test_synchronize_waits_only_on_cuda(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(device))
    Backend(torch.device("cpu"), torch.float32).synchronize()
    assert calls == []
    Backend(torch.device("cuda", 0), torch.bfloat16).synchronize()
    assert calls == [torch.device("cuda", 0)]


def test_each_step_is_timed_after_waiting_for_its_device(tiny_model_dir, tiny_data_dir, tmp_path, monkeypatch):
    from embedtune.training.trainer import train

    waits = []
    monkeypatch.setattr(Backend, "synchronize", lambda self: waits.append(self.device))
    config = Config.from_dict({
        "model": {"name": str(tiny_model_dir), "device": "cpu"}, "data": {"data_dir": str(tiny_data_dir)},
        "train": {"output_dir": str(tmp_path / "run"), "batch_size": 8, "max_steps": 2, "precision": "fp32",
                  "eval_steps": 0},
    }).validate()
    train(config)
    steps = [e for e in map(json.loads, (tmp_path / "run" / METRICS).read_text().splitlines()) if "loss" in e]
    assert len(steps) == 2
    assert waits == [torch.device("cpu")] * 2
