"""Pair-classification files: read exactly, or fail in one line naming file, line and field."""
from __future__ import annotations

from pathlib import Path

import pytest

from embedtune.data.pairs import PAIR_TASKS, PairTask, load_pairs, read_pairs_file
from embedtune.errors import DataError


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode())
    return path


def test_packaged_records_are_mtebs_sets_at_mtebs_revisions():
    assert set(PAIR_TASKS) == {"sprintduplicatequestions", "twittersemeval2015", "twitterurlcorpus"}
    assert PAIR_TASKS["twitterurlcorpus"].revision == "8b6510b0b1fa4e4c4f879467980e9be563ec1cdf"
    assert all(t.hub_id.startswith("mteb/") and len(t.revision) == 40 for t in PAIR_TASKS.values())


def test_a_local_file_reads_back_with_blank_lines_counted(tmp_path):
    write(tmp_path / "pairs" / "mine" / "test.tsv",
          "\ufeffsentence1\tsentence2\tlabel\r\na b\tc\t1\r\n\r\n\"x\ty\"\tz\t0\r\nq\tr\t1.0\r\n")
    data = load_pairs(PairTask("mine"), tmp_path)
    assert (data.sentences1, data.sentences2, data.labels) == (["a b", "x\ty", "q"], ["c", "z", "r"], [1, 0, 1])
    assert data.blank_lines == 1 and len(data) == 3


@pytest.mark.parametrize("content,pattern", [
    ("sentence1\tsentence2\nA\tB\n", r"p.tsv:1, field 'label': missing column"),
    ("sentence1\tsentence2\tlabel\nA\tB\t1\nC\tD\t2\n", r"p.tsv:3, field 'label': label must be 0 or 1, got '2'"),
    ("sentence1\tsentence2\tlabel\nA\tB\t1\nC\tD\tyes\n", r"p.tsv:3, field 'label': not a number: 'yes'"),
    ("sentence1\tsentence2\tlabel\nA\tB\t1\nC\t \t0\n", r"p.tsv:3, field 'sentence2': empty sentence"),
    ("sentence1\tsentence2\tlabel\nA\tB\t1\nC\tD\t1\n", r"p.tsv: no negative pairs \(label 0\) among 2 rows"),
    ("sentence1\tsentence2\tlabel\nA\tB\t0\n", r"p.tsv: no positive pairs \(label 1\) among 1 rows"),
    ("sentence1,sentence2,label\nA,B,1\n", r"p.tsv:1, field 'sentence1': missing column.*comma-separated"),
    ("sentence1\tsentence2\tlabel\nA\tB\t1\textra\n", r"p.tsv:2: expected 3 fields, found 4"),
])
def test_bad_rows_are_named(tmp_path, content, pattern):
    path = write(tmp_path / "p.tsv", content)
    with pytest.raises(DataError, match=pattern) as caught:
        read_pairs_file(path, "p")
    assert len(str(caught.value).splitlines()) == 1


def test_json_labels_must_be_numbers_0_or_1(tmp_path):
    good = write(tmp_path / "p.jsonl", '{"sentence1": "a", "sentence2": "b", "label": 1}\n'
                                       '{"sentence1": "c", "sentence2": "d", "label": 0.0}\n')
    assert read_pairs_file(good, "p").labels == [1, 0]
    bad = write(tmp_path / "q.jsonl", '{"sentence1": "a", "sentence2": "b", "label": true}\n')
    with pytest.raises(DataError, match=r"q.jsonl:1, field 'label': not a number: True"):
        read_pairs_file(bad, "q")


def test_a_missing_local_file_names_its_path(tmp_path):
    with pytest.raises(DataError, match=r"pairs/nope/test.tsv: pair-classification file for task 'nope' not found"):
        load_pairs(PairTask("nope"), tmp_path)


def test_hub_splits_in_mtebs_one_row_layout_and_renamed_columns(monkeypatch):
    import datasets

    from embedtune.data import pairs

    asked = []

    def fake_hub(hub_id, subset, split, revision, name):
        asked.append((hub_id, subset, split, revision))
        return datasets.Dataset.from_dict({"sent1": [["a", "b"]], "sent2": [["c", "d"]], "labels": [[1, 0]]})

    monkeypatch.setattr(pairs, "hub_dataset", fake_hub)
    data = load_pairs(PAIR_TASKS["sprintduplicatequestions"], None)
    assert (data.sentences1, data.sentences2, data.labels) == (["a", "b"], ["c", "d"], [1, 0])
    assert asked == [("mteb/sprintduplicatequestions-pairclassification", None, "test",
                      "d66bd1f72af766a5cc4b0ca5e00c162f89e8cc46")]


def test_a_local_only_task_without_a_data_dir_says_how_to_run_offline():
    with pytest.raises(DataError, match="task 'mine' exists only as local files; pass --data-dir"):
        load_pairs(PairTask("mine"), None)
