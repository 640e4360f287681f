"""An evaluation's progress: one encoding bar (its ETA is the evaluation's) and a line per task as it is scored."""
from __future__ import annotations

import re

import pytest

from embedtune.evaluation.sts import STSEvaluator
from embedtune.models.embedder import Embedder

TASKS = ["sts12", "sickr", "biosses"]


@pytest.fixture(scope="module")
def tiny_embedder(tiny_model_dir):
    return Embedder(str(tiny_model_dir), precision="fp32")


def test_each_task_gets_a_line_with_its_score(tiny_embedder, tiny_data_dir, capsys, monkeypatch):
    monkeypatch.setenv("TQDM_MININTERVAL", "0")
    result = STSEvaluator.from_tasks(TASKS, tiny_data_dir, show_progress=True)(tiny_embedder)
    err = capsys.readouterr().err
    assert f"STS, {len(TASKS)} tasks: encoding {result['unique_sentences']} unique sentences" in err
    lines = [line for line in err.splitlines() if ": Spearman " in line]
    assert len(lines) == len(TASKS)
    for done, (line, (name, task)) in enumerate(zip(lines, result["tasks"].items(), strict=True), 1):
        match = re.fullmatch(rf"{name}: Spearman (-?[\d.]+) \((\d+) pairs\) \[{done}/{len(TASKS)}, [\d.]+ s in all\]",
                             line)
        assert match, line
        assert float(match[1]) == pytest.approx(task["spearman"], abs=0.005)
        assert int(match[2]) == task["n"]


def test_quiet_without_progress(tiny_embedder, tiny_data_dir, capsys):
    STSEvaluator.from_tasks(TASKS, tiny_data_dir, show_progress=False)(tiny_embedder)
    captured = capsys.readouterr()
    assert "Spearman" not in captured.err + captured.out and "encoding" not in captured.err
