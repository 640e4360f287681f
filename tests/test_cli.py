"""The commands end to end on tiny models: eval JSON contract, train, run report, one-line errors; --help."""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
import shlex

import pytest

from embedtune.cli import SUMMARIES, build_parser, main
from embedtune.config import OPTIONS, Config, DataConfig, EvalConfig, LoraConfig, ModelConfig, TrainConfig
from embedtune.errors import ConfigError
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


# ---- --help: what the tool does, every flag with its default, in groups ---------------------------------------------

def help_text(argv: list[str], monkeypatch, capsys) -> str:
    monkeypatch.setenv("COLUMNS", "250")  # wide enough that no help text wraps onto a second line
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--help"])
    assert exited.value.code == 0
    return capsys.readouterr().out


def help_entries(argv: list[str], monkeypatch, capsys) -> dict[str, str]:
    """Each flag's --help entry (its invocation and help joined into one line), keyed by its first option string."""
    entries: dict[str, str] = {}
    flag = None
    for line in help_text(argv, monkeypatch, capsys).splitlines():
        if re.match(r"  -", line):  # an entry starts two spaces in; its help may continue on the next line
            flag = line.split()[0].rstrip(",")
            entries[flag] = line.strip()
        elif flag and line.startswith("    "):
            entries[flag] += " " + line.strip()
        else:
            flag = None
    return entries


def section_keys(section: type) -> set[str]:
    name = {ModelConfig: "model", DataConfig: "data", LoraConfig: "lora", TrainConfig: "train", EvalConfig: "eval"}
    return {f"{name[section]}.{f.name}" for f in dataclasses.fields(section)}


MODEL_KEYS = section_keys(ModelConfig)
TRAIN_KEYS = (MODEL_KEYS | section_keys(DataConfig) | section_keys(LoraConfig) | section_keys(TrainConfig)
              | {"eval.tasks", "eval.batch_size"}) - {"train.time_budget", "train.select"}
RUN_KEYS = TRAIN_KEYS | {"train.time_budget", "train.select", "eval.cache", "eval.dims"}
# The config fields each command takes, as before the flags were built from the declarations.
TAKEN = {"eval": MODEL_KEYS | {"data.data_dir", "eval.tasks", "eval.batch_size", "eval.precision", "eval.output",
                               "eval.query_prompt", "eval.document_prompt", "eval.dims"},
         "train": TRAIN_KEYS, "run": RUN_KEYS, "sweep": RUN_KEYS, "export": MODEL_KEYS, "encode": MODEL_KEYS,
         "serve": MODEL_KEYS}


def expected_default(item) -> str | None:
    """What --help must say of a field's default; None where a phrase says what an unset value means."""
    if item.option.required:
        return "(required)"
    if isinstance(item.default, bool):
        return f"(default: {'on' if item.default else 'off'})"
    if item.default in (None, []):
        return None
    if item.option.default_text is not None:  # a number with its meaning, e.g. "0, off"
        assert item.option.default_text.startswith(f"{item.default:g}"), item.key
        return f"(default: {item.option.default_text})"
    return f"(default: {item.default})"


@pytest.mark.parametrize("command", sorted(TAKEN))
def test_every_field_a_command_takes_is_in_its_help_with_its_default(command, monkeypatch, capsys):
    parser = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    assert {a.dest for a in parser._actions if "." in a.dest} == TAKEN[command]
    entries = help_entries([command], monkeypatch, capsys)
    for action in parser._actions:
        if "." not in action.dest:
            continue
        item = next(o for o in OPTIONS if o.key == action.dest)
        entry = entries[action.option_strings[0]]
        expected = expected_default(item)
        if expected is None:
            assert re.search(r"\(default: [^)]+\)$", entry), entry
        else:
            assert entry.endswith(expected), (entry, expected)


def test_train_help_shows_the_paper_defaults(monkeypatch, capsys):
    entries = help_entries(["train"], monkeypatch, capsys)
    assert entries["--lr"].startswith("--lr X ") and entries["--lr"].endswith("(default: 5e-05)")
    assert entries["--lora-r"].endswith("(default: 8)") and entries["--lora-alpha"].endswith("(default: 32)")
    assert entries["--batch-size"].endswith("(default: 60)") and entries["--eval-batch-size"].endswith("(default: 64)")
    assert entries["--packing"].startswith("--packing, --no-packing ")
    assert entries["--packing"].endswith("(default: on)")
    assert entries["--schedule"].startswith("--schedule {cosine,linear,constant} ")
    assert entries["--output-dir"].endswith("(required)")
    assert entries["--max-length"].endswith("(default: the saved folder's, else 512)")


@pytest.mark.parametrize("command", ["eval", "train", "run", "sweep", "report", "export", "average-adapters", "encode",
                                     "serve"])
def test_every_flag_of_every_command_says_its_default(command, monkeypatch, capsys):
    entries = help_entries([command], monkeypatch, capsys)
    assert len(entries) >= 2  # -h and at least one flag: the parse found the entries
    missing = [e for flag, e in entries.items() if flag != "-h" and not re.search(r"default: |\(required\)$", e)]
    assert missing == []


def test_train_help_groups_its_flags(monkeypatch, capsys):
    text = help_text(["train"], monkeypatch, capsys)
    titles = [line[:-1] for line in text.splitlines() if re.fullmatch(r"[A-Za-z][\w ]*:", line)]
    assert titles == ["options", "model", "data", "LoRA", "training", "evaluation", "distributed", "output"]
    group_of = {}
    for line in text.splitlines():
        if re.fullmatch(r"[A-Za-z][\w ]*:", line):
            title = line[:-1]
        elif re.match(r"  --", line):
            group_of[line.split()[0].rstrip(",")] = title
    assert (group_of["--model"], group_of["--train-file"], group_of["--lora-r"], group_of["--lr"]) == \
        ("model", "data", "LoRA", "training")
    assert (group_of["--eval-steps"], group_of["--accelerate-config"], group_of["--gather-with-grad"],
            group_of["--output-dir"]) == ("evaluation", "distributed", "distributed", "output")
    assert text.startswith("usage: embedtune train --output-dir DIR [options]\n")


def test_top_level_help_says_what_embedtune_does_and_shows_examples(monkeypatch, capsys):
    text = help_text([], monkeypatch, capsys)
    assert "turns a small language model into a text-embedding model" in text
    assert "flags -> Config" not in text  # the developer's docstring is not the user's help
    examples = [shlex.split(line.strip()) for line in text.split("examples:")[1].splitlines()
                if line.strip().startswith("embedtune ")]
    assert [e[1] for e in examples] == ["eval", "run", "export", "serve"]
    for example in examples:  # each example is a command line this parser takes
        build_parser().parse_args(example[1:])
    for name, summary in SUMMARIES.items():
        assert re.search(rf"^    {re.escape(name)}\s+{re.escape(summary)}$", text, re.MULTILINE), name


# ---- one declaration checks a value, whether a flag or a YAML file gives it --------------------------------------

@pytest.mark.parametrize("flags,yaml_text", [
    (["train", "--lr", "0"], "train:\n  lr: 0\n"),
    (["train", "--eval-batch-size", "0"], "eval:\n  batch_size: 0\n"),
    (["eval", "--batch-size", "0"], "eval:\n  batch_size: 0\n"),
    (["eval", "--max-length", "1"], "model:\n  max_length: 1\n"),
    (["train", "--device", "tpu"], "model:\n  device: tpu\n"),
    (["train", "--spike-factor", "1"], "train:\n  spike_factor: 1\n"),
    (["run", "--time-budget", "20x"], "train:\n  time_budget: 20x\n"),
    (["train", "--max-train-samples", "0"], "data:\n  max_train_samples: 0\n"),
])
def test_a_flag_and_a_yaml_value_get_the_same_message(flags, yaml_text, tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as from_file:
        Config.from_yaml(path).validate()
    output_dir = ["--output-dir", str(tmp_path / "o")] if flags[0] != "eval" else []
    assert main([*flags, *output_dir]) == 2
    assert capsys.readouterr().err.strip() == f"embedtune: error: {from_file.value}"


def test_a_flag_and_a_yaml_value_of_the_wrong_type_get_the_same_message(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  batch_size: many\n")
    with pytest.raises(ConfigError) as from_file:
        Config.from_yaml(path)
    with pytest.raises(SystemExit):
        main(["train", "--output-dir", str(tmp_path / "o"), "--batch-size", "many"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert str(from_file.value) == f"{path}: train.batch_size: expected int, got 'many'"
    assert err == "embedtune train: error: argument --batch-size: train.batch_size: expected int, got 'many'"


def test_a_yaml_file_that_sets_the_retired_log_steps_loads_with_a_warning(tmp_path, caplog):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  log_steps: 10\n  lr: 2.0e-4\n")
    with caplog.at_level(logging.WARNING, logger="embedtune"):
        config = Config.from_yaml(path).validate()
    assert config.train.lr == 2e-4 and "log_steps" not in config.to_dict()["train"]
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}: train.log_steps is ignored (nothing read it; it is no longer an option): remove it"]
