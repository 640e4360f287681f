"""How a config field declares its option, once: flag, help, choices, check, and where the flag shows.

`config.py` declares every field with `option(...)`; the CLI builds each subcommand's flags from these
declarations, the YAML loader and the flags take values through the same coercion (`Declared.take`), and
`Config.validate` runs the same checks (`Declared.problem`), so a value is judged alike wherever it comes from.
"""
from __future__ import annotations

import dataclasses
import math
import re
import reprlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, get_type_hints

from embedtune.errors import ConfigError

# The kinds of subcommand a flag reaches; the CLI maps each command to the kinds it takes.
MODEL = "model"  # every command that loads a model: eval, train, run, sweep, export, encode, serve
EVAL = "eval"  # the eval command
TRAIN = "train"  # train, run and sweep
RUN = "run"  # run and sweep (the commands that evaluate before and after training)

# The --help groups, in the order they are shown.
GROUPS = ("model", "data", "LoRA", "training", "evaluation", "distributed", "output")


@dataclass(frozen=True)
class Check:
    """A value's own check: `ok(value)`, else the message after 'section.field ' ({value} and {shown} mark the
    value: as str() gives it, and as a short repr). None always passes (it means 'unset')."""

    ok: Callable[[Any], bool]
    message: str


def above(bound: float, note: str = "", finite: bool = False) -> Check:
    return Check(lambda v: v > bound and (not finite or math.isfinite(v)),
                 f"must be > {bound}{_note(note)}, got {{value}}")


def at_least(bound: float, note: str = "", finite: bool = False) -> Check:
    return Check(lambda v: v >= bound and (not finite or math.isfinite(v)),
                 f"must be >= {bound}{_note(note)}, got {{value}}")


def within(low: float, high: float) -> Check:
    """low <= value < high."""
    return Check(lambda v: low <= v < high, f"must be in [{low}, {high}), got {{value}}")


def _note(note: str) -> str:
    return f" ({note})" if note else ""


@dataclass(frozen=True)
class Option:
    help: str
    on: tuple[str, ...]  # the kinds of subcommand whose parser has this flag (MODEL, EVAL, TRAIN, RUN)
    group: str  # one of GROUPS
    flag: str | Mapping[str, str] | None = None  # '--name', or per kind; None: --field-name
    choices: tuple[str, ...] | None = None
    check: Check | None = None
    default_text: str | None = None  # --help's default where the value does not say it (None, an empty list)
    required: bool = False  # the flag must be given on the command line
    metavar: str | None = None  # --help's name for the value; None: N for an int, X for a float, else the flag's


def option(default: Any, help: str, *, on: tuple[str, ...], group: str, flag: str | Mapping[str, str] | None = None,
           choices: tuple[str, ...] | None = None, check: Check | None = None, default_text: str | None = None,
           required: bool = False, metavar: str | None = None) -> Any:
    """A dataclass field with its option declared in its metadata; a list default is copied per instance."""
    if group not in GROUPS:
        raise ValueError(f"option group {group!r} is not one of {GROUPS}")
    declared = Option(help, on, group, flag, choices, check, default_text, required, metavar)
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata={"option": declared})
    return dataclasses.field(default=default, metadata={"option": declared})


@dataclass(frozen=True)
class Declared:
    """One option with its place in the config: section, field name, type and default."""

    section: str
    name: str
    hint: Any
    default: Any
    option: Option

    @property
    def key(self) -> str:
        return f"{self.section}.{self.name}"

    @property
    def is_list(self) -> bool:
        return str(self.hint).startswith("list")

    @property
    def is_switch(self) -> bool:
        return self.hint is bool

    def flag(self, kind: str) -> str:
        flag = self.option.flag
        if isinstance(flag, Mapping):
            return flag[kind]
        return flag or "--" + self.name.replace("_", "-")

    def metavar(self, kind: str) -> str:
        if self.option.metavar is not None:
            return self.option.metavar
        text = str(self.hint)
        if "int" in text and not self.is_list:
            return "N"
        if "float" in text:
            return "X"
        return self.flag(kind).lstrip("-").replace("-", "_").upper()

    def default_shown(self) -> str:
        if self.option.default_text is not None:
            return self.option.default_text
        if isinstance(self.default, bool):
            return "on" if self.default else "off"
        if self.default in (None, []):
            raise ValueError(f"{self.key}: declare what its default means (default_text)")
        return str(self.default)

    def take(self, value: Any, where: str) -> Any:
        """The value as the field's type, or a one-line ConfigError (YAML values and flags alike)."""
        return coerce(value, self.hint, where)

    def problem(self, value: Any) -> str | None:
        """What is wrong with a value of the field's type, as one message, or None."""
        if value is None:
            return None
        option = self.option
        if option.choices is not None and value not in option.choices:
            return f"{self.key} must be one of {', '.join(option.choices)}, got '{value}'"
        if option.check is not None and not option.check.ok(value):
            return f"{self.key} " + option.check.message.format(value=value, shown=shown(value))
        if isinstance(value, float) and not math.isfinite(value):  # inf passes "> 0": no option means anything there
            return f"{self.key} must be a finite number, got {value}"
        return None


def declared(config_type: type) -> list[Declared]:
    """Every option of a config whose fields are sections (dataclasses of options), in declaration order."""
    found = []
    for section in dataclasses.fields(config_type):
        section_type = get_type_hints(config_type)[section.name]
        hints = get_type_hints(section_type)
        for f in dataclasses.fields(section_type):
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
            found.append(Declared(section.name, f.name, hints[f.name], default, f.metadata["option"]))
    return found


# ---- values: a YAML value or a flag's text as the field's type ------------------------------------------------------

_SHORT = reprlib.Repr()
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlong, _SHORT.maxlevel = 40, 40, 30, 2
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = 4


def shown(value: Any) -> str:
    """A value for a message: repr, cut short, one line whatever it holds."""
    try:
        return _SHORT.repr(value)
    except ValueError:  # an integer past Python's 4300-digit limit for str()
        return f"<an integer of {value.bit_length()} bits>" if isinstance(value, int) else f"<{type(value).__name__}>"


def one_line(message: str, limit: int = 300) -> str:
    """Line breaks and other unprintable characters escaped, and long messages cut: an error is one short line."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def coerce(value: Any, hint: Any, where: str) -> Any:
    """Check a value against the field's type; ints are accepted where floats are expected."""
    text = str(hint)
    if value is None:
        if "None" in text:
            return None
        raise ConfigError(f"{where}: must not be empty")
    if text.startswith("list"):
        if isinstance(value, str):
            value = [v for v in value.replace(",", " ").split() if v]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {shown(value)}")
        for item in value:  # names and paths: a nested list, a mapping or a null is a mistake, not a name
            if isinstance(item, bool) or not isinstance(item, (str, int, float)):
                raise ConfigError(f"{where}: expected a list of names, got {shown(item)} in it")
        for kind in (int, float):  # a list of numbers: flags give '64,128' or '64 128', YAML a list or a string
            if text == f"list[{kind.__name__}]":
                items = [part for v in value for part in (v.replace(",", " ").split() if isinstance(v, str) else [v])]
                return [_as(kind, v, where) for v in items]
        return [str(v) for v in value]
    for kind in (bool, int, float, str):
        if kind.__name__ in text:
            return _as(kind, value, where)
    return value


def _as(kind: type, value: Any, where: str) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "1", "yes", "on"):
            return True
        if str(value).lower() in ("false", "0", "no", "off"):
            return False
    elif kind is int and not isinstance(value, bool):
        if isinstance(value, int):
            return value
        if isinstance(value, str) and re.fullmatch(r"-?[0-9]{1,4000}", value):  # ASCII digits only: not '²' or '--5'
            return int(value)
    elif kind is float and not isinstance(value, bool):
        try:
            return float(value)
        except (TypeError, ValueError, OverflowError):  # OverflowError: an integer past float's range
            pass
    elif kind is str:
        if not isinstance(value, (list, dict, set, tuple, bytes)):
            return str(value)
    raise ConfigError(f"{where}: expected {kind.__name__}, got {shown(value)}")
