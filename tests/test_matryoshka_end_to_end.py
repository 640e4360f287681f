"""Matryoshka sizes end to end: `run` trains and scores them, the export records them (sentence-transformers'
truncate_dim gives embedtune's truncated vectors), `eval --dims` and `encode --dims` truncate, bad sizes fail in one
line before any model work."""
from __future__ import annotations

import json

import numpy as np
import pytest

from embedtune.cli import main
from embedtune.config import Config
from embedtune.evaluation.sts import STSEvaluator, paired_cosine, spearman_x100
from embedtune.experiment import run_experiment
from embedtune.export import EXPORT_INFO_FILE, export_model
from embedtune.models.embedder import Embedder, truncate_vectors
from embedtune.models.export_format import saved_matryoshka_dims
from embedtune.runs import layout
from embedtune.runs.records import EvalResult

WIDTH = 64  # the tiny models' hidden size


def test_truncated_scores_equal_a_hand_truncation(tiny_model_dir, tiny_data_dir):
    embedder = Embedder(str(tiny_model_dir), precision="fp32", device="cpu")
    evaluator = STSEvaluator.from_tasks(["sts12", "sickr"], tiny_data_dir, show_progress=False, dims=(32, 8))
    result = evaluator(embedder)
    assert list(result["dims"]) == ["8", "32"]
    for data in evaluator.datasets:
        task = data.name
        full_a, full_b = embedder.encode(data.sentences1), embedder.encode(data.sentences2)
        for dim in (8, 32):
            a, b = full_a[:, :dim], full_b[:, :dim]  # by hand: keep a prefix, re-normalise, cosine, Spearman
            a, b = a / np.linalg.norm(a, axis=1, keepdims=True), b / np.linalg.norm(b, axis=1, keepdims=True)
            expected = spearman_x100((a * b).sum(1), data.scores)
            assert result["dims"][str(dim)]["tasks"][task]["spearman"] == pytest.approx(expected, abs=1e-4)
        full = spearman_x100(paired_cosine(full_a, full_b), data.scores)
        assert result["tasks"][task]["spearman"] == pytest.approx(full, abs=1e-4)  # the full width unchanged
        assert result["dims"]["8"]["tasks"][task]["spearman"] != pytest.approx(full, abs=1e-3)
    entry = result["dims"]["8"]
    assert entry["average"] == pytest.approx(np.mean([t["spearman"] for t in entry["tasks"].values()]))


def test_eval_dims_writes_a_section_and_a_table_keeping_the_other_fields(tiny_model_dir, tiny_data_dir, tmp_path):
    out = tmp_path / "scores.json"
    args = ["eval", "--model", str(tiny_model_dir), "--data-dir", str(tiny_data_dir), "--tasks", "sts12",
            "--device", "cpu", "--precision", "fp32", "--output", str(out)]
    assert main([*args, "--dims", "16", "64"]) == 0
    with_dims = json.loads(out.read_text())
    assert set(with_dims["dims"]) == {"16", "64"}
    assert with_dims["dims"]["64"]["average"] == pytest.approx(with_dims["average"], abs=1e-4)  # full width
    assert "| 16 |" in out.with_suffix(".md").read_text()
    assert main(args) == 0
    without = json.loads(out.read_text())
    assert "dims" not in without and set(with_dims) - set(without) == {"dims"}
    assert without["average"] == pytest.approx(with_dims["average"], abs=1e-6)


@pytest.mark.parametrize("command,flags,message", [
    ("eval", ["--dims", "0"], "eval.dims must be distinct whole numbers >= 1, got [0]"),
    ("eval", ["--dims", "16", "16"], "eval.dims must be distinct whole numbers >= 1, got [16, 16]"),
    ("eval", ["--dims", "-8"], "got [-8]"),
    ("eval", ["--dims", "x"], "expected int, got 'x'"),
    ("train", ["--matryoshka-dims", "64,0"], "train.matryoshka_dims must be distinct whole numbers >= 1, got [64, 0]"),
    ("train", ["--matryoshka-dims", "64,128", "--matryoshka-weights", "1"],
     "train.matryoshka_weights needs one weight per size of train.matryoshka_dims: got [1.0] for [64, 128]"),
    ("train", ["--matryoshka-dims", "64", "--matryoshka-weights", "-1"], "must be finite numbers > 0, got [-1.0]"),
    ("train", ["--matryoshka-dims", "sixty"], "expected int, got 'sixty'"),
    ("encode", ["--dims", "0"], "--dims must be >= 1, got 0"),
])
def test_bad_sizes_are_one_line_errors_before_the_model_loads(command, flags, message, tmp_path, capsys,
                                                               monkeypatch):
    from embedtune.models import embedder as embedder_module

    monkeypatch.setattr(embedder_module.Embedder, "__init__", lambda *a, **k: pytest.fail("the model loaded"))
    (tmp_path / "in.txt").write_text("a text\n")
    common = {"eval": ["--model", "no/such-model"], "train": ["--output-dir", str(tmp_path / "out")],
              "encode": ["--model", "no/such-model", "--input", str(tmp_path / "in.txt"), "--output",
                         str(tmp_path / "v.npy")]}[command]
    try:
        code = main([command, *common, *flags])
    except SystemExit as stop:  # argparse's own refusal of a flag value
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) <= 2  # argparse prints its usage line before the message
    assert not (tmp_path / "out").exists() and not (tmp_path / "v.npy").exists()


def test_sizes_above_the_width_fail_before_encoding(tiny_model_dir, tiny_data_dir, tmp_path, capsys):
    (tmp_path / "in.txt").write_text("a text\nanother\n")
    assert main(["eval", "--model", str(tiny_model_dir), "--data-dir", str(tiny_data_dir), "--tasks", "sts12",
                 "--device", "cpu", "--dims", "16", "128", "--output", str(tmp_path / "s.json")]) == 2
    assert "eval.dims: 128 is above the model's width 64" in capsys.readouterr().err
    assert main(["encode", "--model", str(tiny_model_dir), "--device", "cpu", "--dims", "65", "--input",
                 str(tmp_path / "in.txt"), "--output", str(tmp_path / "v.npy")]) == 2
    assert "--dims: 65 is above the model's width 64" in capsys.readouterr().err
    assert not (tmp_path / "s.json").exists() and not (tmp_path / "v.npy").exists()


@pytest.fixture(scope="module")
def matryoshka_run(tiny_model_dir, tiny_data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("matryoshka") / "run"
    config = Config.from_dict({"model": {"name": str(tiny_model_dir), "device": "cpu"},
                               "data": {"data_dir": str(tiny_data_dir)},
                               "train": {"output_dir": str(out), "max_steps": 2, "batch_size": 8, "save_steps": 2,
                                         "eval_steps": 0, "precision": "fp32", "select": "final",
                                         "matryoshka_dims": "64,16", "matryoshka_weights": "1,0.5"},
                               "eval": {"tasks": ["sts12", "sts13"], "precision": "fp32", "cache": False}})
    run_experiment(config.validate())
    return out


def test_run_scores_base_and_tuned_at_the_trained_sizes_and_reports_them(matryoshka_run):
    report = json.loads((matryoshka_run / layout.REPORT_FILE).read_text())
    for name in ("base", "tuned"):
        assert set(report[name]["dims"]) == {"16", "64"}
        assert EvalResult.from_dict(report[name]).dim_averages()[64] == pytest.approx(report[name]["average"],
                                                                                     abs=1e-4)
    text = (matryoshka_run / layout.REPORT_MARKDOWN).read_text()
    assert "Average score by embedding size" in text and "| 16 |" in text
    assert "Average score by embedding size" in (matryoshka_run / layout.REPORT_HTML).read_text()
    from embedtune.evaluation.report import plots_available

    if plots_available():
        assert (matryoshka_run / layout.DIMS_PLOT).read_bytes()[:4] == b"\x89PNG"
        assert f"![dims]({layout.DIMS_PLOT})" in text


def test_the_trained_sizes_travel_with_the_adapter_and_the_export(matryoshka_run, tiny_model_dir, tiny_texts,
                                                                   tmp_path):
    from sentence_transformers import SentenceTransformer

    adapter = matryoshka_run / "final"
    assert json.loads((adapter / EXPORT_INFO_FILE).read_text())["matryoshka_dims"] == [16, 64]
    ours = Embedder(str(tiny_model_dir), adapter=str(adapter), precision="fp32", device="cpu")
    assert ours.matryoshka_dims == (16, 64)
    assert Embedder(str(tiny_model_dir), precision="fp32", device="cpu").matryoshka_dims is None

    out = export_model(Config.from_dict({"model": {"name": str(tiny_model_dir), "adapter": str(adapter)}}).model,
                       tmp_path / "merged")
    assert json.loads((out / EXPORT_INFO_FILE).read_text())["matryoshka_dims"] == [16, 64]
    assert "truncate_dim" not in json.loads((out / "config_sentence_transformers.json").read_text())
    assert "truncate_dim=16" in (out / "README.md").read_text()
    assert Embedder(str(out), precision="fp32", device="cpu").matryoshka_dims == (16, 64)

    theirs = SentenceTransformer(str(out), device="cpu", truncate_dim=16).encode(tiny_texts,
                                                                                 normalize_embeddings=True)
    mine = truncate_vectors(ours.encode(tiny_texts), 16)
    assert theirs.shape == mine.shape == (len(tiny_texts), 16)
    assert (mine * theirs).sum(1).min() >= 0.9999
    full = SentenceTransformer(str(out), device="cpu").encode(tiny_texts[:2])
    assert full.shape == (2, WIDTH)  # nothing truncates by default


def test_an_older_file_without_the_field_reads_as_none(tmp_path):
    (tmp_path / EXPORT_INFO_FILE).write_text(json.dumps({"format": "sentence-transformers", "pooling": "eos"}))
    assert saved_matryoshka_dims(tmp_path) is None
    for bad in ([16, 16], [0, 8], "16", [16, 128], [True]):
        (tmp_path / EXPORT_INFO_FILE).write_text(json.dumps({"matryoshka_dims": bad}))
        assert saved_matryoshka_dims(tmp_path, WIDTH) is None, bad
    (tmp_path / EXPORT_INFO_FILE).write_text(json.dumps({"matryoshka_dims": [64, 8]}))
    assert saved_matryoshka_dims(tmp_path, WIDTH) == (8, 64)


def test_encode_dims_writes_truncated_unit_vectors(tiny_model_dir, tiny_texts, tmp_path):
    (tmp_path / "in.txt").write_text("\n".join(tiny_texts[:4]) + "\n")
    assert main(["encode", "--model", str(tiny_model_dir), "--device", "cpu", "--dims", "8",
                 "--input", str(tmp_path / "in.txt"), "--output", str(tmp_path / "v.npy")]) == 0
    vectors = np.load(tmp_path / "v.npy")
    full = Embedder(str(tiny_model_dir), device="cpu").encode(tiny_texts[:4])  # as encode builds it
    np.testing.assert_allclose(vectors, truncate_vectors(full, 8), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
