"""Fuzzing the YAML config loader: Config.from_yaml, then validate.

Whatever the file holds (random bytes, broken YAML, YAML's odd scalars and tags, wrong types, huge numbers, deep
nesting), the result is a Config whose every field has its declared type, or a one-line ConfigError; nothing else
escapes. Values of the right type are taken exactly as written, and a flag's text exactly as the same string in
a file.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import re
from pathlib import Path
from typing import get_type_hints

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from embedtune.config import Config
from embedtune.errors import ConfigError

SOAK = settings(max_examples=3000)
MAX_MESSAGE = 600  # an unknown key's message lists the section's valid keys (train has over 30)
SECTIONS = {f.name: f.type for f in dataclasses.fields(Config)}
HINTS = {name: get_type_hints(type(getattr(Config(), name))) for name in SECTIONS}


def load(folder: Path, content: str | bytes):
    """(Config, None) or (None, the ConfigError) for a config file holding `content`."""
    path = folder / "c.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass"))
    try:
        return Config.from_yaml(path).validate(), None
    except ConfigError as err:
        return None, err


def check_types(config: Config) -> None:
    """Every field holds a value of its declared type (ints where ints are declared, never a bool or a list)."""
    for section, hints in HINTS.items():
        values = getattr(config, section)
        for name, hint in hints.items():
            value, text = getattr(values, name), str(hint)
            if value is None:
                assert "None" in text, (section, name)
            elif text.startswith("list"):
                assert isinstance(value, list) and all(isinstance(v, str) for v in value), (section, name, value)
            elif "bool" in text:
                assert isinstance(value, bool), (section, name, value)
            elif "int" in text:
                assert isinstance(value, int) and not isinstance(value, bool), (section, name, value)
            elif "float" in text:
                assert isinstance(value, float) and math.isfinite(value), (section, name, value)
            elif "str" in text:
                assert isinstance(value, str), (section, name, value)


def check(fuzz_dir, one_line, content):
    config, err = load(fuzz_dir, content)
    if err is None:
        check_types(config)
    else:
        one_line(str(err), MAX_MESSAGE)


# ---- anything at all ----------------------------------------------------------------------------------------------

@given(content=st.one_of(st.binary(max_size=200), st.text(max_size=200)))
def test_any_content_gives_a_config_or_one_config_error(fuzz_dir, one_line, content):
    check(fuzz_dir, one_line, content)


# ---- YAML that parses, or nearly: real and junk keys, YAML's odd scalars, tags, anchors, deep nesting ----------

KEYS = sorted({key for hints in HINTS.values() for key in hints}) + [
    "learning_rate", "batch-size", "Lr", "1", "on", "yes", "~", "null", "[a]", "? [a, b]", "-", "''", '"\\u2028"',
    "!!binary aGk=", "&k lr", "*k"]
VALUES = [
    "1", "-1", "0", "2", "64", "0.5", "1e-4", "5e-5", "1e999", "-1e999", ".nan", ".inf", "-.inf", "1" * 5000,
    "0." + "1" * 5000, "0x1F", "0o17", "1_000", "2001-13-45", "2001-12-14", "2001-12-14t21:59:43.10-05:00", "12:30:00",
    "!!float abc", "!!int abc", "!!int 5", "!!float 1", "!!timestamp abc", "!!binary '%%%'", "!!binary aGk=",
    "!!python/object/apply:os.system [ls]", "!!str 5", "!!set {a, b}", "!!omap [a: 1]", "!!null ''", "!!bool maybe",
    "~", "null", "yes", "no", "on", "off", "y", "n", "True", "'quoted'", '"dq \\u2028 \\x00 \\t"', '"\\ud800"',
    '"\\U0001F600"', "[1, 2]", "[[1]]", "[sts12, sickr]", "sts12,sickr", "{a: 1}", "[" * 300 + "]" * 300,
    "&a [1, 2]", "*a", "*undefined", "|\n    block\n    text", ">\n    folded", "\t1", "a: b: c", "@reserved",
    "`tick", "? complex", "<<: {a: 1}", "'", '"', "\x00", "\ufeff", "\u2028x", "\u00e9\U0001f642\u202e", "10m", "1h30m",
    "cuda:0", "cuda:\u0663", "\u00b2", "--5", "-", "+5", " 5", "int8", "fp8", "eos", "best", "infonce",
]
SECTION_NAMES = list(SECTIONS) + ["optim", "~", "on", "1", "[a]", "- train", "? x", "<<"]


@st.composite
def yaml_documents(draw):
    sections = draw(st.lists(st.tuples(st.sampled_from(SECTION_NAMES),
                                       st.lists(st.tuples(st.sampled_from(KEYS), st.sampled_from(VALUES)),
                                                max_size=4)), max_size=4))
    indent = draw(st.sampled_from(["  ", "    ", "\t", " "]))
    out = "".join(f"{name}:\n" + "".join(f"{indent}{key}: {value}\n" for key, value in pairs)
                  for name, pairs in sections)
    out = draw(st.sampled_from(["", "", "", "%YAML 1.1\n---\n", "- a\n", "just text\n", "[1, 2]\n", "~\n",
                                "--- !!map\n", "&anchor\n"])) + out
    if draw(st.booleans()):
        out = out.replace("\n", "\r\n")
    return ("\ufeff" if draw(st.booleans()) else "") + out


@given(content=yaml_documents())
def test_yaml_documents_give_a_typed_config_or_one_config_error(fuzz_dir, one_line, content):
    check(fuzz_dir, one_line, content)


@pytest.mark.slow
@SOAK
@given(content=yaml_documents())
def test_yaml_documents_give_a_typed_config_or_one_config_error_soak(fuzz_dir, one_line, content):
    check(fuzz_dir, one_line, content)


@pytest.mark.slow
@SOAK
@given(content=st.one_of(st.binary(max_size=400), st.text(max_size=400)))
def test_any_content_gives_a_config_or_one_config_error_soak(fuzz_dir, one_line, content):
    check(fuzz_dir, one_line, content)


# ---- typed values: taken exactly; values of the wrong type refused ------------------------------------------------

def values_for(hint) -> st.SearchStrategy:
    """Values of the field's own type, as YAML writes them, plus the wrong types a user might put there."""
    text = str(hint)
    right = (st.lists(st.text(max_size=5).filter(str.strip), max_size=3) if text.startswith("list")
             else st.booleans() if "bool" in text
             else st.integers(-(10**30), 10**30) if "int" in text
             else st.floats(allow_nan=True, allow_infinity=True) | st.integers(-100, 100) if "float" in text
             else st.text(max_size=8))
    wrong = st.one_of(st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(),
                                                                          max_size=2),
                      st.text(max_size=8), st.floats(), st.booleans(), st.none(), st.integers())
    return st.one_of(right, right, wrong)


@st.composite
def typed_configs(draw):
    raw: dict[str, dict] = {}
    for section in draw(st.lists(st.sampled_from(sorted(HINTS)), unique=True, max_size=3)):
        hints = HINTS[section]
        keys = draw(st.lists(st.sampled_from(sorted(hints)), unique=True, max_size=4))
        raw[section] = {key: draw(values_for(hints[key])) for key in keys}
    return raw


def expected_value(value, hint):
    """What the loader must make of `value` for a field of type `hint`: ('ok', value) or ('error',)."""
    text = str(hint)
    if value is None:
        return ("ok", None) if "None" in text else ("error",)
    if text.startswith("list"):
        if isinstance(value, str):
            return "ok", [v for v in value.replace(",", " ").split() if v]
        if isinstance(value, list) and all(isinstance(v, (str, int, float)) and not isinstance(v, bool)
                                           for v in value):
            return "ok", [str(v) for v in value]
        return ("error",)
    if "bool" in text:
        if isinstance(value, bool):
            return "ok", value
        word = str(value).lower() if isinstance(value, (str, int)) else None
        return (("ok", True) if word in ("true", "1", "yes", "on") else ("ok", False)
                if word in ("false", "0", "no", "off") else ("error",))
    if "int" in text:
        if isinstance(value, int) and not isinstance(value, bool):
            return "ok", value
        if isinstance(value, str) and re.fullmatch(r"-?[0-9]{1,4000}", value):  # a quoted '64', a flag's or --grid's
            return "ok", int(value)
        return ("error",)  # an int field takes no float, and no other text
    if "float" in text:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return "ok", float(value)
        if isinstance(value, str):
            try:
                return "ok", float(value)
            except ValueError:
                return ("error",)
        return ("error",)
    if isinstance(value, (list, dict)):
        return ("error",)
    return "ok", str(value)


def check_typed(fuzz_dir, one_line, raw):
    path = fuzz_dir / "typed.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=False), encoding="utf-8")
    parsed = yaml.safe_load(path.read_text(encoding="utf-8")) or {}  # what YAML itself makes of the values
    expected = {(s, k): expected_value(v, HINTS[s][k]) for s, keys in parsed.items() for k, v in keys.items()}
    try:
        config = Config.from_yaml(path)
    except ConfigError as err:
        one_line(str(err), MAX_MESSAGE)
        assert any(e[0] == "error" for e in expected.values()), f"refused: {err}"
        return
    assert all(e[0] == "ok" for e in expected.values()), [k for k, e in expected.items() if e[0] == "error"]
    for (section, key), (_, value) in expected.items():
        got = getattr(getattr(config, section), key)
        assert got == value or (got != got and value != value), (section, key, got, value)
    try:
        check_types(config.validate())
    except ConfigError as err:
        one_line(str(err), MAX_MESSAGE)


@given(raw=typed_configs())
def test_typed_values_are_taken_exactly_or_refused(fuzz_dir, one_line, raw):
    check_typed(fuzz_dir, one_line, raw)


@pytest.mark.slow
@SOAK
@given(raw=typed_configs())
def test_typed_values_are_taken_exactly_or_refused_soak(fuzz_dir, one_line, raw):
    check_typed(fuzz_dir, one_line, raw)


# ---- regressions: one test per bug the fuzzing (or the fixing) turned up -------------------------------------------

def refused(fuzz_dir, one_line, content, match: str) -> str:
    config, err = load(fuzz_dir, content)
    assert err is not None, f"accepted: {content!r}"
    message = one_line(str(err), MAX_MESSAGE)
    assert re.search(match, message), message
    return message


def test_regression_config_file_not_utf8(fuzz_dir, one_line):
    # was: UnicodeDecodeError from Path.read_text, with a traceback
    refused(fuzz_dir, one_line, b"train:\n  lr: 1e-4\n  output_dir: caf\xe9\n",
            r"c\.yaml:3: not valid UTF-8 \(byte 0xe9\)")
    assert load(fuzz_dir, "\ufefftrain:\n  lr: 0.001\n")[0].train.lr == 0.001  # a BOM is fine


def test_regression_yaml_errors_are_one_line_with_line_and_column(fuzz_dir, one_line):
    # was: PyYAML's message over four lines, with the source line and a ^ marker
    refused(fuzz_dir, one_line, "train:\n  lr: [1, 2\n", r"c\.yaml:3:1: invalid YAML \(while parsing a flow sequence")
    refused(fuzz_dir, one_line, "train:\n\tlr: 1\n", r"c\.yaml:2:1: invalid YAML \(.*found character '\\t'")
    refused(fuzz_dir, one_line, "train:\n  lr: \x00\n",
            r"c\.yaml:2: invalid YAML \(special characters are not allowed: character U\+0000\)")
    refused(fuzz_dir, one_line, "x: !!python/object/apply:os.system [ls]\n",
            "could not determine a constructor for the tag")


@pytest.mark.parametrize("value", ["2001-13-45", "!!int abc", "!!float abc", "!!timestamp abc", "!!bool maybe",
                                   "1" * 5000])
def test_regression_yaml_constructor_failures(fuzz_dir, one_line, value):
    # was: ValueError, AttributeError ('NoneType' has no attribute 'groupdict') or KeyError ('maybe') from PyYAML
    refused(fuzz_dir, one_line, f"train:\n  output_dir: {value}\n", r"invalid YAML \(a value PyYAML cannot construct")


def test_regression_yaml_nested_too_deeply(fuzz_dir, one_line):
    # was: RecursionError from PyYAML's composer
    refused(fuzz_dir, one_line, "train:\n  output_dir: " + "[" * 20_000 + "]" * 20_000 + "\n",
            r"invalid YAML \(nested too deeply\)")


def test_regression_yaml_keys_that_are_not_strings(fuzz_dir, one_line):
    # was: AttributeError: 'int' object has no attribute 'replace' (YAML reads `1:`, `on:`, `yes:` as int/bool)
    refused(fuzz_dir, one_line, "train:\n  1: 2\n", r"c\.yaml: train: key 1 is not a name")
    refused(fuzz_dir, one_line, "train:\n  on: 2\n", r"key True is not a name \(YAML reads on/off/yes/no")
    refused(fuzz_dir, one_line, "on:\n  lr: 2\n", r"unknown section True \(YAML reads on/off")


def test_regression_lists_and_mappings_are_not_strings(fuzz_dir, one_line):
    # was: model.name [a, b] became the name "['a', 'b']"; train_files [[a]] the path "['a']"
    refused(fuzz_dir, one_line, "model:\n  name: [a, b]\n", r"model\.name: expected str, got \['a', 'b'\]")
    refused(fuzz_dir, one_line, "data:\n  anchor_column: {a: 1}\n", r"data\.anchor_column: expected str")
    refused(fuzz_dir, one_line, "data:\n  train_files: [[a.tsv]]\n", r"expected a list of names, got \['a.tsv'\] in it")
    refused(fuzz_dir, one_line, "eval:\n  tasks: [sts12, ~]\n", "expected a list of names, got None in it")
    assert load(fuzz_dir, "eval:\n  tasks: sts12, sickr\n")[0].eval.tasks == ["sts12", "sickr"]


@pytest.mark.parametrize("value", ["'\u00b2'", "'--5'", "'١٢'"])
def test_regression_int_fields_from_odd_digit_strings(fuzz_dir, one_line, value):
    # was: ValueError from int() on '²' (str.isdigit says yes) or '--5' (lstrip('-') took both signs)
    refused(fuzz_dir, one_line, f"train:\n  batch_size: {value}\n", r"train\.batch_size: expected int, got '")


def test_regression_float_field_from_an_integer_past_float_range(fuzz_dir, one_line):
    # was: OverflowError from float() on a 400-digit integer
    refused(fuzz_dir, one_line, "train:\n  lr: " + "9" * 400 + "\n", r"train\.lr: expected float, got 9999")


@pytest.mark.parametrize("key", ["temperature", "weight_decay", "max_grad_norm"])
def test_regression_infinite_floats_are_refused(fuzz_dir, one_line, key):
    # was: .inf passed "> 0" and ">= 0" checks
    refused(fuzz_dir, one_line, f"train:\n  {key}: .inf\n", rf"train\.{key} must be .*finite.*, got inf")


@pytest.mark.parametrize("content", ["0\n", "false\n", "[]\n", "''\n", "- train\n"])
def test_regression_a_top_level_scalar_or_list_is_not_an_empty_config(fuzz_dir, one_line, content):
    # was: `0`, `false`, `[]` and `''` read as an empty config (`or {}`), so every option silently took its default
    refused(fuzz_dir, one_line, content, "top level must be a mapping of sections, got ")
    assert load(fuzz_dir, "# only a comment\n")[0] == Config()


@pytest.mark.parametrize("value", [0, -3])
def test_regression_max_train_samples_must_be_positive(fuzz_dir, one_line, value):
    # was: accepted; -3 then cut the last 3 clean rows without a word (triplets[:-3])
    refused(fuzz_dir, one_line, f"data:\n  max_train_samples: {value}\n", "data.max_train_samples must be >= 1")


def test_regression_validate_messages_stay_one_line(fuzz_dir, one_line):
    # was: a value with a line break in it broke "must be one of ..., got '...'" over two lines
    message = refused(fuzz_dir, one_line, 'train:\n  loss: "info\\nnce\\u2028"\n', "train.loss must be one of")
    assert r"info\nnce\u2028" in message
    refused(fuzz_dir, one_line, 'train:\n  time_budget: "1h\\n2m"\n', r"got '1h\\n2m'")
    refused(fuzz_dir, one_line, 'model:\n  device: "cuda:\u0663"\n', "model.device must be one of")


# ---- a flag's text and a YAML string: the same declaration takes them ---------------------------------------------

def _flag_actions() -> dict[str, argparse.Action]:
    """Each declared option's flag action, from the commands that take it (train, run, eval)."""
    from embedtune.cli import build_parser

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    return {a.dest: a for name in ("eval", "run") for a in commands[name]._actions if "." in a.dest}


FLAG_ACTIONS = _flag_actions()
SCALARS = sorted(key for key, action in FLAG_ACTIONS.items() if action.type is not None)


@given(key=st.sampled_from(SCALARS), text=st.one_of(st.text(max_size=12), st.sampled_from(VALUES)))
def test_a_flag_takes_its_text_as_the_yaml_loader_takes_the_same_string(one_line, key, text):
    section, name = key.split(".")
    try:
        from_flag, flag_error = FLAG_ACTIONS[key].type(text), None
    except argparse.ArgumentTypeError as err:
        from_flag, flag_error = None, str(err)
    try:
        from_yaml, yaml_error = getattr(getattr(Config.from_dict({section: {name: text}}), section), name), None
    except ConfigError as err:
        from_yaml, yaml_error = None, str(err)
    if yaml_error is None:
        assert flag_error is None and (from_flag == from_yaml or from_flag != from_flag), (from_flag, from_yaml)
    else:
        assert flag_error is not None and yaml_error == f"config: {one_line(flag_error, MAX_MESSAGE)}"
