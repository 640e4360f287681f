"""One typed config for CLI, YAML and Python: unknown keys and invalid values are rejected up front."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from embedtune.cli import DATA_FLAGS, MODEL_FLAGS, TRAIN_FLAGS, build_parser, config_from_args
from embedtune.config import OPTIONS, Config
from embedtune.errors import ConfigError
from embedtune.options import EVAL, GROUPS, MODEL, RUN, TRAIN


@pytest.mark.parametrize("section,key,value,message", [
    ("train", "lr", 0, "train.lr must be > 0"),
    ("train", "lr", -1e-5, "train.lr must be > 0"),
    ("train", "batch_size", 1, "train.batch_size must be >= 2"),
    ("train", "temperature", 0.0, "train.temperature must be > 0"),
    ("train", "precision", "fp8", "train.precision must be one of"),
    ("lora", "dropout", 1.5, "lora.dropout must be in"),
    ("train", "hardness", -1.0, "train.hardness must be >= 0"),
    ("train", "hardness", float("nan"), "train.hardness must be >= 0"),
    ("train", "hardness_mode", "hard", "train.hardness_mode must be one of hard_negatives, in_batch, all"),
    ("train", "cosent", -0.5, "train.cosent must be >= 0"),
    ("train", "cosent", float("inf"), "train.cosent must be >= 0"),
    ("train", "schedule", "step", "train.schedule must be one of cosine, linear, constant, got 'step'"),
])
def test_invalid_values_are_rejected(section, key, value, message):
    with pytest.raises(ConfigError, match=message):
        Config.from_dict({section: {key: value}}).validate()


@pytest.mark.parametrize("temperature", [0.005, 1.5])
def test_learnable_temperature_outside_the_clamp_range_is_rejected(temperature):
    config = Config.from_dict({"train": {"temperature": temperature, "learnable_temperature": True}})
    with pytest.raises(ConfigError) as raised:
        config.validate()
    assert str(raised.value) == (f"train.temperature must be in [0.01, 1.0] when learnable (it is clamped to that "
                                 f"range during training), got {temperature}")


def test_hardness_on_hard_negatives_needs_hard_negatives():
    config = Config.from_dict({"train": {"hardness": 5.0, "hard_negatives": False}})
    with pytest.raises(ConfigError, match="pick --hardness-mode in_batch or all"):
        config.validate()
    config.train.hardness_mode = "in_batch"
    assert config.validate().train.hardness == 5.0


def test_loss_and_pair_flags_reach_the_config():
    args = build_parser().parse_args(["train", "--output-dir", "o", "--hardness", "5", "--hardness-mode", "all",
                                      "--all-directions", "--all-entailed"])
    config = config_from_args(args, MODEL_FLAGS | DATA_FLAGS | TRAIN_FLAGS)
    assert (config.train.hardness, config.train.hardness_mode, config.train.all_directions) == (5.0, "all", True)
    assert config.data.all_entailed is True


def test_all_directions_replaces_the_symmetric_loss():
    config = Config.from_dict({"train": {"all_directions": True, "symmetric": True}})
    with pytest.raises(ConfigError, match=r"train.all_directions already scores .* \(--no-symmetric\)"):
        config.validate()
    config.train.symmetric = False
    assert config.validate().train.all_directions


def test_fixed_temperature_outside_the_clamp_range_is_accepted_as_given():
    config = Config.from_dict({"train": {"temperature": 0.005}}).validate()
    assert config.train.temperature == 0.005 and config.train.learnable_temperature is False


def test_unknown_keys_and_sections_are_rejected():
    with pytest.raises(ConfigError, match="unknown key 'learning_rate'"):
        Config.from_dict({"train": {"learning_rate": 1e-4}})
    with pytest.raises(ConfigError, match="unknown section 'optim'"):
        Config.from_dict({"optim": {}})
    with pytest.raises(ConfigError, match="expected int, got 'many'"):
        Config.from_dict({"train": {"batch_size": "many"}})


def test_yaml_then_flags(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  name: some/model\ntrain:\n  lr: 2.0e-4\n  batch_size: 16\n  max_steps: 10\n")
    config = Config.from_yaml(path)
    assert (config.model.name, config.train.lr, config.train.batch_size) == ("some/model", 2e-4, 16)
    args = build_parser().parse_args(["train", "--config", str(path), "--output-dir", "o", "--lr", "5e-5",
                                      "--no-hard-negatives", "--lora-targets", "qv", "--no-packing"])
    config = config_from_args(args, MODEL_FLAGS | DATA_FLAGS | TRAIN_FLAGS)
    assert config.train.lr == 5e-5 and config.train.batch_size == 16  # flag wins, file fills the rest
    assert config.train.hard_negatives is False and config.lora.targets == "qv"
    assert config.train.packing is False and Config().train.packing is True
    assert config.train.output_dir == "o"


def test_bad_yaml_is_a_config_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        Config.from_yaml(path)


def test_paper_defaults():
    config = Config()
    assert (config.lora.r, config.lora.alpha, config.lora.dropout) == (8, 32, 0.1)
    assert (config.train.batch_size, config.train.lr, config.train.temperature, config.train.epochs) == \
        (60, 5e-5, 0.05, 1)


SHIPPED_CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads_and_validates(path):
    config = Config.from_yaml(path).validate()  # a misspelt key or a bad value raises ConfigError
    assert config.model.name == "gemma3-270m"
    written = yaml.safe_load(path.read_text())
    taken = {section: {key: getattr(getattr(config, section), key) for key in values}
             for section, values in written.items()}
    assert taken == written  # every value in the file is the one the config holds


def test_the_make_run_config_is_the_measured_recipe():
    """docs/RESULTS.md reports `make run` with exactly these settings (one epoch, 198 steps of batch 64, every
    entailed hypothesis of the raw NLI pairs, LoRA dropout 0, the cosine schedule)."""
    config = Config.from_yaml(Path(__file__).parents[1] / "configs" / "cpu-quick.yaml")
    t = config.train
    assert (t.batch_size, t.epochs, t.max_steps, t.lr, t.schedule, t.symmetric, t.temperature, t.hard_negatives,
            t.select) == (64, 1, None, 5e-4, "cosine", True, 0.05, True, "final")
    lora = config.lora
    assert (lora.r, lora.alpha, lora.dropout, lora.targets, t.precision) == (16, 32, 0.0, "all-linear", "auto")
    assert (config.data.all_entailed, config.data.train_files) == (True, [])


def test_the_ablation_config_pins_fp32_and_scores_the_final_adapter():
    config = Config.from_yaml(Path(__file__).parents[1] / "configs" / "ablation-cpu.yaml")
    assert (config.train.precision, config.eval.precision, config.train.select) == ("fp32", "fp32", "final")
    assert (config.train.max_steps, config.train.lr, config.lora.targets) == (100, 2e-4, "attention")


def test_cosent_needs_hard_negatives_and_reaches_the_config_from_its_flag():
    with pytest.raises(ConfigError, match=r"train.cosent ranks .* hard negatives are off \(--no-hard-negatives\)"):
        Config.from_dict({"train": {"cosent": 1.0, "hard_negatives": False}}).validate()
    args = build_parser().parse_args(["train", "--output-dir", "o", "--cosent", "0.5"])
    assert config_from_args(args, MODEL_FLAGS | DATA_FLAGS | TRAIN_FLAGS).validate().train.cosent == 0.5


@pytest.mark.parametrize("command", ["eval", "train", "export", "encode", "serve"])
def test_num_layers_reaches_the_config_from_every_command_that_loads_a_model(command):
    required = {"train": ["--output-dir", "o"], "export": ["--out", "o"], "encode": ["--input", "i", "--output", "o"]}
    args = build_parser().parse_args([command, "--num-layers", "14", *required.get(command, [])])
    assert config_from_args(args, MODEL_FLAGS).validate().model.num_layers == 14
    with pytest.raises(ConfigError, match="model.num_layers must be >= 1, got 0"):
        Config.from_dict({"model": {"num_layers": 0}}).validate()


def test_every_option_says_what_its_default_means_and_leaves_the_default_to_the_parser():
    for item in OPTIONS:
        assert item.option.help and "default" not in item.option.help, item.key  # --help appends the default
        shown = item.default_shown()  # raises where a None or empty default has no phrase saying what it means
        assert shown and shown not in ("None", "[]"), item.key
        assert set(item.option.on) <= {MODEL, EVAL, TRAIN, RUN} and item.option.group in GROUPS, item.key
    assert "log_steps" not in {item.name for item in OPTIONS}  # read by nothing: retired (a file may still set it)


def test_validate_runs_each_declared_check_on_the_configs_values():
    bad = {"train": {"chunk_tokens": 15}, "lora": {"r": 0}, "model": {"pooling": "max"}, "eval": {"precision": "x"}}
    messages = []
    for section, values in bad.items():
        with pytest.raises(ConfigError) as raised:
            Config.from_dict({section: values}).validate()
        messages.append(str(raised.value))
    assert messages == ["train.chunk_tokens must be >= 16, got 15", "lora.r must be >= 1, got 0",
                        "model.pooling must be one of eos, mean, cls, got 'max'",
                        "eval.precision must be one of auto, bf16, fp32, got 'x'"]
