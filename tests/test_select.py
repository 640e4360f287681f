"""`run --select best|final`: which adapter the tuned evaluation uses, and what report.json/report.md say."""
from __future__ import annotations

import json

import pytest

from embedtune.cli import main
from embedtune.config import Config
from embedtune.errors import ConfigError
from embedtune.evaluation.sts import STSEvaluator
from embedtune.models.embedder import Embedder

REPORT_KEYS = {"base", "tuned", "gain", "plan", "seconds", "selected"}


@pytest.fixture
def scripted_run(tiny_model_dir, tiny_data_dir, tmp_path, monkeypatch):
    """Runs `run` for 4 steps; the dev evaluations (steps 2 and 4) score 30 then 20, so the best is step 2.

    Returns (report, report.md text, output dir, adapters the run's Embedders were built with)."""
    real_call = STSEvaluator.__call__
    real_from_config = Embedder.from_config.__func__
    dev_scores = iter([30.0, 20.0])
    adapters: list[str | None] = []

    def scored(self, embedder):
        result = real_call(self, embedder)
        if not self.name_suffix:
            return result
        score = next(dev_scores)
        return {**result, "average": score, "tasks": {k: {**v, "spearman": score} for k, v in result["tasks"].items()}}

    def recording(cls, config, *, adapter=None, **kwargs):
        adapters.append(adapter)
        return real_from_config(cls, config, adapter=adapter, **kwargs)

    monkeypatch.setattr(STSEvaluator, "__call__", scored)
    monkeypatch.setattr(Embedder, "from_config", classmethod(recording))
    out = tmp_path / "exp"

    def run(*flags: str):
        code = main(["run", "--model", str(tiny_model_dir), "--data-dir", str(tiny_data_dir), "--output-dir",
                     str(out), "--max-steps", "4", "--batch-size", "8", "--save-steps", "2", "--precision", "fp32",
                     "--lr", "1e-3", "--tasks", "sts12", "sts13", *flags])
        assert code == 0
        return json.loads((out / "report.json").read_text()), (out / "report.md").read_text(), out, adapters

    return run


def tuned_scores_of(adapter: str, tiny_model_dir, tiny_data_dir) -> dict:
    """The two tasks' Spearman for the base model + `adapter`, evaluated independently of the run."""
    evaluator = STSEvaluator.from_tasks(["sts12", "sts13"], tiny_data_dir, show_progress=False)
    embedder = Embedder(str(tiny_model_dir), adapter=adapter, precision="fp32", device="cpu")
    return {k: v["spearman"] for k, v in evaluator(embedder)["tasks"].items()}


def test_select_best_evaluates_and_reports_the_best_adapter(scripted_run, tiny_model_dir, tiny_data_dir):
    report, markdown, out, adapters = scripted_run("--eval-steps", "2")
    assert set(report) == REPORT_KEYS
    assert report["selected"] == {"adapter": str(out / "best"), "by": "best", "step": 2, "dev_score": 30.0}
    assert json.loads((out / "best.json").read_text()) == {"step": 2, "score": 30.0}
    assert adapters[-1] == str(out / "best")  # the tuned evaluation's model
    tuned = {k: v["spearman"] for k, v in report["tuned"]["tasks"].items()}
    assert tuned == pytest.approx(tuned_scores_of(str(out / "best"), tiny_model_dir, tiny_data_dir), abs=1e-9)
    assert tuned != pytest.approx(tuned_scores_of(str(out / "final"), tiny_model_dir, tiny_data_dir), abs=1e-9)
    assert f"the best adapter (step 2, STSBenchmark dev Spearman 30.00), `{out / 'best'}`" in markdown
    assert "Note:" not in markdown


def test_select_final_evaluates_and_reports_the_final_adapter(scripted_run, tiny_model_dir, tiny_data_dir):
    report, markdown, out, adapters = scripted_run("--eval-steps", "2", "--select", "final")
    assert set(report) == REPORT_KEYS
    assert report["selected"] == {"adapter": str(out / "final"), "by": "final", "step": 4, "dev_score": 20.0}
    assert adapters[-1] == str(out / "final")
    tuned = {k: v["spearman"] for k, v in report["tuned"]["tasks"].items()}
    assert tuned == pytest.approx(tuned_scores_of(str(out / "final"), tiny_model_dir, tiny_data_dir), abs=1e-9)
    assert f"the final adapter (step 4, STSBenchmark dev Spearman 20.00), `{out / 'final'}`" in markdown
    assert json.loads((out / "config.json").read_text())["train"]["select"] == "final"


def test_select_best_without_dev_evaluation_falls_back_to_final_with_a_note(scripted_run, capsys):
    report, markdown, out, adapters = scripted_run("--eval-steps", "0")
    assert report["selected"] == {"adapter": str(out / "final"), "by": "final", "step": 4, "dev_score": None}
    assert adapters[-1] == str(out / "final") and not (out / "best").exists()
    assert "the final adapter (step 4), " in markdown
    assert "Note: --select best: no dev evaluation ran" in markdown
    assert "--select best: no dev evaluation ran" in capsys.readouterr().err  # the warning, as the CLI shows it


def test_select_is_validated(tmp_path, capsys):
    assert Config().train.select == "best"
    assert Config.from_dict({"train": {"select": "final"}}).validate().train.select == "final"
    with pytest.raises(ConfigError, match="train.select must be one of best, final, got 'worst'"):
        Config.from_dict({"train": {"select": "worst"}}).validate()
    with pytest.raises(SystemExit):
        main(["run", "--output-dir", str(tmp_path / "o"), "--select", "worst"])
    assert "invalid choice: 'worst'" in capsys.readouterr().err
