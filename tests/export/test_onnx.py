"""`export --format onnx`: onnx/model.onnx in the merged folder gives embedtune's vectors under ONNX Runtime."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from embedtune.config import ModelConfig
from embedtune.errors import ConfigError, ModelError
from embedtune.export import configure_tokenizer_files, export_model
from embedtune.models.embedder import Embedder

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from embedtune.export import onnx as onnx_export  # noqa: E402 (after the skip: it needs the extra's packages)

MAX_LENGTH = 64
FP32 = {"precision": "fp32"}
MIN_COSINE = 1 - 1e-3  # the bar, per text


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def ort_vectors(folder, texts, padding_side="right") -> tuple[np.ndarray, dict]:
    """sentence_embedding and the batch fed, all texts in one batch (lengths differ: most rows are padded)."""
    import onnxruntime
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    tokenizer.padding_side = padding_side
    batch = tokenizer(list(texts), padding=True, truncation=True, return_tensors="np")
    session = onnxruntime.InferenceSession(str(folder / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    feed = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    return session.run(["sentence_embedding"], feed)[0], feed


@pytest.fixture(scope="module")
def onnx_export_dir(tiny_model_dir, tiny_adapter_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "merged"
    config = ModelConfig(name=str(tiny_model_dir), adapter=str(tiny_adapter_dir), max_length=MAX_LENGTH)
    return export_model(config, out, format="onnx")


def test_onnx_runtime_gives_the_pytorch_vectors(onnx_export_dir, tiny_model_dir, tiny_adapter_dir, tiny_texts):
    texts = [*tiny_texts, "", "a dog " * 100]  # the empty text and one cut at max_length, in the same batch
    ours = Embedder(str(tiny_model_dir), adapter=str(tiny_adapter_dir), max_length=MAX_LENGTH, **FP32).encode(texts)
    theirs, feed = ort_vectors(onnx_export_dir, texts)
    lengths = feed["attention_mask"].sum(1)
    assert len(set(lengths.tolist())) >= 4 and lengths.max() == MAX_LENGTH  # variable lengths, one truncated
    assert theirs.shape == ours.shape == (len(texts), 64)
    assert cosines(theirs, ours).min() >= MIN_COSINE
    np.testing.assert_allclose(np.linalg.norm(theirs, axis=1), 1.0, atol=1e-5)  # normalised in the graph
    # The adapter must show in the graph, or the test could not tell a merged export from the base model.
    base = Embedder(str(tiny_model_dir), max_length=MAX_LENGTH, **FP32).encode(texts)
    assert cosines(theirs, base).mean() < 0.99


def test_padding_side_and_batch_do_not_change_a_vector(onnx_export_dir, tiny_texts):
    right, _ = ort_vectors(onnx_export_dir, tiny_texts)
    left, feed = ort_vectors(onnx_export_dir, tiny_texts, padding_side="left")
    assert (feed["attention_mask"][:, 0] == 0).any()  # some rows really are left-padded
    assert cosines(left, right).min() >= 1 - 1e-5  # positions come from the mask inside the graph
    alone = np.concatenate([ort_vectors(onnx_export_dir, [text])[0] for text in tiny_texts[:3]])
    assert cosines(alone, right[:3]).min() >= 1 - 1e-5


def test_graph_inputs_outputs_and_dynamic_axes(onnx_export_dir):
    import onnx

    graph = onnx.load(str(onnx_export_dir / "onnx" / "model.onnx")).graph

    def dims(values) -> dict[str, list]:
        return {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in values}

    assert dims(graph.input) == {"input_ids": ["batch", "tokens"], "attention_mask": ["batch", "tokens"]}
    assert dims(graph.output) == {"last_hidden_state": ["batch", "tokens", 64], "sentence_embedding": ["batch", 64]}
    assert not (onnx_export_dir / "onnx" / ".trace").exists()  # the exporter's scratch folder is gone
    assert (onnx_export_dir / "model.safetensors").is_file()  # the sentence-transformers folder is all there too
    card = (onnx_export_dir / "README.md").read_text()
    assert "### ONNX Runtime" in card and "sentence_embedding" in card


def test_onnx_per_architecture(tiny_arch_dir, tiny_texts, tmp_path):
    """Gemma-3 (fused norms, sliding window), Phi and Llama trace and match (write_onnx checks, and so do we)."""
    out = export_model(ModelConfig(name=str(tiny_arch_dir), max_length=MAX_LENGTH), tmp_path / "x", format="onnx")
    ours = Embedder(str(tiny_arch_dir), max_length=MAX_LENGTH, **FP32).encode(tiny_texts)
    theirs, _ = ort_vectors(out, tiny_texts)
    assert cosines(theirs, ours).min() >= MIN_COSINE


def test_weights_beside_the_graph_when_large(tiny_model_dir, tiny_texts, tmp_path):
    """Past protobuf's 2 GB the weights go to onnx/model.onnx_data (threshold lowered here to force it)."""
    embedder = Embedder(str(tiny_model_dir), max_length=MAX_LENGTH, **FP32)
    embedder.tokenizer.save_pretrained(tmp_path)  # the check tokenizes with the folder's tokenizer, as exported
    configure_tokenizer_files(tmp_path, embedder)
    path = onnx_export.export_graph(tmp_path, embedder, external_data_bytes=0)
    assert (path.parent / "model.onnx_data").stat().st_size > path.stat().st_size
    assert onnx_export.check_onnx(tmp_path, embedder, tuple(tiny_texts[:4])) >= MIN_COSINE


def test_a_graph_that_disagrees_is_never_published(tiny_model_dir, tmp_path, monkeypatch):
    real = onnx_export.onnx_embeddings

    def skewed(folder, texts):
        vectors = real(folder, texts)
        vectors[1] = vectors[1] + 0.2 * np.roll(vectors[1], 1)  # one text off by far more than 1e-3
        return vectors

    monkeypatch.setattr(onnx_export, "onnx_embeddings", skewed)
    out = tmp_path / "never"
    with pytest.raises(ModelError, match=r"differ from PyTorch's \(lowest cosine 0\.9"):
        export_model(ModelConfig(name=str(tiny_model_dir), max_length=MAX_LENGTH), out, format="onnx")
    assert not out.exists() and list(tmp_path.iterdir()) == []  # nothing half-written


def test_bad_format_requests_fail_before_the_model_load(tiny_model_dir, tiny_adapter_dir, tmp_path):
    config = ModelConfig(name=str(tiny_model_dir), adapter=str(tiny_adapter_dir))
    with pytest.raises(ConfigError, match=r"^--format must be one of st, onnx, not 'tflite'$"):
        export_model(config, tmp_path / "a", format="tflite")
    with pytest.raises(ConfigError, match="cannot go with --adapter-only"):
        export_model(config, tmp_path / "b", adapter_only=True, format="onnx")
    assert list(tmp_path.iterdir()) == []


def test_cli_without_the_onnx_extra_is_one_line(tiny_model_dir, tmp_path, capsys, monkeypatch):
    from embedtune.cli import main

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    out = tmp_path / "x"
    assert main(["export", "--model", str(tiny_model_dir), "--out", str(out), "--format", "onnx"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["embedtune: error: --format onnx needs the 'onnx' extra (onnxruntime is not installed): "
                   "pip install 'embedtune[onnx]'"]
    assert not out.exists()


def test_cli_onnx_export_reports_its_steps(tiny_model_dir, tmp_path, capsys):
    from embedtune.cli import main

    out = tmp_path / "cli"
    assert main(["export", "--model", str(tiny_model_dir), "--out", str(out), "--format", "onnx",
                 "--max-length", str(MAX_LENGTH)]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == f"exported to {out}"
    # Off a terminal the bar writes plain lines: its start and its end, with the step it is on.
    lines = [line for line in captured.err.split("\n") if line.startswith("ONNX export")]
    assert lines and "0/2" in lines[0] and "2/2" in lines[-1]
    assert captured.err.count("ONNX export") == len(lines)  # each on a line of its own, no in-place redraws
    assert "checking against PyTorch" in lines[-1]
    assert (out / "onnx" / "model.onnx").is_file()


def test_sentence_transformers_onnx_backend_loads_the_folder(onnx_export_dir, tiny_texts):
    """SentenceTransformer(folder, backend="onnx") finds onnx/model.onnx and reads its last_hidden_state
    (through Optimum, which needs transformers < 4.58 in optimum-onnx 0.1: skipped where it does not install)."""
    pytest.importorskip("optimum.onnxruntime")
    from sentence_transformers import SentenceTransformer

    torch_model = SentenceTransformer(str(onnx_export_dir), device="cpu")
    onnx_model = SentenceTransformer(str(onnx_export_dir), device="cpu", backend="onnx")
    assert cosines(onnx_model.encode(tiny_texts), torch_model.encode(tiny_texts)).min() >= MIN_COSINE
