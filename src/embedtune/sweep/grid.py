"""The grid: `--grid SECTION.FIELD=V1,V2,...` and `--zip` specs read into axes, each value checked by Config.

A value is read as the same flag would be (Config coerces and checks it); a quoted value ('...' or "...") is a
YAML string and a bracketed one ([a, b]) a YAML list, so a comma inside quotes or brackets does not split; an empty
value is the empty string and `null` (or `~`) is None. Fields given with `--zip` move together: the i-th values of
every `--zip` make one point, and those points are one more axis of the grid.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import yaml

from embedtune.config import Config
from embedtune.errors import ConfigError

# Fields a sweep sets itself, for every run.
NOT_SWEPT = {"train.output_dir": "each run's folder is OUTPUT/runs/NAME",
             "train.resume": "a sweep always continues its runs where they stopped"}
NULLS = ("null", "Null", "NULL", "~")
_CLOSING = {"[": "]", "(": ")", "{": "}"}


@dataclass(frozen=True)
class GridValue:
    text: str  # as given, quotes removed: for the run's name and the report
    value: Any  # what Config.update receives, as from a flag or a YAML file


@dataclass(frozen=True)
class GridAxis:
    section: str
    name: str
    values: tuple[GridValue, ...]

    @property
    def key(self) -> str:
        return f"{self.section}.{self.name}"


def parse_grid(specs: Sequence[str]) -> list[GridAxis]:
    """`SECTION.FIELD=V1,V2,...` specs -> axes, each value checked by Config (a ConfigError names the spec)."""
    if not specs:
        raise ConfigError("sweep: give at least one --grid SECTION.FIELD=V1,V2,... (e.g. --grid train.lr=5e-4,5e-5)")
    axes: list[GridAxis] = []
    for spec in specs:
        axes.append(_parse_axis(spec, "--grid", axes, distinct=True))
    return axes


def parse_zip(specs: Sequence[str], axes: Sequence[GridAxis]) -> list[GridAxis]:
    """`--zip` specs: fields whose values move together (the i-th values of each make one point), as one more
    axis of the grid; every spec lists as many values, and no point repeats."""
    zipped: list[GridAxis] = []
    for spec in specs:
        axis = _parse_axis(spec, "--zip", [*axes, *zipped], distinct=False)
        if zipped and len(axis.values) != len(zipped[0].values):
            raise ConfigError(f"--zip {axis.key}: {len(axis.values)} values, but --zip {zipped[0].key} has "
                              f"{len(zipped[0].values)} (zipped fields list one value per point)")
        zipped.append(axis)
    points = [tuple(_coerced(a.section, a.name, a.values[i].value) for a in zipped)
              for i in range(len(zipped[0].values) if zipped else 0)]
    for i, point in enumerate(points):
        if point in points[:i]:
            raise ConfigError(f"--zip: points {points.index(point) + 1} and {i + 1} are the same "
                              f"({', '.join(a.values[i].text for a in zipped)})")
    return zipped


def _parse_axis(spec: str, flag: str, earlier: Sequence[GridAxis], distinct: bool) -> GridAxis:
    """One `SECTION.FIELD=V1,V2,...` spec; `distinct`: no value may repeat (a zipped field's may)."""
    key, sep, listed = spec.partition("=")
    section, name = _field(key.strip(), spec, sep, flag)
    where = f"{flag} {section}.{name}"
    if any(axis.key == f"{section}.{name}" for axis in earlier):
        raise ConfigError(f"{where}: given twice (list all its values in one --grid, or one --zip)")
    values = tuple(_grid_value(item, where) for item in split_values(listed, where))
    coerced = [_coerced(section, name, v.value) for v in values]
    for i, value in enumerate(coerced):
        if distinct and value in coerced[:i]:
            raise ConfigError(f"{where}: {values[coerced.index(value)].text!r} and {values[i].text!r} are the "
                              "same value")
    return GridAxis(section, name, values)


def _field(key: str, spec: str, sep: str, flag: str = "--grid") -> tuple[str, str]:
    """(section, field) of a spec's key, or a ConfigError listing the valid ones."""
    sections = {f.name: f.type for f in fields(Config)}
    section, dot, name = key.partition(".")
    if not sep or not dot or not name:
        raise ConfigError(f"{flag} {spec!r}: expected SECTION.FIELD=V1,V2,... (e.g. train.lr=5e-4,5e-5); "
                          f"sections: {', '.join(sections)}")
    if section not in sections:
        raise ConfigError(f"{flag} {key}: unknown section '{section}' (valid: {', '.join(sections)})")
    known = [f.name for f in fields(getattr(Config(), section))]
    name = name.replace("-", "_")
    if name not in known:
        raise ConfigError(f"{flag} {key}: unknown field '{name}' in {section} (valid: {', '.join(sorted(known))})")
    if f"{section}.{name}" in NOT_SWEPT:
        raise ConfigError(f"{flag} {key}: not a field to sweep ({NOT_SWEPT[f'{section}.{name}']})")
    return section, name


def split_values(text: str, where: str) -> list[str]:
    """Split at the commas outside quotes and brackets: `'a, b',[c, d],e` -> `'a, b'`, `[c, d]`, `e`.

    A quote opens a string only where a value (or a list item) starts, as in YAML, so an apostrophe inside a
    plain value (`it's`) is text; inside double quotes a backslash escapes the next character."""
    items, current, closing = [], [], []
    quote, escaped, at_start = None, False, True
    for ch in text:
        if quote:
            current.append(ch)
            if escaped:
                escaped = False
            elif quote == '"' and ch == "\\":
                escaped = True
            elif ch == quote:
                quote, at_start = None, False
            continue
        if ch == "," and not closing:
            items.append("".join(current))
            current, at_start = [], True
            continue
        current.append(ch)
        if ch in "'\"" and at_start:
            quote = ch
        elif ch in _CLOSING:
            closing.append(_CLOSING[ch])
            at_start = True
        elif ch in ")]}":
            if not closing or closing[-1] != ch:
                raise ConfigError(f"{where}: unbalanced '{ch}' in {text!r} (quote a value that holds brackets)")
            closing.pop()
            at_start = False
        elif ch == ",":
            at_start = True
        elif not ch.isspace():
            at_start = False
    if quote or closing:
        missing = quote or closing[-1]
        raise ConfigError(f"{where}: missing closing {missing} in {text!r}")
    items.append("".join(current))
    return items


def _grid_value(item: str, where: str) -> GridValue:
    text = item.strip()
    if text[:1] in ("'", '"', "["):
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as err:
            problem = getattr(err, "problem", None) or type(err).__name__
            raise ConfigError(f"{where}: cannot read {text!r} ({problem})") from None
        shown = value if isinstance(value, str) else text
        return GridValue(shown, value)
    return GridValue(text, None if text in NULLS else text)


def _coerced(section: str, name: str, value: Any) -> Any:
    probe = Config()
    probe.update({section: {name: value}}, "--grid")
    return getattr(getattr(probe, section), name)
