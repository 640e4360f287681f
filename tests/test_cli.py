"""The commands end to end on tiny models: eval JSON contract, train, run report, one-line errors."""
from __future__ import annotations

import json
import logging

import pytest

from embedtune.cli import main
from embedtune.evaluation.sts import STSEvaluator

EVAL_KEYS = {"model", "pooling", "prompt", "tasks", "average", "std", "seconds", "sentences", "unique_sentences",
             "sentences_per_s", "computed_with"}


def test_eval_writes_the_json_contract_and_a_markdown_table(tiny_model_dir, tiny_data_dir, tmp_path, capsys):
    out = tmp_path / "r.json"
    code = main(["eval", "--model", str(tiny_model_dir), "--data-dir", str(tiny_data_dir), "--tasks", "sts12",
                 "biosses", "--batch-size", "8", "--precision", "fp32", "--output", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["model"] == str(tiny_model_dir)
    assert set(result["tasks"]) == {"sts12", "biosses"}
    assert all(set(t) == {"spearman", "n", "kind", "main_score"} and t["n"] == 12 for t in result["tasks"].values())
    assert all(t["kind"] == "sts" and t["main_score"] == t["spearman"] for t in result["tasks"].values())
    assert set(result) == EVAL_KEYS
    assert (result["sentences"], result["pooling"], result["prompt"]) == (48, "eos", None)
    table = out.with_suffix(".md").read_text()
    assert "| STS12 |" in table and "| BIOSSES |" in table and "± " in table
    assert "| STS12 |" in capsys.readouterr().out


def test_python_api_matches_the_cli(tiny_model_dir, tiny_data_dir, tmp_path):
    import embedtune
    from embedtune.config import Config

    out = tmp_path / "r.json"
    assert main(["eval", "--model", str(tiny_model_dir), "--data-dir", str(tiny_data_dir), "--tasks", "sts13",
                 "--pooling", "mean", "--precision", "fp32", "--output", str(out)]) == 0
    result = embedtune.evaluate(str(tiny_model_dir), config=Config.from_dict({"eval": {"precision": "fp32"}}),
                                data_dir=str(tiny_data_dir), tasks=["sts13"], show_progress=False, pooling="mean")
    cli = json.loads(out.read_text())
    assert list(result["tasks"]) == ["sts13"] and result["pooling"] == cli["pooling"] == "mean"
    assert result["tasks"]["sts13"]["spearman"] == pytest.approx(cli["tasks"]["sts13"]["spearman"], abs=1e-9)


def test_run_writes_base_tuned_report(tiny_model_dir, tiny_data_dir, tmp_path, capsys, monkeypatch):
    # The run's two evaluations report averages 40 and 47.25 (the trainer's dev evaluations are left as they are).
    averages = iter([40.0, 47.25])
    real_call = STSEvaluator.__call__

    def scored(self, embedder):
        result = real_call(self, embedder)
        return result if self.name_suffix else {**result, "average": next(averages)}

    monkeypatch.setattr(STSEvaluator, "__call__", scored)
    out = tmp_path / "exp"
    code = main(["run", "--model", str(tiny_model_dir), "--data-dir", str(tiny_data_dir), "--output-dir", str(out),
                 "--max-steps", "3", "--batch-size", "8", "--eval-steps", "3", "--save-steps", "3", "--precision",
                 "fp32", "--lr", "1e-3", "--tasks", "sts12", "sts13"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report) == {"base", "tuned", "gain", "plan", "seconds", "selected"}
    assert (report["base"]["average"], report["tuned"]["average"], report["gain"]) == (40.0, 47.25, 7.25)
    assert set(report["tuned"]["tasks"]) == {"sts12", "sts13"}
    markdown = (out / "report.md").read_text()
    assert "| STS12 |" in markdown and "| **Average** | **40.00 ± " in markdown and "**+7.25** |" in markdown
    assert "loss.png" in markdown
    assert (out / "final" / "adapter_config.json").is_file() and (out / "loss.png").is_file()
    assert str(out / "report.md") in capsys.readouterr().out


def test_train_rejects_bad_values_before_work(tmp_path, capsys):
    assert main(["train", "--output-dir", str(tmp_path / "o"), "--lr", "0"]) == 2
    assert "train.lr must be > 0" in capsys.readouterr().err
    assert main(["train", "--output-dir", str(tmp_path / "o"), "--batch-size", "1"]) == 2
    assert "batch_size must be >= 2" in capsys.readouterr().err
    assert main(["train", "--output-dir", str(tmp_path / "o"), "--temperature", "0"]) == 2
    assert "temperature must be > 0" in capsys.readouterr().err


def test_no_training_data_is_reported_up_front(tmp_path, capsys):
    (tmp_path / "nli" / "triplets").mkdir(parents=True)
    assert main(["train", "--output-dir", str(tmp_path / "o"), "--data-dir", str(tmp_path),
                 "--no-decontaminate"]) == 2
    assert "no training data" in capsys.readouterr().err


@pytest.fixture
def embedtune_records():
    """Records that pass the `embedtune` logger's level (main() resets the root logger's handlers, not ours)."""
    logger = logging.getLogger("embedtune")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    level = logger.level
    yield records
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.mark.parametrize("flags,level", [([], logging.INFO), (["-v"], logging.DEBUG), (["-q"], logging.WARNING),
                                         (["--quiet"], logging.WARNING)])
def test_loudness_flags_set_our_log_level(flags, level, tmp_path, embedtune_records):
    assert main([*flags, "train", "--output-dir", str(tmp_path / "o"), "--lr", "0"]) == 2
    assert logging.getLogger("embedtune").getEffectiveLevel() == level


def test_stage_messages_are_info_shown_by_default_and_hidden_by_quiet(tiny_model_dir, tiny_data_dir, tmp_path,
                                                                      embedtune_records):
    def train_args(out: str) -> list[str]:
        return ["train", "--model", str(tiny_model_dir), "--data-dir", str(tiny_data_dir), "--output-dir",
                str(tmp_path / out), "--max-steps", "1", "--batch-size", "8", "--eval-steps", "0", "--precision",
                "fp32"]

    assert main(train_args("default")) == 0
    stage = [r for r in embedtune_records if r.getMessage().startswith("training data: 64 rows read;")]
    assert [(r.name, r.levelno) for r in stage] == [("embedtune.training.trainer", logging.INFO)]
    embedtune_records.clear()
    assert main(["-q", *train_args("quiet")]) == 0
    assert [r.getMessage() for r in embedtune_records if r.levelno < logging.WARNING] == []
