"""Export: a merged folder that sentence-transformers loads unchanged and that gives embedtune's vectors."""
from __future__ import annotations

import json

import numpy as np
import pytest

from embedtune.errors import ConfigError, ModelError
from embedtune.export import discover_card_info, export_model
from embedtune.models.embedder import Embedder

MAX_LENGTH = 128
# sentence-transformers runs the exported fp32 weights in fp32; compare with embedtune at the same precision
# (on CPUs with AMX, embedtune's "auto" would pick bf16).
FP32 = {"precision": "fp32"}


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(1)


@pytest.fixture(scope="module")
def tiny_export(tiny_model_dir, tiny_adapter_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("exports") / "merged"
    export_model(str(tiny_model_dir), str(tiny_adapter_dir), out, max_length=MAX_LENGTH)
    return out


def test_sentence_transformers_gives_embedtune_vectors(tiny_export, tiny_model_dir, tiny_adapter_dir, tiny_texts):
    from sentence_transformers import SentenceTransformer

    ours = Embedder(str(tiny_model_dir), adapter=str(tiny_adapter_dir), max_length=MAX_LENGTH, **FP32)
    ours = ours.encode(tiny_texts)
    model = SentenceTransformer(str(tiny_export), device="cpu")
    # Small batches mix lengths, so padding is exercised; ST must not need any extra argument.
    theirs = model.encode(tiny_texts, batch_size=3)
    assert theirs.shape == ours.shape
    assert cosines(ours, theirs).min() >= 0.9999
    np.testing.assert_allclose(np.linalg.norm(theirs, axis=1), 1.0, atol=1e-5)  # Normalize module included

    # The adapter must matter, or this test could not tell a merged export from the base model.
    base = Embedder(str(tiny_model_dir), max_length=MAX_LENGTH, **FP32).encode(tiny_texts)
    assert cosines(base, ours).mean() < 0.99


def test_exported_tokenizer_appends_exactly_one_eos(tiny_export, tiny_texts):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_export))
    assert tokenizer.padding_side == "right"
    assert not getattr(tokenizer, "chat_template", None)
    assert not list(tiny_export.glob("chat_template*"))
    eos, bos = tokenizer.eos_token_id, tokenizer.bos_token_id
    for ids in tokenizer(tiny_texts)["input_ids"]:
        assert ids[-1] == eos and ids.count(eos) == 1
        assert ids[0] == bos and ids.count(bos) == 1  # the tokenizer's own BOS is kept, once
    long_ids = tokenizer(["the dog " * 500], truncation=True)["input_ids"][0]
    assert len(long_ids) == MAX_LENGTH and long_ids[-1] == eos  # truncation keeps room for the EOS


def test_sentence_transformers_sees_plain_text_and_last_token_pooling(tiny_export):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(tiny_export), device="cpu")
    transformer, pooling = model[0], model[1]
    assert list(transformer.modalities) == ["text"]  # no chat template, so no "message" rendering
    assert pooling.pooling_mode in ("lasttoken", ("lasttoken",))
    features = transformer.preprocess(["a dog", "a man is playing a guitar ."])
    mask = features["attention_mask"]
    assert mask[0, 0] == 1 and mask[0, -1] == 0  # right padding
    ids = features["input_ids"]
    assert ids[0, int(mask[0].sum()) - 1] == transformer.tokenizer.eos_token_id
    config = json.loads((tiny_export / "modules.json").read_text())
    assert [m["path"] for m in config] == ["", "1_Pooling", "2_Normalize"]


def test_embedtune_loads_the_export_too(tiny_export, tiny_model_dir, tiny_adapter_dir, tiny_texts):
    ours = Embedder(str(tiny_model_dir), adapter=str(tiny_adapter_dir), max_length=MAX_LENGTH, **FP32)
    ours = ours.encode(tiny_texts)
    again = Embedder(str(tiny_export), max_length=MAX_LENGTH, **FP32).encode(tiny_texts)
    assert cosines(ours, again).min() >= 0.9999


@pytest.mark.parametrize("prompt", ["{} is:", "query: ", "Represent: {} ."])
def test_prompt_is_baked_into_the_tokenizer(prompt, tiny_model_dir, tiny_texts, tmp_path):
    from sentence_transformers import SentenceTransformer

    out = export_model(str(tiny_model_dir), None, tmp_path / "prompted", prompt=prompt, max_length=MAX_LENGTH)
    ours = Embedder(str(tiny_model_dir), prompt=prompt, max_length=MAX_LENGTH, **FP32).encode(tiny_texts)
    theirs = SentenceTransformer(str(out), device="cpu").encode(tiny_texts, batch_size=4)
    assert cosines(ours, theirs).min() >= 0.9999


def test_adapter_only_export(tiny_model_dir, tiny_adapter_dir, tiny_texts, tmp_path):
    out = export_model(str(tiny_model_dir), str(tiny_adapter_dir), tmp_path / "adapter", adapter_only=True)
    names = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "embedtune_export.json"} <= names
    assert "model.safetensors" not in names
    direct = Embedder(str(tiny_model_dir), adapter=str(tiny_adapter_dir), **FP32).encode(tiny_texts[:3])
    copied = Embedder(str(tiny_model_dir), adapter=str(out), **FP32).encode(tiny_texts[:3])
    np.testing.assert_allclose(direct, copied, atol=1e-6)


def test_model_card_has_config_and_scores(tiny_model_dir, tiny_adapter_dir, tmp_path):
    scores = {"model": "x", "tasks": {"sts12": {"spearman": 70.5, "n": 10}, "sickr": {"spearman": 80.25, "n": 5}},
              "average": 75.375, "std": 4.875}
    base = {"model": "x", "tasks": {"sts12": {"spearman": 50.0, "n": 10}, "sickr": {"spearman": 60.0, "n": 5}},
            "average": 55.0, "std": 5.0}
    card_info = {"config": {"lora": {"r": 8, "alpha": 32}, "train": {"lr": 5e-5}}, "scores": scores,
                 "base_scores": base}
    out = export_model(str(tiny_model_dir), str(tiny_adapter_dir), tmp_path / "carded", adapter_only=True,
                       card_info=card_info)
    card = (out / "README.md").read_text()
    assert "## Training configuration" in card and "alpha: 32" in card
    assert "STS12" in card and "SICK-R" in card and "75.38" in card and "+20.38" in card
    assert str(tmp_path) not in card  # no local paths in a card that travels


def test_card_info_is_found_beside_the_adapter(tmp_path):
    run = tmp_path / "run"
    adapter = run / "final"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text("{}")
    # The layout `embedtune run` writes: OUT/config.json, OUT/base.json, OUT/tuned.json, OUT/final/.
    (run / "config.json").write_text(json.dumps({"lora": {"r": 8}, "data": {"data_dir": "/home/me/data"}}))
    result = {"tasks": {"sts12": {"spearman": 1.0, "n": 1}}, "average": 1.0, "std": 0.0}
    (run / "base.json").write_text(json.dumps({**result, "average": 0.5}))
    (run / "tuned.json").write_text(json.dumps(result))
    (run / "report.json").write_text(json.dumps({"base": {}, "tuned": {}, "gain": 0.5}))
    info = discover_card_info(str(adapter))
    assert info["config"]["lora"]["r"] == 8
    assert info["scores"]["average"] == 1.0 and info["base_scores"]["average"] == 0.5


def test_export_per_architecture(tiny_arch_dir, tiny_texts, tmp_path):
    """Gemma3 (sliding window), Phi (partial rotary) and Llama shapes all survive the trip through ST."""
    from sentence_transformers import SentenceTransformer

    out = export_model(str(tiny_arch_dir), None, tmp_path / "arch", max_length=MAX_LENGTH)
    ours = Embedder(str(tiny_arch_dir), max_length=MAX_LENGTH, **FP32).encode(tiny_texts)
    theirs = SentenceTransformer(str(out), device="cpu").encode(tiny_texts, batch_size=4)
    assert cosines(ours, theirs).min() >= 0.9999


def test_export_refuses_bad_targets(tiny_model_dir, tiny_adapter_dir, tmp_path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("x")
    with pytest.raises(ConfigError, match="not an empty folder"):
        export_model(str(tiny_model_dir), str(tiny_adapter_dir), busy)
    assert (busy / "keep.txt").read_text() == "x"
    with pytest.raises(ConfigError, match="needs --adapter"):
        export_model(str(tiny_model_dir), None, tmp_path / "a", adapter_only=True)
    with pytest.raises(ModelError, match="adapter not found"):
        export_model(str(tiny_model_dir), str(tmp_path / "nope"), tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folders left behind


def test_cli_export(tiny_model_dir, tiny_adapter_dir, tmp_path, capsys):
    from embedtune.cli import main

    out = tmp_path / "cli-export"
    code = main(["export", "--model", str(tiny_model_dir), "--adapter", str(tiny_adapter_dir), "--out", str(out),
                 "--max-length", "64"])
    assert code == 0
    assert (out / "modules.json").is_file() and (out / "README.md").is_file()
    assert json.loads((out / "tokenizer_config.json").read_text())["model_max_length"] == 64
    assert "exported to" in capsys.readouterr().out
    assert main(["export", "--model", str(tiny_model_dir), "--out", str(tmp_path / "x"), "--adapter-only"]) == 2
