"""Hooks into the training loop, for benchmarks and integrations that watch a run without patching it."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TrainState:
    """What a callback may read (and, for `total_steps` and `eval_steps`, change early in a run: the learning-rate
    schedule reads `total_steps` at every step)."""

    output_dir: Path
    step: int
    total_steps: int
    eval_steps: int  # 0: no dev evaluation
    embedder: Any
    loss_fn: Any
    optimizer: Any
    best: dict = field(default_factory=lambda: {"step": None, "score": None})
    adapter_settings: dict | None = None  # written beside each saved adapter (export/metadata.export_info)


class Callback:
    """Override what you need; every hook is a no-op by default."""

    def on_train_start(self, state: TrainState) -> None: ...

    def on_loss(self, state: TrainState, loss: Any) -> Any:
        """Step `state.step + 1`'s loss, before the bad-loss check and backward: return it, or a replacement (the
        fault tests make chosen ones NaN, inf or a spike: embedtune/testing/faults.py)."""
        return loss

    def on_step_end(self, state: TrainState, event: dict) -> None: ...

    def on_step_complete(self, state: TrainState) -> None:
        """After everything step `state.step` does, its dev evaluation and checkpoint included (on_step_end comes
        before them): what a crash from here on leaves is on disk."""

    def on_evaluate(self, state: TrainState, event: dict) -> None: ...

    def on_train_end(self, state: TrainState, final: Path) -> None: ...
