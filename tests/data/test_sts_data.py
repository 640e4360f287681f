"""Bad evaluation input fails before any model work, in one line naming file, line and field."""
from __future__ import annotations

from pathlib import Path

import pytest

from embedtune.cli import main
from embedtune.data.sts import ALL_TASKS, STS_TASKS, load_sts, read_sts_file, resolve_data_dir, resolve_tasks
from embedtune.errors import ConfigError, DataError


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def test_nine_tasks_with_mteb_hub_records():
    assert ALL_TASKS == ("sts12", "sts13", "sts14", "sts15", "sts16", "sts17", "stsbenchmark", "biosses", "sickr")
    assert STS_TASKS["sts17"].hub_id == "mteb/sts17-crosslingual-sts" and STS_TASKS["sts17"].subset == "en-en"
    assert all(len(t.revision) == 40 for t in STS_TASKS.values())


def test_unknown_task_lists_the_valid_names():
    with pytest.raises(ConfigError, match="unknown task.*sts99.*valid tasks: sts12, .*sickr"):
        resolve_tasks(["sts12", "sts99"])


def test_missing_data_dir_and_file(tmp_path):
    with pytest.raises(DataError, match="data directory not found"):
        resolve_data_dir(tmp_path / "nope")
    with pytest.raises(DataError, match=r"sts12/test.tsv.*not found"):
        load_sts(STS_TASKS["sts12"], tmp_path)


@pytest.mark.parametrize("content,pattern", [
    ("sentence1\tscore\na\t1\n", r"x.tsv:1, field 'sentence2': missing column"),
    ("sentence1\tsentence2\tscore\na\tb\t1\n\tb\t2\n", r"x.tsv:3, field 'sentence1': empty sentence"),
    ("sentence1\tsentence2\tscore\na\tb\t1\nc\td\thigh\n", r"x.tsv:3, field 'score': not a number: 'high'"),
    ("sentence1\tsentence2\tscore\na\tb\tnan\n", r"x.tsv:2, field 'score': not a finite number"),
    ("sentence1\tsentence2\tscore\n", r"x.tsv:1: no data rows"),
    ("sentence1\tsentence2\tscore\na\tb\n", r"x.tsv:2: expected 3 fields, found 2"),
])
def test_bad_rows_name_file_line_and_field(tmp_path, content, pattern):
    with pytest.raises(DataError, match=pattern):
        read_sts_file(write(tmp_path / "x.tsv", content), "x")


def test_non_utf8_bytes_name_the_line(tmp_path):
    path = write(tmp_path / "x.tsv", b"sentence1\tsentence2\tscore\na\tb\t1\nc\xff\td\t2\n")
    with pytest.raises(DataError, match=r"x.tsv:3: not valid UTF-8"):
        read_sts_file(path, "x")


def test_cli_prints_one_line_without_traceback(tmp_path, capsys):
    write(tmp_path / "sts" / "biosses" / "test.tsv", "sentence1\tsentence2\tscore\na\tb\tbad\n")
    code = main(["eval", "--model", "does/not/exist/here", "--data-dir", str(tmp_path), "--tasks", "biosses",
                 "--output", str(tmp_path / "r.json")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "test.tsv:2, field 'score': not a number" in err  # data is checked before the model is looked for


def test_cli_unknown_task_and_missing_model(tmp_path, capsys, tiny_data_dir):
    assert main(["eval", "--tasks", "sts99", "--data-dir", str(tiny_data_dir)]) == 2
    assert "valid tasks" in capsys.readouterr().err
    assert main(["eval", "--model", str(tmp_path / "missing"), "--data-dir", str(tiny_data_dir),
                 "--tasks", "sts12"]) == 2
    assert "model path not found" in capsys.readouterr().err


def test_unsupported_gguf_architecture_is_refused(tmp_path, monkeypatch, capsys, tiny_data_dir):
    import numpy as np
    from gguf import GGUFWriter

    path = tmp_path / "weird.gguf"
    writer = GGUFWriter(str(path), "mamba9000")
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file(), writer.close()
    monkeypatch.setenv("EMBEDTUNE_CACHE", str(tmp_path / "cache"))
    assert main(["eval", "--model", str(path), "--data-dir", str(tiny_data_dir), "--tasks", "sts12"]) == 2
    assert "GGUF architecture 'mamba9000' cannot be loaded by transformers" in capsys.readouterr().err
