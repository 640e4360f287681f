"""Bad steps: a NaN or inf loss or gradient norm, or a loss spike, never changes a weight.

`--on-bad-loss stop` (the default) stops the run with the last good checkpoint kept; `skip` drops the step's update,
counts it, and still stops after `--max-bad-steps` bad steps in a row. `--spike-factor F` also counts a loss above
F x the median of the recent good losses as bad. The counts travel in the checkpoint, so a resumed run judges
exactly as an uninterrupted one.
"""
from __future__ import annotations

import logging
import math
import statistics
from pathlib import Path

from embedtune.errors import TrainingError

log = logging.getLogger(__name__)
SPIKE_WINDOW = 50  # good losses the running median of --spike-factor is taken over
SPIKE_MIN_HISTORY = 5  # good losses needed before spikes are judged at all


class LossGuard:
    def __init__(self, policy: str = "stop", max_bad_steps: int = 5, spike_factor: float | None = None):
        self.policy, self.max_bad_steps, self.spike_factor = policy, max_bad_steps, spike_factor
        self.recent: list[float] = []
        self.consecutive = 0
        self.skipped = 0

    def problem(self, loss: float) -> str | None:
        """What is wrong with this step's loss, or None."""
        if not math.isfinite(loss):
            return f"loss is {loss}"
        if self.spike_factor is not None and len(self.recent) >= SPIKE_MIN_HISTORY:
            median = statistics.median(self.recent)
            if loss > self.spike_factor * median:
                return f"loss {loss:.4g} is above {self.spike_factor:g} x the running median {median:.4g}"
        return None

    def good(self, loss: float) -> None:
        self.consecutive = 0
        self.recent = (self.recent + [loss])[-SPIKE_WINDOW:]

    def bad(self, problem: str, step: int, last_checkpoint: Path | None) -> None:
        """Policy `stop`, or `skip` with too many bad steps in a row: raise; otherwise count the skip."""
        self.consecutive += 1
        hint = ("Try a lower --lr, --precision fp32" + (", a larger --spike-factor" if "median" in problem else "")
                + (" or --on-bad-loss skip." if self.policy == "stop" else "."))
        last = last_checkpoint or "none"
        if self.policy == "stop":
            raise TrainingError(f"{problem} at step {step}; stopped. Last good checkpoint: {last}. {hint}")
        if self.consecutive >= self.max_bad_steps:
            raise TrainingError(f"{self.consecutive} bad steps in a row (the last: {problem} at step {step}); "
                                f"stopped. Last good checkpoint: {last}. {hint}")
        self.skipped += 1
        log.warning("step %d skipped: %s (%d skipped so far, %d in a row)", step, problem, self.skipped,
                    self.consecutive)

    def state_dict(self) -> dict:
        return {"recent": self.recent, "consecutive": self.consecutive, "skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        self.recent, self.consecutive, self.skipped = state["recent"], state["consecutive"], state["skipped"]
