"""Training data: triplet files in several formats, raw NLI pairs, cleaning counts, decontamination."""
from __future__ import annotations

import json

import pytest

from embedtune.config import DataConfig
from embedtune.data.nli import Triplet, clean_triplets, load_triplets, read_training_file
from embedtune.errors import DataError


def test_cleaning_counts_each_rule():
    rows = [
        ("a man plays", "a person plays", "nobody plays"),
        None,                                                # an empty field
        ("same", "Same", "other"),                          # anchor == positive (case-insensitive)
        ("p", "q", "q"),                                     # positive == negative
        ("a man plays", "a person plays", "nobody plays"),  # duplicate
        ("A dog runs.", "an animal moves", "a cat sleeps"),  # anchor occurs in an eval set
        ("kids eat", "children eat", "kids starve"),
    ]
    kept, report = clean_triplets(rows, eval_sentences={"a dog  runs."})
    assert report.as_dict() == {"read": 7, "empty_field": 1, "degenerate": 2, "duplicate": 1, "contaminated": 1,
                                "kept": 2}
    assert kept == [Triplet("a man plays", "a person plays", "nobody plays"),
                    Triplet("kids eat", "children eat", "kids starve")]


def test_raw_pairs_become_triplets(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text("premise\thypothesis\tlabel\n"
                    "P1\tE1\tentailment\nP1\tN1\tneutral\nP1\tC1\tcontradiction\nP1\tE2\tentailment\n"
                    "P2\tE3\tentailment\nP3\tC3\tcontradiction\nP4\tX\t-\n")
    rows = read_training_file(str(path), DataConfig())
    assert rows == [("P1", "E1", "C1")]  # P2 has no contradiction, P3 no entailment


def test_column_mapping_and_formats(tmp_path):
    records = [{"q": f"query {i}", "pos": f"good {i}", "neg": f"bad {i}"} for i in range(3)]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    import pandas as pd

    pd.DataFrame(records).to_parquet(tmp_path / "t.parquet")
    pd.DataFrame(records).to_csv(tmp_path / "t.csv", index=False)
    config = DataConfig(anchor_column="q", positive_column="pos", negative_column="neg")
    for name in ("t.jsonl", "t.parquet", "t.csv"):
        assert read_training_file(str(tmp_path / name), config)[1] == ("query 1", "good 1", "bad 1")


def test_missing_column_and_no_data(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text("sent0\tsent1\nA\tB\n")
    with pytest.raises(DataError, match="t.tsv:1, field 'hard_neg': missing column"):
        read_training_file(str(path), DataConfig())
    path.write_text("sent0\tsent1\thard_neg\nA\tA\tB\n")
    with pytest.raises(DataError, match="no training data left after cleaning"):
        load_triplets(DataConfig(train_files=[str(path)]), None, None)


def test_default_files_come_from_the_data_dir(tiny_data_dir):
    triplets, report = load_triplets(DataConfig(), tiny_data_dir, None)
    assert report.as_dict() == {"read": 64, "empty_field": 0, "degenerate": 0, "duplicate": 0, "contaminated": 0,
                                "kept": 64}
    rows = (tiny_data_dir / "nli" / "triplets" / "tiny.tsv").read_text().splitlines()[1:]
    assert triplets == [Triplet(*row.split("\t")) for row in rows]


def test_evaluation_sentences_cover_the_asked_splits(tmp_path):
    from embedtune.data.nli import evaluation_sentences
    from embedtune.data.sts import STS_TASKS

    folder = tmp_path / "sts" / "stsbenchmark"
    folder.mkdir(parents=True)
    (folder / "test.tsv").write_text("sentence1\tsentence2\tscore\nA test one\tA test two\t1.0\n")
    (folder / "dev.tsv").write_text("sentence1\tsentence2\tscore\nA dev one\tA test one\t2.0\n")
    task = STS_TASKS["stsbenchmark"]
    assert evaluation_sentences(tmp_path, [task]) == {"A test one", "A test two"}
    assert evaluation_sentences(tmp_path, [task], splits=["dev"]) == {"A dev one", "A test one"}
    assert evaluation_sentences(tmp_path, [task], splits=[None, "dev"]) == {"A test one", "A test two", "A dev one"}


def test_empty_triplet_folder_is_an_error(tmp_path):
    (tmp_path / "nli" / "triplets").mkdir(parents=True)
    with pytest.raises(DataError, match="no training data"):
        load_triplets(DataConfig(), tmp_path, None)
