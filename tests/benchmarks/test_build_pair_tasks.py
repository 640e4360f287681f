"""benchmarks/build_pair_tasks.py on a hand-made source: the held-out rule, SICK's bands, links, refusals."""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest

from benchmarks import build_pair_tasks


def write(path: Path, header: list[str], rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(header)
        writer.writerows(rows)


@pytest.fixture
def source(tmp_path) -> Path:
    root = tmp_path / "shared"
    write(root / "nli" / "triplets" / "a.tsv", ["sent0", "sent1", "hard_neg"], [["P1", "H1", "N1"]])
    write(root / "nli" / "pairs" / "a.tsv", ["premise", "hypothesis", "label"], [
        ["P1", "H9", "entailment"],  # premise trained on
        ["P2", "H2", "entailment"], ["P2", "H3", "neutral"], ["P2", "H1", "contradiction"],  # H1 trained on
        ["P3", "H4", "contradiction"], ["P3", "H4", "contradiction"], ["P3", "H5", "-"]])
    write(root / "sts" / "sickr" / "test.tsv", ["sentence1", "sentence2", "score"],
          [["a", "b", "4.0"], ["c", "d", "3.9"], ["e", "f", "2.99"], ["g", "h", "3"]])
    return root


def run(monkeypatch, *args: str) -> None:
    monkeypatch.setattr(sys, "argv", ["build_pair_tasks.py", *args])
    build_pair_tasks.main()


def read(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.reader(f, delimiter="\t"))


def test_builds_the_held_out_and_sick_sets_and_links_the_rest(source, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    run(monkeypatch, "--data-dir", str(source), "--out", str(out))
    assert read(out / "pairs" / "nli-heldout" / "test.tsv") == [["sentence1", "sentence2", "label"],
                                                                 ["P2", "H2", "1"], ["P3", "H4", "0"]]
    assert read(out / "pairs" / "sickr-related" / "test.tsv")[1:] == [["a", "b", "1"], ["e", "f", "0"]]
    assert (out / "nli").resolve() == (source / "nli").resolve() and (out / "sts" / "sickr" / "test.tsv").is_file()
    printed = capsys.readouterr().out
    assert ("nli-heldout: 2 pairs (1 label 1, 1 label 0); left out: 1 premise in the triplets, 1 label 'neutral', "
            "1 hypothesis in the triplets, 1 duplicate pair, 1 label '-'") in printed
    assert "sickr-related: 2 pairs (1 label 1, 1 label 0); left out: 2 relatedness in [3, 4)" in printed
    run(monkeypatch, "--data-dir", str(source), "--out", str(out))  # again: the links are already right


def test_refuses_to_write_into_the_source_or_the_repository(source, monkeypatch):
    for out in (source / "pairs-here", build_pair_tasks.REPO / "data-here"):
        with pytest.raises(SystemExit, match="overlaps"):
            run(monkeypatch, "--data-dir", str(source), "--out", str(out))
        assert not out.exists()
