"""The deployment contract (docs/DEPLOY.md): every file and field that transformers, Text Embeddings Inference (TEI)
and vLLM read in an exported folder, checked field by field as those readers read it (neither server runs here).
Also the export's --dtype, its named prompts and the adapter-only folder that sentence-transformers loads."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from embedtune.cli import main
from embedtune.config import ModelConfig
from embedtune.errors import ConfigError
from embedtune.export import EXPORT_INFO_FILE, export_model
from embedtune.export.servers import server_support, tei_pooling, vllm_pooling
from embedtune.models.embedder import Embedder
from embedtune.models.export_format import saved_prompts

FP32 = {"precision": "fp32"}
PROMPTS = {"query": "query: ", "document": "passage: "}
# TEI's candle backend: model code per config.json model_type (backends/candle/src/lib.rs, enum Config).
TEI_MODEL_TYPES = {"bert", "deberta-v2", "camembert", "distilbert", "gemma3_text", "gte", "new", "mpnet", "mistral",
                   "modernbert", "nomic_bert", "qwen2", "qwen3", "bidirectional_pplx_qwen3", "roberta",
                   "xlm-roberta", "llama", "llama_bidirec"}
# vLLM's sentence-transformers module types it recognises (vllm/transformers_utils/config.py).
VLLM_POOLING_MODULES = {"sentence_transformers.models.Pooling",
                        "sentence_transformers.sentence_transformer.modules.pooling.Pooling"}
VLLM_NORMALIZE_MODULES = {"sentence_transformers.models.Normalize",
                          "sentence_transformers.base.modules.normalize.Normalize",
                          "sentence_transformers.sentence_transformer.modules.normalize.Normalize"}


def model_config(path, adapter=None, **options) -> ModelConfig:
    return ModelConfig(name=str(path), adapter=str(adapter) if adapter else None, **options)


def read(folder, name: str) -> dict:
    return json.loads((folder / name).read_text(encoding="utf-8"))


def normalized(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def safetensors_dtypes(path) -> set[str]:
    """The tensor dtypes a safetensors file declares in its JSON header (as TEI and vLLM read them)."""
    with open(path, "rb") as f:
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    return {entry["dtype"] for name, entry in header.items() if name != "__metadata__"}


@pytest.fixture(scope="module")
def deploy_export(tiny_model_dir, tiny_adapter_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("deploy") / "merged"
    return export_model(model_config(tiny_model_dir, tiny_adapter_dir, max_length=64), out, prompts=PROMPTS,
                        show_progress=False)


# ---- transformers ---------------------------------------------------------------------------------------------
def test_automodel_with_the_configured_pooling_gives_embedtune_vectors(deploy_export, tiny_model_dir,
                                                                       tiny_adapter_dir, tiny_texts):
    import torch
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(str(deploy_export), dtype="auto").eval()
    tokenizer = AutoTokenizer.from_pretrained(str(deploy_export))
    assert read(deploy_export, "1_Pooling/config.json")["pooling_mode_lasttoken"] is True
    batch = tokenizer(tiny_texts, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    last = batch["attention_mask"].sum(1) - 1  # right padding: the last real token (the EOS the tokenizer adds)
    assert (batch["input_ids"][torch.arange(len(tiny_texts)), last] == tokenizer.eos_token_id).all()
    theirs = normalized(hidden[torch.arange(len(tiny_texts)), last].numpy())
    ours = Embedder(str(tiny_model_dir), adapter=str(tiny_adapter_dir), max_length=64, **FP32).encode(tiny_texts)
    np.testing.assert_allclose(theirs, normalized(ours), atol=1e-5)


# ---- Text Embeddings Inference ---------------------------------------------------------------------------------
def test_tei_reads_config_json(deploy_export):
    config = read(deploy_export, "config.json")
    assert isinstance(config["architectures"], list) and config["architectures"] == ["LlamaModel"]
    assert config["model_type"] in TEI_MODEL_TYPES
    assert read(deploy_export, "sentence_bert_config.json")["max_seq_length"] <= config["max_position_embeddings"]


def test_tei_reads_the_pooling_config(deploy_export):
    pooling = read(deploy_export, "1_Pooling/config.json")
    # TEI's PoolConfig: cls and mean flags are required bools (no serde default), lasttoken optional.
    for flag in ("pooling_mode_cls_token", "pooling_mode_mean_tokens", "pooling_mode_lasttoken"):
        assert isinstance(pooling[flag], bool)
    assert tei_pooling(pooling) == "last_token"


@pytest.mark.parametrize(("pooling", "tei", "vllm"), [("eos", "last_token", {"LAST"}), ("mean", "mean", {"MEAN"}),
                                                      ("cls", "cls", {"CLS"})])
def test_each_pooling_reads_the_same_in_tei_and_vllm(pooling, tei, vllm):
    from embedtune.export.sentence_transformers_config import pooling_config

    config = pooling_config(pooling, 64)
    assert config["include_prompt"] is True  # a true flag vLLM must skip: its name is no pooling
    assert (tei_pooling(config), vllm_pooling(config)) == (tei, vllm)


def test_tei_reads_max_seq_length_and_prompts(deploy_export):
    assert read(deploy_export, "sentence_bert_config.json")["max_seq_length"] == 64
    st_config = read(deploy_export, "config_sentence_transformers.json")
    assert st_config["prompts"] == PROMPTS  # TEI's NewSTConfig: a map of name -> text
    assert st_config["default_prompt_name"] is None
    assert saved_prompts(deploy_export) == PROMPTS == read(deploy_export, EXPORT_INFO_FILE)["prompts"]


def test_tei_tokenizer_json_gives_embedtune_ids_with_a_named_prompt(deploy_export, tiny_model_dir, tiny_adapter_dir,
                                                                     tiny_texts):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(deploy_export / "tokenizer.json"))  # what TEI loads, padding off
    tokenizer.no_padding()
    embedder = Embedder(str(tiny_model_dir), adapter=str(tiny_adapter_dir), max_length=64, **FP32)
    texts = tiny_texts[:4]
    # TEI puts the named prompt's text in front of the input, then encodes with special tokens.
    got = [tokenizer.encode(PROMPTS["query"] + text, add_special_tokens=True).ids for text in texts]
    assert got == [list(ids) for ids in embedder.tokenize([PROMPTS["query"] + t for t in texts])]
    assert all(ids[-1] == embedder.eos_id for ids in got)


def test_tei_finds_the_weights_under_its_names(deploy_export):
    from safetensors import safe_open

    with safe_open(str(deploy_export / "model.safetensors"), "pt") as weights:  # TEI: model.safetensors first
        names = set(weights.keys())
    assert "embed_tokens.weight" in names  # TEI's Gemma3/Mistral/Llama code reads names without "model."
    assert not any(name.startswith("lm_head") for name in names)


# ---- vLLM ------------------------------------------------------------------------------------------------------
def test_vllm_reads_modules_and_pooling(deploy_export):
    modules = read(deploy_export, "modules.json")
    pooling = next(m for m in modules if m["type"] in VLLM_POOLING_MODULES)
    assert any(m["type"] in VLLM_NORMALIZE_MODULES for m in modules)  # vLLM: use_activation (normalize) on
    assert vllm_pooling(read(deploy_export, f"{pooling['path']}/config.json")) == {"LAST"}


def test_vllm_reads_the_tokenizer_config(deploy_export):
    # get_sentence_transformer_tokenizer_config keeps the file only when it has both keys.
    config = read(deploy_export, "sentence_bert_config.json")
    assert config == {"max_seq_length": 64, "do_lower_case": False}


def test_server_support_per_architecture(tiny_architecture_dir, tiny_arch_dir, tmp_path):
    verdicts = {}
    for name, folder in [("arch", tiny_arch_dir), ("minicpm", tiny_architecture_dir("minicpm")),
                         ("qwen2", tiny_architecture_dir("qwen2"))]:
        out = export_model(model_config(folder), tmp_path / name, show_progress=False)
        verdicts[read(out, "config.json")["model_type"]] = server_support(out)
    for model_type, verdict in verdicts.items():
        takes_tei = model_type in ("llama", "gemma3_text", "qwen2")
        takes_vllm = model_type in ("llama", "gemma3_text", "qwen2")
        assert verdict["tei"].startswith("yes") == takes_tei, (model_type, verdict)
        assert verdict["vllm"].startswith("yes") == takes_vllm, (model_type, verdict)
    if "gemma3_text" in verdicts:
        assert "fp32 only" in verdicts["gemma3_text"]["tei"]
    if "phi" in verdicts:
        assert "embedtune serve" in verdicts["phi"]["tei"]
    assert "embedtune serve" in verdicts["minicpm"]["tei"]


# ---- dtype -----------------------------------------------------------------------------------------------------
def test_dtype_halves_the_weights_and_config_agrees(tiny_model_dir, tiny_adapter_dir, tiny_texts, tmp_path):
    sizes, vectors = {}, {}
    for dtype, torch_name, st_name in [("fp32", "float32", "F32"), ("bf16", "bfloat16", "BF16"),
                                       ("fp16", "float16", "F16")]:
        out = export_model(model_config(tiny_model_dir, tiny_adapter_dir), tmp_path / dtype, dtype=dtype,
                           show_progress=False)
        config = read(out, "config.json")
        assert config["dtype"] == config["torch_dtype"] == torch_name
        assert safetensors_dtypes(out / "model.safetensors") == {st_name}
        assert read(out, EXPORT_INFO_FILE)["dtype"] == dtype
        sizes[dtype] = (out / "model.safetensors").stat().st_size
        vectors[dtype] = Embedder(str(out), **FP32).encode(tiny_texts)
    assert sizes["bf16"] / sizes["fp32"] == pytest.approx(0.5, abs=0.01)
    assert sizes["fp16"] == pytest.approx(sizes["bf16"], rel=0.001)
    assert (normalized(vectors["bf16"]) * normalized(vectors["fp32"])).sum(1).min() > 0.99


def test_default_dtype_is_the_runs_precision(tiny_model_dir, tiny_adapter_dir, tmp_path):
    import shutil

    def run_with(precision: str, scored_in: str | None = None):
        run = tmp_path / f"run-{precision}-{scored_in}"
        shutil.copytree(tiny_adapter_dir, run / "final")
        (run / "config.json").write_text(json.dumps({"model": {}, "train": {"precision": precision}}))
        if scored_in:
            (run / "tuned.json").write_text(json.dumps({"model": "m", "tasks": {"sts12": {"spearman": 1.0, "n": 2}},
                                                        "average": 1.0, "std": 0.0,
                                                        "computed_with": {"precision": scored_in}}))
        out = export_model(model_config(tiny_model_dir, run / "final"), run / "export", show_progress=False)
        return read(out, EXPORT_INFO_FILE)["dtype"]

    assert run_with("bf16") == "bf16"
    assert run_with("auto", scored_in="bf16") == "bf16"
    assert run_with("auto") == "fp32"
    assert export_model(model_config(tiny_model_dir), tmp_path / "plain", show_progress=False).joinpath(
        "config.json").read_text().count('"float32"') == 2


# ---- bad inputs: one line, nothing written ---------------------------------------------------------------------
@pytest.mark.parametrize(("options", "message"), [
    ({"dtype": "fp8"}, "--dtype must be one of fp32, bf16, fp16, not 'fp8'"),
    ({"prompts": {"query": "{} is"}}, "not a '{}' template"),
    ({"prompts": {"document": "  "}}, "--document-prompt must be a non-empty text"),
    ({"prompts": {"title": "t: "}}, "unknown prompt name 'title'"),
    ({"dtype": "bf16", "adapter_only": True}, "--dtype applies to a merged export"),
])
def test_bad_export_inputs_fail_before_writing(options, message, tiny_model_dir, tiny_adapter_dir, tmp_path):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("{", r"\{").replace("}", r"\}")):
        export_model(model_config(tiny_model_dir, tiny_adapter_dir), tmp_path / "out", **options)
    assert not (tmp_path / "out").exists()


def test_cli_bad_dtype_is_one_line(tiny_model_dir, tmp_path, capsys):
    code = main(["export", "--model", str(tiny_model_dir), "--out", str(tmp_path / "out"), "--dtype", "int4"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and "int4" in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_cli_export_writes_dtype_and_prompts(tiny_model_dir, tiny_adapter_dir, tmp_path):
    out = tmp_path / "cli"
    code = main(["export", "--model", str(tiny_model_dir), "--adapter", str(tiny_adapter_dir), "--out", str(out),
                 "--dtype", "bf16", "--query-prompt", "query: "])
    assert code == 0
    assert read(out, "config_sentence_transformers.json")["prompts"] == {"query": "query: "}
    assert read(out, "config.json")["dtype"] == "bfloat16"


# ---- sentence-transformers -------------------------------------------------------------------------------------
def test_sentence_transformers_applies_the_named_prompt(deploy_export, tiny_texts):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(deploy_export), device="cpu")
    theirs = model.encode(tiny_texts[:4], prompt_name="query")
    ours = Embedder(str(deploy_export), **FP32).encode([PROMPTS["query"] + t for t in tiny_texts[:4]])
    np.testing.assert_allclose(theirs, normalized(ours), atol=1e-5)


def test_adapter_only_export_loads_in_sentence_transformers_peft(tiny_model_dir, tiny_adapter_dir, tiny_texts,
                                                                 tmp_path):
    from sentence_transformers import SentenceTransformer

    out = export_model(model_config(tiny_model_dir, tiny_adapter_dir, max_length=64), tmp_path / "adapter",
                       adapter_only=True, show_progress=False)
    assert read(out, "adapter_config.json")["base_model_name_or_path"] == str(tiny_model_dir)
    assert not (out / "model.safetensors").exists()
    model = SentenceTransformer(str(out), device="cpu")  # peft: base from adapter_config.json, adapter applied
    theirs = model.encode(tiny_texts)
    ours = Embedder(str(tiny_model_dir), adapter=str(tiny_adapter_dir), max_length=64, **FP32).encode(tiny_texts)
    np.testing.assert_allclose(theirs, normalized(ours), atol=1e-5)
    base = Embedder(str(tiny_model_dir), max_length=64, **FP32).encode(tiny_texts)
    assert np.abs(normalized(base) - theirs).max() > 1e-3  # the adapter was applied, not just the base


def test_export_shows_its_steps(tiny_model_dir, tmp_path, capsys, monkeypatch):
    from embedtune.export.merged import MERGED_STEPS

    monkeypatch.setenv("TQDM_MININTERVAL", "0")
    export_model(model_config(tiny_model_dir), tmp_path / "shown")
    err = capsys.readouterr().err
    assert f"{len(MERGED_STEPS) + 1}/{len(MERGED_STEPS) + 1}" in err and "done" in err
    assert all(name in err for name in MERGED_STEPS)
    export_model(model_config(tiny_model_dir), tmp_path / "quiet", show_progress=False)
    assert "export" not in capsys.readouterr().err
