"""`embedtune run --time-budget 20m`: size the training steps and the dev evaluation to fit a wall-clock budget.

The baseline evaluation is timed first (the final evaluation costs the same), then the first training steps;
from their median the plan gives the number of steps and the dev-evaluation interval that fit what is left,
prints it, and the run's report keeps it. Without a budget the same measurements give a printed estimate.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field

from embedtune.training.callbacks import Callback, TrainState

PROBE_STEPS = 3  # steps timed before planning; the first one (kernel compiles, allocator warm-up) is left out
DEV_EVAL_SHARE = 0.15  # the dev evaluations may take at most this share of the training time


def format_duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


@dataclass
class Plan:
    """What the budget decided (or, without a budget, what the run is estimated to take), for the report."""

    budget_s: float | None
    steps: int
    eval_steps: int
    step_s: float
    dev_eval_s: float
    final_eval_s: float
    estimated_s: float
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {k: round(v, 2) if isinstance(v, float) else v for k, v in asdict(self).items()}


class TimeBudget(Callback):
    """Plans after PROBE_STEPS steps: shrinks `total_steps` (never grows it) and widens the dev-eval interval."""

    def __init__(self, budget_s: float | None, run_started: float, final_eval_s: float, dev_eval_s: float,
                 eval_steps: int):
        self.budget_s, self.run_started = budget_s, run_started
        self.final_eval_s, self.dev_eval_s, self.eval_steps = final_eval_s, dev_eval_s, eval_steps
        self.step_seconds: list[float] = []
        self.plan: Plan | None = None
        self.resumed = False

    def on_train_start(self, state: TrainState) -> None:
        self.resumed = state.step > 0  # a resumed run keeps the plan its checkpoint recorded

    def on_step_end(self, state: TrainState, event: dict) -> None:
        self.step_seconds.append(event["seconds"])
        if self.plan is None and not self.resumed and len(self.step_seconds) == PROBE_STEPS:
            self.plan = self.make_plan(state)
            state.total_steps, state.eval_steps = self.plan.steps, self.plan.eval_steps
            print(self.describe(), flush=True)

    def make_plan(self, state: TrainState) -> Plan:
        step_s = statistics.median(self.step_seconds[1:])
        elapsed = time.perf_counter() - self.run_started
        steps, eval_steps, notes = state.total_steps, self.eval_steps, []
        if self.budget_s is not None:
            left = self.budget_s - elapsed - self.final_eval_s
            fit = int(left * (1 - DEV_EVAL_SHARE) / step_s) + state.step if left > 0 else state.step
            if fit < steps:
                notes.append(f"steps {steps} -> {max(fit, state.step)} to fit the budget")
                steps = max(fit, state.step)
        if self.budget_s is not None and eval_steps and self.dev_eval_s > 0:  # without a budget: estimate only
            evals_that_fit = max(1, int(DEV_EVAL_SHARE * steps * step_s / self.dev_eval_s))
            wanted = -(-steps // eval_steps)
            if wanted > evals_that_fit:
                eval_steps = -(-steps // evals_that_fit)
                notes.append(f"dev evaluation every {eval_steps} steps ({evals_that_fit} in all)")
        dev_total = (-(-steps // eval_steps) if eval_steps else 0) * self.dev_eval_s
        estimated = elapsed + (steps - state.step) * step_s + dev_total + self.final_eval_s
        return Plan(self.budget_s, steps, eval_steps, step_s, self.dev_eval_s, self.final_eval_s, estimated, notes)

    def describe(self) -> str:
        p = self.plan
        assert p is not None
        head = f"plan: {p.steps} steps at {p.step_s:.2f} s/step"
        if p.eval_steps:
            head += f", dev evaluation every {p.eval_steps} steps (~{p.dev_eval_s:.0f} s each)"
        head += f"; estimated run time {format_duration(p.estimated_s)}"
        if p.budget_s is not None:
            head += f" (budget {format_duration(p.budget_s)})"
        notes = [n for n in p.notes if not n.startswith("dev evaluation every")]  # already in the head
        return head + ("; " + "; ".join(notes) if notes else "")
