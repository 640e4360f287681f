"""Fault injection for the reliability tests (docs/RELIABILITY.md), reached through embedtune.hooks.

`EMBEDTUNE_FAULT="ACTION:KIND:N[,...]"` (or `injected_faults(spec)` in-process) arms faults at named events. KIND
is a write's kind (`checkpoint`, `final`, `best`, `export`, `encode`, `gguf-convert`, `bf16-copy`, or a file's name
such as `report.json`), or one of the trainer's events `step` (after step N, checkpoint included) and `loss` (the
loss of step N); `*` matches any kind. N is the event's number: the step for `step`/`loss`, else the n-th write of
that kind in this process (1-based); `*` matches every one. ACTION is `kill` (SIGKILL in the middle of the write:
after half of its bytes, before the rename; or at a step), `kill-swap` (SIGKILL after an existing folder was moved
aside and before the new one took its place), `enospc`/`erofs`/`eacces`/`eio` (that OSError, mid-write), or
`nan`/`inf`/`spike` (the trainer's loss of that step becomes NaN, inf or 1000x).

The writer's points ("mid-write", "folder-swap") and the trainer's (through FaultCallback, which the hook's
"train-callbacks" point adds to a run) are the only places faults fire; a write is counted when it reaches its
mid-write point, only while faults are armed.
"""
from __future__ import annotations

import errno
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embedtune.errors import ConfigError
from embedtune.hooks import FAULT_ENV, arm
from embedtune.training.callbacks import Callback, TrainState

__all__ = ["FAULT_ENV", "Fault", "FaultCallback", "arm_from_environment", "fault", "injected_faults",
           "parse_faults"]

ERRNO_ACTIONS = {"enospc": errno.ENOSPC, "erofs": errno.EROFS, "eacces": errno.EACCES, "eio": errno.EIO}
KILL_ACTIONS = ("kill", "kill-swap")
VALUE_ACTIONS = ("nan", "inf", "spike")  # the caller acts on these
ACTIONS = (*KILL_ACTIONS, *ERRNO_ACTIONS, *VALUE_ACTIONS)
MID_WRITE = ("kill", *ERRNO_ACTIONS)
INJECTED_LOSS = {"nan": float("nan"), "inf": float("inf"), "spike": 1000.0}  # the loss times this


@dataclass(frozen=True)
class Fault:
    action: str
    kind: str  # or "*"
    number: int | None  # None: every event of that kind


_override: str | None = None  # injected_faults' spec, which wins over the environment's
_parsed: tuple[str, list[Fault]] | None = None
_counts: dict[str, int] = {}  # writes per kind that reached their mid-write point
_writing: dict[Path, int] = {}  # a folder write's number, from its mid-write point to its swap


def parse_faults(spec: str) -> list[Fault]:
    faults = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        action, sep, rest = part.partition(":")
        kind, sep2, number = rest.rpartition(":")
        if not (sep and sep2 and kind) or action not in ACTIONS or not (number == "*" or number.isdigit()):
            raise ConfigError(f"{FAULT_ENV}: expected ACTION:KIND:N (ACTION one of {', '.join(ACTIONS)}; N a "
                              f"number or *), got '{part}'")
        faults.append(Fault(action, kind, None if number == "*" else int(number)))
    return faults


def _armed() -> list[Fault]:
    """The faults armed now; parsed at the first event (so that a bad spec fails as a one-line error there)."""
    global _parsed
    spec = _override if _override is not None else os.environ.get(FAULT_ENV, "")
    if not spec:
        return []
    if _parsed is None or _parsed[0] != spec:
        _parsed = (spec, parse_faults(spec))
        _counts.clear()
    return _parsed[1]


def arm_from_environment() -> None:
    """Arm the hook for this process's EMBEDTUNE_FAULT (embedtune/__init__.py calls this when it is set)."""
    arm(_on_hook)


@contextmanager
def injected_faults(spec: str) -> Iterator[None]:
    """Arm `spec` (the EMBEDTUNE_FAULT syntax) in this process for the duration; counts start afresh."""
    global _override, _parsed
    previous_spec, _override, _parsed = _override, spec, None
    previous_handler = arm(_on_hook)
    try:
        yield
    finally:
        arm(previous_handler)
        _override, _parsed = previous_spec, None


def _on_hook(point: str, **where: Any) -> Any:
    if not _armed():
        return None
    if point == "mid-write":
        return _mid_write(where["kind"], where["path"], where["tmp"])
    if point == "folder-swap":
        return _inject(where["kind"], _writing.pop(where["path"], 0), ("kill-swap",), where["path"])
    if point == "train-callbacks":
        return [FaultCallback()]
    return None


def _count(kind: str) -> int:
    _counts[kind] = _counts.get(kind, 0) + 1
    return _counts[kind]


def _match(kind: str, number: int, actions: tuple[str, ...]) -> Fault | None:
    for armed in _armed():
        if armed.kind in (kind, "*") and armed.number in (None, number) and armed.action in actions:
            return armed
    return None


def _inject(kind: str, number: int, actions: tuple[str, ...], path: Path | None = None) -> str | None:
    armed = _match(kind, number, actions)
    if armed is None:
        return None
    if armed.action in KILL_ACTIONS:
        print(f"embedtune: injected fault: SIGKILL at {kind} #{number}", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    if armed.action in ERRNO_ACTIONS:
        code = ERRNO_ACTIONS[armed.action]
        raise OSError(code, f"{os.strerror(code)} (injected)", str(path))
    return armed.action


def _mid_write(kind: str, path: Path, tmp: Path) -> None:
    """A mid-write fault: the temporary file (or a folder's largest file) is cut to half its bytes first."""
    number = _count(kind)
    if tmp.is_dir():
        _writing[path] = number  # the folder-swap point of this same write comes next
    if _match(kind, number, MID_WRITE) is None:
        return
    files = [tmp] if tmp.is_file() else sorted((p for p in tmp.rglob("*") if p.is_file()),
                                                key=lambda p: p.stat().st_size)
    if files:
        with open(files[-1], "r+b") as f:
            f.truncate(files[-1].stat().st_size // 2)
    _inject(kind, number, MID_WRITE, path)


def fault(kind: str, number: int | None = None) -> str | None:
    """A fault point outside the writers (the trainer's `step` and `loss`): kills or raises as armed, or returns
    the value action (nan, inf, spike) for the caller to apply; None when nothing is armed here."""
    if not _armed():
        return None
    return _inject(kind, _count(kind) if number is None else number, ACTIONS)


class FaultCallback(Callback):
    """The trainer's fault points: `loss` (step N's loss, before the bad-loss check and backward) and `step`
    (after step N, its dev evaluation and checkpoint included)."""

    def on_loss(self, state: TrainState, loss: Any) -> Any:
        injected = fault("loss", state.step + 1)
        return loss * INJECTED_LOSS[injected] if injected in INJECTED_LOSS else loss

    def on_step_complete(self, state: TrainState) -> None:
        fault("step", state.step)
