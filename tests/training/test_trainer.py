"""The training loop on a tiny model: only LoRA changes, exact resume, checkpoints, metrics, NaN stop."""
from __future__ import annotations

import json

import pytest
import torch

from embedtune.config import Config
from embedtune.errors import TrainingError
from embedtune.models.embedder import Embedder
from embedtune.models.lora import attach_lora
from embedtune.training import checkpoint as ckpt
from embedtune.training.trainer import METRICS, train


def tiny_config(model_dir, data_dir, out, **train) -> Config:
    config = Config.from_dict({
        "model": {"name": str(model_dir)},
        "data": {"data_dir": str(data_dir)},
        "lora": {"dropout": 0.1},
        "train": {"output_dir": str(out), "batch_size": 8, "lr": 1e-3, "max_steps": 6, "precision": "fp32",
                  "eval_steps": 0, "save_steps": 3, "warmup_ratio": 0.2, **train},
        "eval": {"batch_size": 16},
    })
    return config.validate()


def losses(out) -> list[float]:
    return [e["loss"] for e in map(json.loads, (out / METRICS).read_text().splitlines()) if "loss" in e]


def test_only_lora_parameters_change(tiny_model_dir, tiny_data_dir, tmp_path):
    config = tiny_config(tiny_model_dir, tiny_data_dir, tmp_path / "run", max_steps=2)
    embedder = Embedder(str(tiny_model_dir), precision="fp32", device="cpu")
    before = {n: p.detach().clone() for n, p in embedder.model.named_parameters()}
    train(config, embedder=embedder)
    after = dict(embedder.model.named_parameters())
    base = {n.replace("base_model.model.", "").replace(".base_layer", ""): p for n, p in after.items()
            if "lora_" not in n}
    assert base.keys() == before.keys()
    assert [n for n, p in base.items() if not torch.equal(p, before[n])] == []  # every base weight is untouched
    lora = [p for n, p in after.items() if "lora_B" in n]
    assert lora and all(p.abs().sum() > 0 for p in lora)  # lora_B starts at zero: non-zero means it trained


def test_resume_reproduces_the_uninterrupted_losses(tiny_model_dir, tiny_data_dir, tmp_path):
    full = tmp_path / "full"
    train(tiny_config(tiny_model_dir, tiny_data_dir, full))
    part = tmp_path / "part"
    train(tiny_config(tiny_model_dir, tiny_data_dir, part, max_steps=6, save_steps=3))
    # Simulate a crash after step 3: drop the last checkpoint and the log after step 3, then resume.
    for path in ckpt.list_checkpoints(part)[1:]:
        import shutil

        shutil.rmtree(path)
    assert [p.name for p in ckpt.list_checkpoints(part)] == ["step-0000003"]
    train(tiny_config(tiny_model_dir, tiny_data_dir, part, resume=True))
    assert len(losses(full)) == 6
    assert losses(part) == losses(full)


def test_checkpoints_keep_the_last_k_and_final_adapter_exists(tiny_model_dir, tiny_data_dir, tmp_path):
    out = tmp_path / "run"
    train(tiny_config(tiny_model_dir, tiny_data_dir, out, max_steps=6, save_steps=2, save_total_limit=2))
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["step-0000004", "step-0000006"]
    assert (out / "final" / "adapter_config.json").is_file()
    assert not list((out / "checkpoints").glob(".*"))  # no temporary directories left behind
    state = torch.load(out / "checkpoints" / "step-0000006" / "state.pt", weights_only=True)
    assert state["step"] == 6 and {"optimizer", "scheduler", "rng", "best"} <= state.keys()


def test_metrics_and_dev_evaluation(tiny_model_dir, tiny_data_dir, tmp_path):
    out = tmp_path / "run"
    train(tiny_config(tiny_model_dir, tiny_data_dir, out, max_steps=4, eval_steps=2))
    events = [json.loads(line) for line in (out / METRICS).read_text().splitlines()]
    steps = [e for e in events if "loss" in e]
    evals = [e for e in events if "eval" in e]
    assert [e["step"] for e in steps] == [1, 2, 3, 4]
    assert all({"loss", "lr", "tokens_per_s", "gflops", "peak_rss_gb"} <= e.keys() for e in steps)
    assert all(0.05 < e["peak_rss_gb"] < 64 for e in steps)
    assert [e["step"] for e in evals] == [2, 4]
    assert all(-100 <= e["eval"]["stsbenchmark-dev"] <= 100 for e in evals)
    assert (out / "best" / "adapter_config.json").is_file()
    assert (out / "loss.png").is_file() and (out / "dev_spearman.png").is_file()
    best = json.loads((out / "best.json").read_text())
    assert best["score"] == max(e["eval"]["stsbenchmark-dev"] for e in evals)


def test_decontamination_and_cleaning_counts_are_reported(tiny_model_dir, tiny_data_dir, tmp_path):
    out = tmp_path / "run"
    train(tiny_config(tiny_model_dir, tiny_data_dir, out, max_steps=1))
    report = json.loads((out / "data_report.json").read_text())
    assert report["read"] == 64
    assert report["kept"] == 64 - report["empty_field"] - report["degenerate"] - report["duplicate"] \
        - report["contaminated"]


def test_non_finite_loss_stops_with_a_clear_message(tiny_model_dir, tiny_data_dir, tmp_path, monkeypatch):
    from embedtune.losses import infonce

    calls = {"n": 0}
    real = infonce.compute_loss_from_embeddings

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(infonce, "compute_loss_from_embeddings", poisoned)
    out = tmp_path / "run"
    with pytest.raises(TrainingError, match="loss is nan at step 3.*step-0000002"):
        train(tiny_config(tiny_model_dir, tiny_data_dir, out, save_steps=2))
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["step-0000002"]


def test_gradient_checkpointing_still_trains_lora(tiny_model_dir, tiny_data_dir, tmp_path):
    config = tiny_config(tiny_model_dir, tiny_data_dir, tmp_path / "run", max_steps=1, gradient_checkpointing=True)
    embedder = Embedder(str(tiny_model_dir), precision="fp32", device="cpu")
    train(config, embedder=embedder)
    lora_b = [p for n, p in embedder.model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)


@pytest.mark.parametrize("targets,expected", [("attention", {"q_proj", "k_proj", "v_proj", "o_proj", "dense"}),
                                              ("qv", {"q_proj", "v_proj"})])
def test_lora_targets_per_architecture(tiny_arch_dir, targets, expected):
    from embedtune.config import LoraConfig

    embedder = Embedder(str(tiny_arch_dir), precision="fp32", device="cpu")
    model = attach_lora(embedder.model, LoraConfig(targets=targets))
    wrapped = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if hasattr(m, "lora_A")}
    assert wrapped and wrapped <= expected
    if targets == "qv":
        assert wrapped == expected


def test_sigint_saves_a_checkpoint_and_stops_cleanly(tiny_model_dir, tiny_data_dir, tmp_path, monkeypatch):
    import os
    import signal

    from embedtune.errors import TrainingStopped
    from embedtune.losses import infonce

    calls = {"n": 0}
    real = infonce.compute_loss_from_embeddings

    def interrupting(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGINT)  # as if the user pressed Ctrl-C during step 2
        return real(*args, **kwargs)

    monkeypatch.setattr(infonce, "compute_loss_from_embeddings", interrupting)
    out = tmp_path / "run"
    with pytest.raises(TrainingStopped, match="stopped by signal at step 2.*--resume"):
        train(tiny_config(tiny_model_dir, tiny_data_dir, out, save_steps=100))
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["step-0000002"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored


def test_lora_on_an_encoder(tiny_tokenizer, tmp_path):
    from transformers import BertConfig, BertModel

    from embedtune.config import LoraConfig
    from embedtune.models.lora import lora_targets

    model = BertModel(BertConfig(vocab_size=len(tiny_tokenizer), hidden_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=64))
    assert lora_targets(model, "attention") == ["attention.output.dense", "attention.self.key",
                                                "attention.self.query", "attention.self.value"]
    assert lora_targets(model, "qv") == ["attention.self.query", "attention.self.value"]
    wrapped = attach_lora(model, LoraConfig(targets="qv"))
    assert sum(p.numel() for p in wrapped.parameters() if p.requires_grad) == 2 * 2 * (8 * 32 + 32 * 8)


def test_cached_loss_trains_like_the_plain_one(tiny_model_dir, tiny_data_dir, tmp_path):
    runs = {}
    for loss in ("infonce", "cached"):
        config = tiny_config(tiny_model_dir, tiny_data_dir, tmp_path / loss, max_steps=3, loss=loss,
                             mini_batch_tokens=32)
        config.lora.dropout = 0.0  # dropout masks are drawn per mini-batch in the cached loss
        train(config)
        runs[loss] = losses(tmp_path / loss)
    assert runs["cached"] == pytest.approx(runs["infonce"], rel=1e-4)
