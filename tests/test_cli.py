"""The commands end to end on tiny models: eval JSON contract, train, run report, one-line errors."""
from __future__ import annotations

import json

from embedtune.cli import main


def test_eval_writes_the_json_contract_and_a_markdown_table(tiny_model_dir, tiny_data_dir, tmp_path, capsys):
    out = tmp_path / "r.json"
    code = main(["eval", "--model", str(tiny_model_dir), "--data-dir", str(tiny_data_dir), "--tasks", "sts12",
                 "biosses", "--batch-size", "8", "--precision", "fp32", "--output", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["model"] == str(tiny_model_dir)
    assert set(result["tasks"]) == {"sts12", "biosses"}
    assert all(set(t) == {"spearman", "n"} and t["n"] == 12 for t in result["tasks"].values())
    assert {"average", "std", "seconds"} <= result.keys()
    table = out.with_suffix(".md").read_text()
    assert "| STS12 |" in table and "| BIOSSES |" in table and "± " in table
    assert "| STS12 |" in capsys.readouterr().out


def test_python_api_matches_the_cli(tiny_model_dir, tiny_data_dir):
    import embedtune

    result = embedtune.evaluate(str(tiny_model_dir), data_dir=str(tiny_data_dir), tasks=["sts13"],
                                show_progress=False, pooling="eos")
    assert list(result["tasks"]) == ["sts13"] and result["pooling"] == "eos"


def test_run_writes_base_tuned_report(tiny_model_dir, tiny_data_dir, tmp_path, capsys):
    out = tmp_path / "exp"
    code = main(["run", "--model", str(tiny_model_dir), "--data-dir", str(tiny_data_dir), "--output-dir", str(out),
                 "--max-steps", "3", "--batch-size", "8", "--eval-steps", "3", "--save-steps", "3", "--precision",
                 "fp32", "--lr", "1e-3", "--tasks", "sts12", "sts13"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report) == {"base", "tuned", "gain"}
    assert report["gain"] == report["tuned"]["average"] - report["base"]["average"]
    assert set(report["tuned"]["tasks"]) == {"sts12", "sts13"}
    markdown = (out / "report.md").read_text()
    assert "| STS12 |" in markdown and "**Average**" in markdown and "loss.png" in markdown
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
