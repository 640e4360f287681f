"""The run folder's JSON files as typed records, each with load and save.

A record reads what any version wrote: a field an older file lacks takes its default (None), and a field this
version does not know is kept in `extra` and written back, so that loading and saving a file never drops a field
that a user's script reads. Saving is atomic (files.write_text_atomically), as every write into a run folder.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from embedtune.files import read_json_or, write_text_atomically

log = logging.getLogger(__name__)
R = TypeVar("R", bound="Record")


@dataclass
class Record:
    """Known fields as attributes, in the order the JSON file lists them; unknown ones in `extra`."""

    # field -> the record type of its value (a nested mapping), or of each item of its list
    NESTED: ClassVar[dict[str, type[Record]]] = {}
    # fields left out of the JSON while None (an older file without them reads back the same)
    OPTIONAL: ClassVar[frozenset[str]] = frozenset()
    extra: dict[str, Any] = field(default_factory=dict, kw_only=True)  # fields this version does not know

    @classmethod
    def from_dict(cls: type[R], data: Mapping[str, Any]) -> R:
        names = cls.field_names()
        known = {name: cls._nested(name, data[name]) for name in names if name in data}
        return cls(**known, extra={k: v for k, v in data.items() if k not in names})

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls) if f.name != "extra"]

    @classmethod
    def _nested(cls, name: str, value: Any) -> Any:
        kind = cls.NESTED.get(name)
        if kind is None:
            return value
        if isinstance(value, Mapping):
            return kind.from_dict(value)
        if isinstance(value, list):
            return [kind.from_dict(v) if isinstance(v, Mapping) else v for v in value]
        return value

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.field_names():
            value = getattr(self, name)
            if value is None and name in self.OPTIONAL:
                continue
            out[name] = _plain(value)
        out.update((k, v) for k, v in self.extra.items() if k not in out)
        return out

    @classmethod
    def load(cls: type[R], path: str | Path) -> R | None:
        """The record in `path`; None when the file is absent, unreadable or not a JSON object."""
        data = read_json_or(path)
        return cls.from_dict(data) if data else None

    def save(self, path: str | Path) -> Path:
        return write_text_atomically(path, self.to_json())

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"


def _plain(value: Any) -> Any:
    if isinstance(value, Record):
        return value.to_dict()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


# ---- how a result was computed --------------------------------------------------------------------------------

@dataclass
class ComputedWith(Record):
    """The precision (and the bf16-vs-fp32 probe's figure where `auto` chose it), device and library versions
    an evaluation ran with: the same model scores differently in bf16 and fp32."""

    precision: str | None = None  # the dtype the model ran in: fp32 | bf16
    precision_asked: str | None = None  # auto | bf16 | fp32 (None: an Embedder built by the caller)
    bf16_speedup: float | None = None  # the CPU probe's bf16/fp32 matmul speed ratio, where `auto` measured it
    device: str | None = None  # cpu | cuda:0 ...
    device_name: str | None = None  # the CPU model or the GPU's name
    versions: dict[str, str | None] = field(default_factory=dict)  # torch, transformers, peft, embedtune

    def describe(self) -> str:
        """`fp32 on cpu (AMD EPYC ...), torch 2.5.1, ...`: one line for Markdown tables' footers."""
        chosen = ""
        if self.precision_asked == "auto":
            probe = f", bf16 {self.bf16_speedup:.2f}x fp32" if self.bf16_speedup is not None else ""
            chosen = f" (auto{probe})"
        where = f"{self.device}" + (f" ({self.device_name})" if self.device_name else "")
        versions = ", ".join(f"{k} {v}" for k, v in self.versions.items() if v)
        return f"{self.precision}{chosen} on {where}" + (f"; {versions}" if versions else "")


# ---- an evaluation --------------------------------------------------------------------------------------------

@dataclass
class Reuse(Record):
    """Where a run's base-model evaluation came from when it was not scored in the run itself."""

    source: str | None = None  # cache (the user's cache) | sweep (scored once for a sweep's runs)
    path: str | None = None  # the file it was read from (or filed in, for the sweep's runs)
    key: str | None = None


@dataclass
class EvalResult(Record):
    """What `embedtune eval` writes (--output), base.json and tuned.json: per-task scores and their average.

    `tasks` holds the STS tasks ({"spearman", "n", "kind", "main_score"} each; `average` ± `std` is over them),
    `pair_classification` and `retrieval` the other kinds' sections when asked for; `dims` the STS tasks scored
    on truncated, re-normalised vectors, per size ({"64": {"tasks", "average", "std"}, ...}) when asked for."""

    NESTED: ClassVar[dict[str, type[Record]]] = {"computed_with": ComputedWith, "reused": Reuse}
    OPTIONAL: ClassVar[frozenset[str]] = frozenset({"pair_classification", "retrieval", "dims", "computed_with",
                                                    "reused"})

    model: str | None = None
    pooling: str | None = None
    prompt: str | None = None
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    average: float | None = None
    std: float | None = None
    seconds: float | None = None
    sentences: int | None = None
    unique_sentences: int | None = None
    sentences_per_s: float | None = None
    pair_classification: dict[str, Any] | None = None
    retrieval: dict[str, Any] | None = None
    dims: dict[str, dict[str, Any]] | None = None
    computed_with: ComputedWith | None = None
    reused: Reuse | None = None  # in a run's report only: the stage file base.json is the evaluation as made

    @classmethod
    def of(cls, value: EvalResult | Mapping[str, Any]) -> EvalResult:
        """A record from a result as the evaluators return it (a dict), or the record itself."""
        return value if isinstance(value, EvalResult) else cls.from_dict(value)

    def score(self, task: str) -> float | None:
        """A task's number: Spearman x100 for STS, the task's main score for other kinds (pairs: AP, retrieval:
        nDCG@10)."""
        entry = self.tasks.get(task) or {}
        value = entry.get("spearman", entry.get("main_score"))
        return value if _is_number(value) else None

    def spearman(self) -> dict[str, float]:
        """STS task -> Spearman x100."""
        return {name: task["spearman"] for name, task in self.tasks.items() if _is_number(task.get("spearman"))}

    @property
    def has_average(self) -> bool:
        return _is_number(self.average) and _is_number(self.std)

    def covers(self, tasks: Iterable[str], dims: Iterable[int] = ()) -> bool:
        """Complete (average, std and time recorded), exactly for these tasks and scored at least at these truncated
        sizes: what a reused evaluation must be."""
        scored_dims = self.dims if isinstance(self.dims, dict) else {}
        return (set(self.tasks) == set(tasks) and self.has_average and _is_number(self.seconds)
                and all(str(d) in scored_dims for d in dims))

    def dim_averages(self) -> dict[int, float]:
        """Truncated size -> average Spearman x100 over the STS tasks, increasing; {} when none was scored."""
        found = {}
        for dim, entry in (self.dims or {}).items():
            if str(dim).isdigit() and isinstance(entry, Mapping) and _is_number(entry.get("average")):
                found[int(dim)] = float(entry["average"])
        return dict(sorted(found.items()))

    def without_reuse(self) -> EvalResult:
        """The evaluation as it was made (for base.json and the caches), without where this run found it."""
        return EvalResult.from_dict({k: v for k, v in self.to_dict().items() if k != "reused"})


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def load_complete(path: Path, tasks: Iterable[str], dims: Iterable[int] = ()) -> EvalResult | None:
    """The evaluation saved in `path` if it is complete and covers exactly `tasks`, else None (with a warning when
    the file exists but is not)."""
    if not Path(path).is_file():
        return None
    result = EvalResult.load(path)
    if result is None or not isinstance(result.tasks, dict) or not result.covers(tasks, dims):
        log.warning("%s is incomplete or for other tasks; evaluating the baseline again", path)
        return None
    return result


# ---- the time budget's plan -----------------------------------------------------------------------------------

@dataclass
class Plan(Record):
    """plan.json: what the time budget decided (or, without a budget, what the run is estimated to take)."""

    budget_s: float | None = None
    steps: int | None = None
    eval_steps: int | None = None
    step_s: float | None = None
    dev_eval_s: float | None = None
    final_eval_s: float | None = None
    estimated_s: float | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {k: round(v, 2) if isinstance(v, float) else v for k, v in super().to_dict().items()}

    as_dict = to_dict  # the name the time budget has always used


# ---- a run's report -------------------------------------------------------------------------------------------

@dataclass
class Selected(Record):
    """Which adapter the tuned evaluation used: OUTPUT/best (by dev score) or OUTPUT/final."""

    adapter: str | None = None
    by: str | None = None  # best | final | average (a sweep's averaged adapters)
    step: int | None = None
    dev_score: float | None = None


@dataclass
class RunReport(Record):
    """report.json, written last: a run folder holds one only when the run finished.

    A sweep's averaged adapters (OUTPUT/averaged/report.json) add the runs they average, their adapters, the scale
    and the runs' training time summed."""

    NESTED: ClassVar[dict[str, type[Record]]] = {"base": EvalResult, "tuned": EvalResult, "plan": Plan,
                                                 "selected": Selected}
    OPTIONAL: ClassVar[frozenset[str]] = frozenset({"averaged_from", "adapters", "scale", "train_seconds"})

    base: EvalResult | None = None
    tuned: EvalResult | None = None
    gain: float | None = None
    plan: Plan | None = None
    seconds: float | None = None
    selected: Selected | None = None
    averaged_from: list[str] | None = None
    adapters: list[str] | None = None
    scale: float | None = None
    train_seconds: float | None = None

    @classmethod
    def of(cls, base: EvalResult, tuned: EvalResult, **rest: Any) -> RunReport:
        gain = tuned.average - base.average if base.has_average and tuned.has_average else None
        return cls(base=base, tuned=tuned, gain=gain, **rest)

    @property
    def complete(self) -> bool:
        """Both evaluations with their per-task scores: what a reader can show as a finished run."""
        return all(isinstance(r, EvalResult) and isinstance(r.tasks, dict) for r in (self.base, self.tuned))

    @property
    def adapter(self) -> str | None:
        return self.selected.adapter if isinstance(self.selected, Selected) else None


# ---- versions and hardware ------------------------------------------------------------------------------------

@dataclass
class Environment(Record):
    """environment.json: versions (embedtune, torch, transformers, peft, python) and hardware (CPU, cores, memory,
    GPUs) of the process that finished a run."""

    versions: dict[str, str | None] = field(default_factory=dict)
    hardware: dict[str, Any] = field(default_factory=dict)
    recorded: str | None = None

    def comparable(self) -> str:
        """What tells two environments apart (not when they were recorded)."""
        return json.dumps({"versions": self.versions, "hardware": self.hardware}, sort_keys=True)


# ---- a sweep's state ------------------------------------------------------------------------------------------

@dataclass
class SweepRunState(Record):
    """One grid point in sweep.json."""

    name: str | None = None
    dir: str | None = None  # relative to the sweep folder: runs/NAME
    overrides: dict[str, str] = field(default_factory=dict)  # field -> value as given
    status: str = "pending"  # pending | running | done | failed
    error: str | None = None
    seconds: float | None = None
    config: dict[str, Any] | None = None


@dataclass
class AverageState(Record):
    status: str = "pending"  # pending | running | done | skipped | failed
    error: str | None = None


@dataclass
class SweepRecord(Record):
    """sweep.json: the grid and every run's state (and the averaged adapter's, when the sweep averages)."""

    NESTED: ClassVar[dict[str, type[Record]]] = {"runs": SweepRunState, "averaged": AverageState}
    OPTIONAL: ClassVar[frozenset[str]] = frozenset({"averaged"})

    grid: list[dict[str, Any]] = field(default_factory=list)
    runs: list[SweepRunState] = field(default_factory=list)
    updated: str | None = None
    averaged: AverageState | None = None

    def named_runs(self) -> list[SweepRunState]:
        """The runs a reader can place: entries with a name (a hand-edited file may hold others)."""
        return [run for run in self.runs if isinstance(run, SweepRunState) and isinstance(run.name, str)]
