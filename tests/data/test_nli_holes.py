"""Training-data holes: numeric NLI labels, pairs-only files, pair-conversion counts, negatives never tokenised
without hard negatives, decontamination against the dev split that picks the best checkpoint."""
from __future__ import annotations

import csv
import json
import logging
import os
import shutil
from pathlib import Path

import pytest

from embedtune.cli import main
from embedtune.config import Config, DataConfig
from embedtune.data.nli import Triplet, clean_triplets, load_triplets, read_training_file
from embedtune.errors import DataError

PAIRS_BY_NAME = ("premise\thypothesis\tlabel\n"
                 "P1\tE1\tentailment\nP1\tN1\tneutral\nP1\tC1\tcontradiction\nP1\tE2\tentailment\n"
                 "P2\tE3\tentailment\nP3\tC3\tcontradiction\nP4\tX\t-\n\tE5\tentailment\n")
CLASS_IDS = {"entailment": "0", "neutral": "1", "contradiction": "2", "-": "-1"}  # the hub's SNLI/MultiNLI
PAIRS_BY_ID = "premise\thypothesis\tlabel\n" + "".join(
    f"{text}\t{CLASS_IDS[label]}\n"
    for text, label in (line.rsplit("\t", 1) for line in PAIRS_BY_NAME.splitlines()[1:]))


def write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_numeric_labels_read_as_the_hubs_class_ids(tmp_path, caplog):
    by_name = read_training_file(write(tmp_path / "names.tsv", PAIRS_BY_NAME), DataConfig())
    with caplog.at_level(logging.INFO, logger="embedtune"):
        by_id = read_training_file(write(tmp_path / "ids.tsv", PAIRS_BY_ID), DataConfig())
    assert by_id == by_name == [("P1", "E1", "C1")]
    notes = [r.getMessage() for r in caplog.records if "numeric NLI labels" in r.getMessage()]
    assert len(notes) == 1  # once per file, naming the mapping
    assert "ids.tsv" in notes[0] and "0 entailment, 1 neutral, 2 contradiction, -1 no gold label" in notes[0]
    # JSON lines and parquet hold the ids as integers
    records = [{"premise": "P", "hypothesis": "H1", "label": 0}, {"premise": "P", "hypothesis": "H2", "label": 2},
               {"premise": "P", "hypothesis": "H3", "label": -1}]
    path = tmp_path / "ids.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert read_training_file(str(path), DataConfig()) == [("P", "H1", "H2")]


def test_unknown_labels_stop_with_the_place_and_the_accepted_values(tmp_path):
    path = write(tmp_path / "odd.tsv", "premise\thypothesis\tlabel\nP\tH\tentailment\nP\tH2\tmaybe\n")
    with pytest.raises(DataError, match=r"odd.tsv:3, field 'label': unknown NLI label 'maybe'.*0, 1, 2 and -1"):
        read_training_file(path, DataConfig())
    path = write(tmp_path / "floats.tsv", "premise\thypothesis\tlabel\nP\tH\t0.7\n")
    with pytest.raises(DataError, match="unknown NLI label '0.7'"):
        read_training_file(path, DataConfig())


def test_pair_conversion_drops_are_counted(tmp_path):
    path = write(tmp_path / "pairs.tsv", PAIRS_BY_NAME + "P5\tE6\tentailment\nP5\tC6\tcontradiction\n")
    triplets, report = load_triplets(DataConfig(train_files=[path]), None, None)
    assert triplets == [Triplet("P1", "E1", "C1"), Triplet("P5", "E6", "C6")]
    assert report.as_dict() == {
        "read": 2, "empty_field": 0, "degenerate": 0, "duplicate": 0, "contaminated": 0, "kept": 2,
        "pairs_read": 10, "pairs_empty_field": 1, "pairs_neutral": 1, "pairs_no_label": 1,
        "pairs_no_entailment": 1,  # P3's contradiction
        "pairs_no_contradiction": 1,  # P2's entailment
        "pairs_unused": 1,  # P1's second entailed hypothesis
    }
    assert "10 NLI pair rows read" in report.summary() and "1 were neutral" in report.summary()
    # without hard negatives a premise needs only an entailed hypothesis; contradictions go unused
    triplets, report = load_triplets(DataConfig(train_files=[path]), None, None, hard_negatives=False)
    assert triplets == [Triplet("P1", "E1"), Triplet("P2", "E3"), Triplet("P5", "E6")]
    assert (report.pairs_no_entailment, report.pairs_no_contradiction, report.pairs_unused) == (1, 0, 3)
    used = report.read  # one entailed hypothesis per row built
    assert report.pairs_read == used + sum(v for k, v in report.as_dict().items()
                                           if k.startswith("pairs_") and k != "pairs_read")


def test_all_entailed_builds_one_triplet_per_entailed_hypothesis(tmp_path):
    # P1: two entailed, one contradicted (shared); P6: three entailed, two contradicted (taken in turn)
    extra = ("P6\tE7\tentailment\nP6\tC7\tcontradiction\nP6\tE8\tentailment\nP6\tC8\tcontradiction\n"
             "P6\tE9\tentailment\n")
    path = write(tmp_path / "pairs.tsv", PAIRS_BY_NAME + extra)
    triplets, report = load_triplets(DataConfig(train_files=[path], all_entailed=True), None, None)
    assert triplets == [Triplet("P1", "E1", "C1"), Triplet("P1", "E2", "C1"), Triplet("P6", "E7", "C7"),
                        Triplet("P6", "E8", "C8"), Triplet("P6", "E9", "C7")]
    assert report.pairs_unused == 0  # P1's neutral row is counted as neutral
    rows_used = report.read + 1 + 2  # each row built uses an entailed row; P1 uses 1 contradicted row, P6 2
    assert report.pairs_read == rows_used + sum(v for k, v in report.as_dict().items()
                                                if k.startswith("pairs_") and k != "pairs_read")
    first_only, _ = load_triplets(DataConfig(train_files=[path]), None, None)
    assert first_only == [Triplet("P1", "E1", "C1"), Triplet("P6", "E7", "C7")]
    without, report = load_triplets(DataConfig(train_files=[path], all_entailed=True), None, None,
                                    hard_negatives=False)
    assert [t.positive for t in without] == ["E1", "E2", "E3", "E7", "E8", "E9"]
    assert report.pairs_unused == 3  # C1, C7, C8 unused without hard negatives


def test_all_entailed_reads_the_data_dirs_raw_pairs_and_says_when_files_are_triplets(tmp_path, caplog):
    (tmp_path / "nli" / "pairs").mkdir(parents=True)
    (tmp_path / "nli" / "triplets").mkdir()
    write(tmp_path / "nli" / "pairs" / "a.tsv", PAIRS_BY_NAME)
    triplets_file = write(tmp_path / "nli" / "triplets" / "t.tsv", "sent0\tsent1\thard_neg\na\tb\tc\nd\te\tf\n")
    triplets, _ = load_triplets(DataConfig(all_entailed=True), tmp_path, None, hard_negatives=False)
    assert triplets == [Triplet("P1", "E1"), Triplet("P1", "E2"), Triplet("P2", "E3")]
    with caplog.at_level(logging.WARNING, logger="embedtune"):
        triplets, _ = load_triplets(DataConfig(all_entailed=True, train_files=[triplets_file]), None, None)
    assert triplets == [Triplet("a", "b", "c"), Triplet("d", "e", "f")]
    assert any("t.tsv holds triplets, read as they are" in r.getMessage() for r in caplog.records)
    caplog.clear()
    load_triplets(DataConfig(), tmp_path, None)  # without the switch: the triplets folder, no warning
    assert not caplog.records


def test_triplet_files_report_no_pair_counts(tiny_data_dir):
    _, report = load_triplets(DataConfig(), tiny_data_dir, None)
    assert not any(k.startswith("pairs_") for k in report.as_dict()) and "NLI pair" not in report.summary()


def test_a_pairs_only_file_trains_without_hard_negatives_and_is_refused_with_them(tmp_path, capsys):
    path = write(tmp_path / "qa.tsv", "sent0\tsent1\nq one\ta one\nq two\ta two\nq three\t \n")
    triplets, report = load_triplets(DataConfig(train_files=[path]), None, None, hard_negatives=False)
    assert triplets == [Triplet("q one", "a one"), Triplet("q two", "a two")]
    assert (report.read, report.empty_field, report.kept) == (3, 1, 2)
    with pytest.raises(DataError) as caught:
        load_triplets(DataConfig(train_files=[path]), None, None, hard_negatives=True)
    message = str(caught.value)
    assert message.startswith(f"{path}:1, field 'hard_neg': missing column (found: sent0, sent1)")
    assert "--no-hard-negatives" in message and "\n" not in message
    # the CLI says it in one line, before any model loads
    assert main(["train", "--output-dir", str(tmp_path / "o"), "--train-file", path, "--no-decontaminate"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "qa.tsv:1, field 'hard_neg': missing column" in err
    assert "--no-hard-negatives" in err


def test_without_hard_negatives_cleaning_looks_at_anchor_and_positive_only():
    rows = [("a", "b"), ("c", "d"), ("c", "d"), ("e", "E"), ("f", "g")]
    kept, report = clean_triplets(rows, eval_sentences={"g"})
    assert kept == [Triplet("a", "b"), Triplet("c", "d")]
    assert (report.degenerate, report.duplicate, report.contaminated, report.kept) == (1, 1, 1, 2)


def test_the_negative_column_is_read_only_with_hard_negatives(tmp_path):
    # A positive equal to its negative, or a negative from an eval set, matters only when negatives train.
    path = write(tmp_path / "t.tsv", "sent0\tsent1\thard_neg\na\tb\tb\nc\td\tan eval sentence\ne\tf\t \n")
    config = DataConfig(train_files=[path])
    kept, report = load_triplets(config, None, {"an eval sentence"}, hard_negatives=False)
    assert kept == [Triplet("a", "b"), Triplet("c", "d"), Triplet("e", "f")] and report.kept == 3
    with pytest.raises(DataError, match="no training data left"):
        load_triplets(config, None, {"an eval sentence"}, hard_negatives=True)  # 1 degenerate, 1 contaminated, 1 empty


@pytest.mark.skipif(not (Path(os.environ.get("EMBEDTUNE_DATA_DIR", "/work/shared/data")) / "nli" / "pairs").is_dir(),
                    reason="the shared NLI data is not on this machine")
def test_the_shared_pairs_rebuild_the_shared_triplets():
    root = Path(os.environ.get("EMBEDTUNE_DATA_DIR", "/work/shared/data")) / "nli"
    rows = read_training_file(str(root / "pairs" / "snli-dev.tsv"), DataConfig())
    with (root / "triplets" / "snli-dev.tsv").open(newline="", encoding="utf-8") as f:
        expected = [tuple(r) for r in list(csv.reader(f, delimiter="\t"))[1:]]
    assert rows == expected and len(rows) == 2943


# ---- through the trainer: what gets tokenised, and what the dev split blocks --------------------------------

DEV_SENTENCE_ROW = 3  # the training row whose anchor is a sentence of the STSBenchmark dev split


def data_dir_with_a_dev_sentence(tiny_data_dir: Path, root: Path) -> tuple[Path, list[list[str]], str]:
    """The tiny data dir, its triplets replaced by 12 rows with recognisable negatives, one anchor from dev."""
    data = root / "data"
    shutil.copytree(tiny_data_dir, data)
    with (data / "sts" / "stsbenchmark" / "dev.tsv").open(newline="", encoding="utf-8") as f:
        dev = [r[0] for r in list(csv.reader(f, delimiter="\t"))[1:]]
    tests = set()
    for task_file in (data / "sts").glob("*/test.tsv"):
        with task_file.open(newline="", encoding="utf-8") as f:
            for r in list(csv.reader(f, delimiter="\t"))[1:]:
                tests.update(r[:2])
    dev_only = next(s for s in dev if s not in tests)
    rows = [[f"anchor number {i}", f"positive number {i}", f"negative number {i}"] for i in range(12)]
    rows[DEV_SENTENCE_ROW][0] = dev_only
    for old in (data / "nli" / "triplets").iterdir():
        old.unlink()
    with (data / "nli" / "triplets" / "rows.tsv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(["sent0", "sent1", "hard_neg"])
        writer.writerows(rows)
    return data, rows, dev_only


def test_a_training_row_holding_a_dev_sentence_is_contaminated_only_when_dev_evaluation_runs(tiny_data_dir,
                                                                                              tmp_path):
    from embedtune.training.trainer import blocked_sentences

    data, rows, dev_only = data_dir_with_a_dev_sentence(tiny_data_dir, tmp_path)
    for eval_steps, contaminated in ((50, 1), (0, 0)):
        config = Config.from_dict({"data": {"data_dir": str(data)}, "train": {"eval_steps": eval_steps}})
        blocked = blocked_sentences(config)
        assert (dev_only in blocked) == bool(eval_steps)
        triplets, report = load_triplets(config.data, data, blocked)
        assert (report.read, report.contaminated, report.kept) == (12, contaminated, 12 - contaminated)
        assert (Triplet(*rows[DEV_SENTENCE_ROW]) in triplets) == (not contaminated)


@pytest.mark.parametrize("hard_negatives", [False, True])
def test_the_trainer_tokenises_negatives_only_with_hard_negatives(tiny_model_dir, tiny_data_dir, tmp_path,
                                                                 hard_negatives):
    from embedtune.models.embedder import Embedder
    from embedtune.training.trainer import train

    data, rows, dev_only = data_dir_with_a_dev_sentence(tiny_data_dir, tmp_path)
    embedder = Embedder(str(tiny_model_dir), precision="fp32", device="cpu")
    seen: list[str] = []
    tokenize = embedder.tokenize

    def counting(texts):
        seen.extend(texts)
        return tokenize(texts)

    embedder.tokenize = counting
    out = tmp_path / "out"
    config = Config.from_dict({"data": {"data_dir": str(data)}, "train": {
        "output_dir": str(out), "hard_negatives": hard_negatives, "max_steps": 2, "batch_size": 4, "eval_steps": 2,
        "save_steps": 2, "precision": "fp32"}})
    train(config.validate(), embedder=embedder)

    kept = [r for i, r in enumerate(rows) if i != DEV_SENTENCE_ROW]
    negatives = [r[2] for r in kept]
    assert all(r[0] in seen and r[1] in seen for r in kept)
    # with hard negatives each kept negative is tokenised once; without, none (nor the dropped row's)
    assert sum(t.startswith("negative number") for t in seen) == (len(negatives) if hard_negatives else 0)
    assert all(t in seen for t in negatives) == hard_negatives
    # the dev row was dropped as contaminated, and data_report.json says so
    assert rows[DEV_SENTENCE_ROW][1] not in seen
    report = json.loads((out / "data_report.json").read_text())
    assert report == {"read": 12, "empty_field": 0, "degenerate": 0, "duplicate": 0, "contaminated": 1, "kept": 11}
