"""Step timing on an asynchronous device: the trainer waits for queued GPU work before reading the clock."""
from __future__ import annotations

import json

import torch

from embedtune.config import Config
from embedtune.training import trainer
from embedtune.training.trainer import METRICS


def test_synchronize_waits_only_on_cuda(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(device))
    trainer.synchronize(torch.device("cpu"))
    assert calls == []
    trainer.synchronize(torch.device("cuda", 0))
    assert calls == [torch.device("cuda", 0)]


def test_each_step_is_timed_after_waiting_for_its_device(tiny_model_dir, tiny_data_dir, tmp_path, monkeypatch):
    waits = []
    monkeypatch.setattr(trainer, "synchronize", lambda device: waits.append(device))
    config = Config.from_dict({
        "model": {"name": str(tiny_model_dir)}, "data": {"data_dir": str(tiny_data_dir)},
        "train": {"output_dir": str(tmp_path / "run"), "batch_size": 8, "max_steps": 2, "precision": "fp32",
                  "eval_steps": 0},
    }).validate()
    trainer.train(config)
    steps = [e for e in map(json.loads, (tmp_path / "run" / METRICS).read_text().splitlines()) if "loss" in e]
    assert len(steps) == 2
    assert waits == [torch.device("cpu")] * 2
