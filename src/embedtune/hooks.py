"""The product's one test hook: a no-op unless a test arms it.

The reliability tests (docs/RELIABILITY.md) must act at exact points inside the product: half-way through an
atomic write, between a folder swap's two renames, at a chosen training step. Product code calls
`hook(point, **where)` there and nothing else; unarmed (always, outside those tests) that is one global check
and returns None. Points: "mid-write" (kind, path, tmp: the content is flushed, not yet synced or renamed),
"folder-swap" (kind, path: the old folder is aside, the new one not yet in place) and "train-callbacks" (the
extra training callbacks a test wants, training/callbacks.py).

Why a module of its own at the lowest layer, apart from embedtune.testing: every layer may call it (files.py at
layer 0, the trainer above), it imports nothing, and the testing code it leads to sits above what it reaches
(it names the trainer's Callback) and imports this module, never the reverse. So a normal process never imports
embedtune.testing at all. A process started with EMBEDTUNE_FAULT set is armed when the `embedtune` package is
imported (embedtune/__init__.py), which every entry point does first: `python -m embedtune`, torchrun's workers,
a test's `python -c` child.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

FAULT_ENV = "EMBEDTUNE_FAULT"  # set, it arms embedtune.testing.faults in a new process (docs/RELIABILITY.md)

Handler = Callable[..., Any]  # handler(point, **where) -> what the point's caller acts on, or None
_handler: Handler | None = None


def hook(point: str, **where: Any) -> Any:
    """What an armed test wants done at `point` (None when unarmed: the product's normal case)."""
    return None if _handler is None else _handler(point, **where)


def arm(handler: Handler | None) -> Handler | None:
    """Install `handler` (None disarms); returns the one it replaces, for the caller to put back."""
    global _handler
    previous, _handler = _handler, handler
    return previous
