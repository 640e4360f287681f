"""The training loop on a tiny model: only LoRA changes, exact resume, checkpoints, metrics, NaN stop."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from scipy.stats import spearmanr

from embedtune.config import Config
from embedtune.data.sts import STS_TASKS, load_sts
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


def test_a_log_gets_the_training_bar_every_half_minute_not_every_step(tiny_model_dir, tiny_data_dir, tmp_path,
                                                                       capsys, monkeypatch):
    monkeypatch.delenv("TQDM_MININTERVAL", raising=False)
    train(tiny_config(tiny_model_dir, tiny_data_dir, tmp_path / "run", max_steps=6))
    bar = [line for line in capsys.readouterr().err.splitlines() if line.startswith("training:")]
    # Six steps within 30 s: the first draw and the last, with the loss beside it; the loss shown each step must
    # not force a line per step.
    assert len(bar) == 2 and "6/6" in bar[-1] and "loss=" in bar[-1]


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
    assert state["step"] == 6
    assert set(state) == {"step", "total_steps", "eval_steps", "optimizer", "scheduler", "loss", "rng", "best",
                          "bad_loss", "world_size", "rng_per_rank"}
    assert state["world_size"] == 1 and len(state["rng_per_rank"]) == 1


def test_metrics_and_dev_evaluation(tiny_model_dir, tiny_data_dir, tmp_path):
    out = tmp_path / "run"
    train(tiny_config(tiny_model_dir, tiny_data_dir, out, max_steps=4, eval_steps=2))
    events = [json.loads(line) for line in (out / METRICS).read_text().splitlines()]
    steps = [e for e in events if "loss" in e]
    evals = [e for e in events if "eval" in e]
    assert [e["step"] for e in steps] == [1, 2, 3, 4]
    assert all(set(e) == {"step", "loss", "lr", "grad_norm", "tokens_per_s", "seconds", "gflops", "peak_rss_gb"}
               for e in steps)
    assert all(e["grad_norm"] > 0 for e in steps)
    assert all(0.05 < e["peak_rss_gb"] < 64 for e in steps)
    assert [e["step"] for e in evals] == [2, 4]
    assert all(set(e["eval"]) == {"stsbenchmark-dev"} for e in evals)
    # The last dev score is the final adapter's Spearman on the dev split, computed here independently.
    dev = load_sts(STS_TASKS["stsbenchmark"], tiny_data_dir, "dev")
    tuned = Embedder(str(tiny_model_dir), adapter=str(out / "final"), precision="fp32", device="cpu")
    cosine = (tuned.encode(dev.sentences1) * tuned.encode(dev.sentences2)).sum(-1)
    assert evals[-1]["eval"]["stsbenchmark-dev"] == pytest.approx(100 * spearmanr(cosine, dev.scores).statistic,
                                                                  abs=1e-3)
    assert (out / "best" / "adapter_config.json").is_file()
    assert (out / "loss.png").is_file() and (out / "dev_spearman.png").is_file()
    best = json.loads((out / "best.json").read_text())
    assert best["score"] == max(e["eval"]["stsbenchmark-dev"] for e in evals)


def test_rows_holding_an_evaluation_sentence_are_dropped_and_counted(tiny_model_dir, tiny_data_dir, tmp_path):
    from embedtune.data.nli import Triplet, load_triplets

    sts12, biosses = load_sts(STS_TASKS["sts12"], tiny_data_dir), load_sts(STS_TASKS["biosses"], tiny_data_dir)
    test_sets = {s for task in STS_TASKS.values() for d in [load_sts(task, tiny_data_dir)]
                 for s in d.sentences1 + d.sentences2}
    dev_only = next(s for s in load_sts(STS_TASKS["stsbenchmark"], tiny_data_dir, "dev").sentences1
                    if s not in test_sets)

    def shouted(text: str) -> str:  # other case and spacing: still the same sentence
        return "  " + text.upper().replace(" ", "   ") + " "

    # 18 words: the tiny STS sentences have at most nine, so these rows overlap nothing.
    words = "a man woman child dog cat plays eats guitar piano food ball on in park street house".split()
    clean = [tuple(" ".join(words[i:] + words[:i] + [end]) for end in ("x", "y", "z")) for i in range(10)]
    a, b, c = clean[0]
    dirty = [(shouted(sts12.sentences1[0]), a, b), (a, shouted(biosses.sentences2[3]), c),
             (b, c, shouted(dev_only))]
    path = tmp_path / "train.tsv"
    path.write_text("sent0\tsent1\thard_neg\n" + "".join("\t".join(row) + "\n" for row in clean + dirty))

    out = tmp_path / "run"
    config = tiny_config(tiny_model_dir, tiny_data_dir, out, max_steps=1, eval_steps=1)
    config.data.train_files = [str(path)]
    train(config)
    assert json.loads((out / "data_report.json").read_text()) == {
        "read": 13, "empty_field": 0, "degenerate": 0, "duplicate": 0, "contaminated": 3, "kept": 10}
    from embedtune.training.trainer import blocked_sentences

    kept, _ = load_triplets(config.data, tiny_data_dir, blocked_sentences(config))
    assert kept == [Triplet(*row) for row in clean]

    config.train.eval_steps = 0  # no dev evaluation: the dev split may be trained on
    kept, report = load_triplets(config.data, tiny_data_dir, blocked_sentences(config))
    assert (report.contaminated, kept[-1]) == (2, Triplet(*(text.strip() for text in dirty[2])))


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


LORA_TARGETS = {  # per architecture: q, k, v and the output projection (Phi calls it `dense`)
    ("gemma3_text", "attention"): ["self_attn.k_proj", "self_attn.o_proj", "self_attn.q_proj", "self_attn.v_proj"],
    ("phi", "attention"): ["self_attn.dense", "self_attn.k_proj", "self_attn.q_proj", "self_attn.v_proj"],
    ("llama", "attention"): ["self_attn.k_proj", "self_attn.o_proj", "self_attn.q_proj", "self_attn.v_proj"],
    ("gemma3_text", "qv"): ["self_attn.q_proj", "self_attn.v_proj"],
    ("phi", "qv"): ["self_attn.q_proj", "self_attn.v_proj"],
    ("llama", "qv"): ["self_attn.q_proj", "self_attn.v_proj"],
}


@pytest.mark.parametrize("targets", ["attention", "qv"])
def test_lora_targets_per_architecture(tiny_arch_dir, targets):
    from embedtune.config import LoraConfig
    from embedtune.models.lora import lora_targets

    embedder = Embedder(str(tiny_arch_dir), precision="fp32", device="cpu")
    expected = LORA_TARGETS[embedder.model.config.model_type, targets]
    assert lora_targets(embedder.model, targets) == expected
    model = attach_lora(embedder.model, LoraConfig(targets=targets))
    wrapped = {n.removeprefix("base_model.model.") for n, m in model.named_modules() if hasattr(m, "lora_A")}
    assert wrapped == {f"layers.{layer}.{name}" for layer in (0, 1) for name in expected}


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
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN where a shell started the tests in the background
    out = tmp_path / "run"
    with pytest.raises(TrainingStopped, match="stopped by signal at step 2.*--resume"):
        train(tiny_config(tiny_model_dir, tiny_data_dir, out, save_steps=100))
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["step-0000002"]
    assert signal.getsignal(signal.SIGINT) is before  # the caller's handler restored


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


def test_training_continues_from_the_given_adapter(tiny_model_dir, tiny_data_dir, tiny_adapter_dir, tmp_path):
    out = tmp_path / "run"
    config = tiny_config(tiny_model_dir, tiny_data_dir, out, max_steps=1, lr=1e-12, warmup_ratio=0.0)
    config.model.adapter = str(tiny_adapter_dir)
    final = train(config)
    given = load_file(tiny_adapter_dir / "adapter_model.safetensors")
    trained = load_file(final / "adapter_model.safetensors")
    assert trained.keys() == given.keys()
    lora_b = [k for k in given if "lora_B" in k]
    assert len(lora_b) == 8 and all(given[k].abs().max() > 0.05 for k in lora_b)  # far from peft's zero init
    for key in sorted(given, key=lambda k: "lora_B" not in k):  # lr 1e-12: the step leaves the weights as given
        assert (trained[key] - given[key]).abs().max() < 1e-6, key


def test_learnable_temperature_has_no_weight_decay_and_stays_in_range(tiny_model_dir, tiny_data_dir, tmp_path,
                                                                      monkeypatch):
    made: list[torch.optim.AdamW] = []

    class RecordingAdamW(torch.optim.AdamW):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(torch.optim, "AdamW", RecordingAdamW)
    # Starts at the lower bound: whichever way the first step moves it, it must end in [0.01, 1].
    config = tiny_config(tiny_model_dir, tiny_data_dir, tmp_path / "run", max_steps=2, learnable_temperature=True,
                         temperature=0.01, weight_decay=0.01, lr=1e-2, warmup_ratio=0.0)
    embedder = Embedder(str(tiny_model_dir), precision="fp32", device="cpu")
    train(config, embedder=embedder)
    (optimizer,) = made
    lora = [p for n, p in embedder.model.named_parameters() if "lora_" in n]
    assert len(lora) == 16 and all(p.requires_grad for p in lora)
    groups = optimizer.param_groups
    assert [(g["weight_decay"], len(g["params"])) for g in groups] == [(0.01, 16), (0.0, 1)]
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in lora}
    (log_scale,) = groups[1]["params"]
    assert log_scale.shape == () and log_scale.device == embedder.device
    temperature = torch.exp(-log_scale).item()
    assert 0.01 * (1 - 1e-6) <= temperature <= 1.0
    events = [json.loads(line) for line in (tmp_path / "run" / METRICS).read_text().splitlines()]
    assert events[-1]["temperature"] == pytest.approx(temperature, abs=1e-5)
