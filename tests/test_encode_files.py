"""`embedtune encode`: file formats in and out, row order, errors that name file/line/field."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from embedtune.encode_files import encode_file, read_texts
from embedtune.errors import DataError
from embedtune.models.embedder import Embedder


@pytest.fixture(scope="module")
def tiny_embedder(tiny_model_dir, tiny_adapter_dir):
    # fp32: these tests are about files, not about bf16 rounding differing between batch shapes.
    return Embedder(str(tiny_model_dir), adapter=str(tiny_adapter_dir), max_length=64, precision="fp32")


def write_txt(path, texts):
    path.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    return path


def test_txt_to_npy_matches_python_api(tiny_embedder, tiny_texts, tmp_path):
    out = tmp_path / "deep" / "vectors.npy"
    n = encode_file(tiny_embedder, write_txt(tmp_path / "in.txt", tiny_texts), out, batch_size=2,
                    show_progress=False)
    assert n == len(tiny_texts)
    vectors = np.load(out)
    assert vectors.dtype == np.float32 and vectors.shape == (len(tiny_texts), tiny_embedder.hidden_size)
    # Length-bucketed batches of 2 must give the rows of one big batch, in input order.
    np.testing.assert_allclose(vectors, tiny_embedder.encode(tiny_texts, batch_size=64), atol=2e-3)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # temp file gone


def test_jsonl_in_jsonl_out(tiny_embedder, tiny_texts, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(json.dumps({"id": i, "body": t}) for i, t in enumerate(tiny_texts)) + "\n\n")
    out = tmp_path / "out.jsonl"
    assert encode_file(tiny_embedder, src, out, column="body", show_progress=False) == len(tiny_texts)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(len(tiny_texts)))
    got = np.array([r["embedding"] for r in rows], dtype=np.float32)
    np.testing.assert_allclose(got, tiny_embedder.encode(tiny_texts), atol=2e-3)


def test_csv_column(tiny_embedder, tmp_path):
    src = tmp_path / "in.csv"
    with src.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "sentence"])
        writer.writerows([[1, "a dog, running"], [2, 'a "quoted" cat\non two lines'], [3, "x"]])
    assert read_texts(src, "sentence") == ["a dog, running", 'a "quoted" cat\non two lines', "x"]
    out = tmp_path / "out.npy"
    assert encode_file(tiny_embedder, src, out, column="sentence", show_progress=False) == 3
    assert np.load(out).shape == (3, tiny_embedder.hidden_size)


def test_txt_lines_are_texts_verbatim(tmp_path):
    src = tmp_path / "in.txt"
    src.write_bytes("\ufefffirst\r\n  second with spaces \nthird\u2028same line".encode())
    assert read_texts(src) == ["first", "  second with spaces ", "third\u2028same line"]


@pytest.mark.parametrize(
    ("name", "content", "column", "match", "line", "field"),
    [
        ("gap.txt", "one\n\nthree\n", "text", "empty line", 2, None),
        ("empty.txt", "", "text", "no texts", None, None),
        ("bad.jsonl", '{"text": "ok"}\n{"text": oops}\n', "text", "invalid JSON", 2, None),
        ("num.jsonl", '{"text": "ok"}\n{"text": 5}\n', "text", "empty sentence", 2, "text"),
        ("nocol.csv", "id,body\n1,hello\n", "text", "missing column", 1, "text"),
        ("blank.csv", "id,text\n1,hello\n2,  \n", "text", "empty sentence", 3, "text"),
        ("latin1.txt", b"caf\xe9\n", "text", "not valid UTF-8", 1, None),
    ],
)
def test_bad_input_is_located(tiny_embedder, tmp_path, name, content, column, match, line, field):
    src = tmp_path / name
    src.write_bytes(content if isinstance(content, bytes) else content.encode())
    out = tmp_path / "out.npy"
    with pytest.raises(DataError, match=match) as info:
        encode_file(tiny_embedder, src, out, column=column, show_progress=False)
    assert info.value.file == str(src) and info.value.line == line and info.value.field == field
    assert not out.exists()


def test_bad_paths(tiny_embedder, tmp_path):
    src = write_txt(tmp_path / "in.txt", ["a"])
    with pytest.raises(DataError, match="file not found"):
        encode_file(tiny_embedder, tmp_path / "missing.txt", tmp_path / "o.npy")
    with pytest.raises(DataError, match="unsupported output type"):
        encode_file(tiny_embedder, src, tmp_path / "o.csv")
    with pytest.raises(DataError, match="unsupported input type"):
        encode_file(tiny_embedder, tmp_path / "in.docx", tmp_path / "o.npy")


def test_cli_encode(tiny_model_dir, tiny_texts, tmp_path, capsys):
    from embedtune.cli import main

    src = write_txt(tmp_path / "in.txt", tiny_texts)
    out = tmp_path / "out.npy"
    assert main(["encode", "--model", str(tiny_model_dir), "--input", str(src), "--output", str(out),
                 "--batch-size", "4"]) == 0
    assert np.load(out).shape[0] == len(tiny_texts)
    assert f"wrote {len(tiny_texts)} embeddings" in capsys.readouterr().out
    # A bad path fails with a one-line error (exit 2) before the model is loaded.
    assert main(["encode", "--model", "/nonexistent/model", "--input", str(tmp_path / "nope.txt"),
                 "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "nope.txt: file not found" in err and "Traceback" not in err
