"""`embedtune run --time-budget 20m`: size the training steps and the dev evaluation to fit a wall-clock budget.

The baseline evaluation is timed first (the final evaluation costs the same), then the first training steps;
from their median the plan gives the number of steps and the dev-evaluation interval that fit what is left,
prints it, and the run's report keeps it. Without a budget the same measurements give a printed estimate.
The budget counts from the run's start: a baseline reused from the cache (no evaluation) leaves its minutes to
training.
"""
from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable

from embedtune.runs.records import Plan
from embedtune.training.callbacks import Callback, TrainState

PROBE_STEPS = 3  # steps timed before planning; the first one (kernel compiles, allocator warm-up) is left out
DEV_EVAL_SHARE = 0.15  # the dev evaluations may take at most this share of the training time
REPLAN_WINDOW = 10  # recent steps whose median wall time the re-plan uses: it follows a machine that slows down
REPORT_S = 5.0  # `run`, after the final evaluation: tables, plots and the HTML page

log = logging.getLogger(__name__)


def format_duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


class TimeBudget(Callback):
    """Plans after PROBE_STEPS steps: shrinks `total_steps` (never grows it) and widens the dev-eval interval.

    With a budget it then re-plans after every step from what the run has really cost so far: the wall time between
    step ends (data, metrics and checkpoints included, evaluations taken out), the dev evaluations as measured
    (LoRA layers unmerged, slower than the base model the plan first scaled from), and a final evaluation scaled
    by the same measured ratio plus the model load it repeats. A run whose steps turn out slower than the probe's
    ends earlier instead of overrunning; the learning-rate schedule follows `total_steps`.
    """

    def __init__(self, budget_s: float | None, run_started: float, final_eval_s: float, dev_eval_s: float,
                 eval_steps: int, report_s: float = 0.0, clock: Callable[[], float] = time.perf_counter):
        self.budget_s, self.run_started, self.report_s = budget_s, run_started, report_s
        self.final_eval_s, self.dev_eval_s, self.eval_steps = final_eval_s, dev_eval_s, eval_steps
        self.clock = clock
        self.created = clock()  # just before train(): model and data load until the first step
        self.load_s = 0.0  # the final evaluation loads the model again
        self.last_end = self.created
        self.eval_s = 0.0  # time taken by an evaluation since the last step end
        self.step_seconds: list[float] = []
        self.step_walls: list[float] = []
        self.dev_seconds: list[float] = []
        self.plan: Plan | None = None
        self.resumed = False

    def on_train_start(self, state: TrainState) -> None:
        self.resumed = state.step > 0  # a resumed run keeps the plan its checkpoint recorded
        self.last_end = self.clock()
        self.load_s = self.last_end - self.created

    def on_step_end(self, state: TrainState, event: dict) -> None:
        now = self.clock()
        self.step_walls.append(max(now - self.last_end - self.eval_s, event["seconds"]))
        self.last_end, self.eval_s = now, 0.0
        self.step_seconds.append(event["seconds"])
        if self.resumed:
            return
        if self.plan is None and len(self.step_seconds) == PROBE_STEPS:
            self.plan = self.make_plan(state)
            state.total_steps, state.eval_steps = self.plan.steps, self.plan.eval_steps
            print(self.describe(), flush=True)
        elif self.plan is not None and self.budget_s is not None:
            self.replan(state)

    def on_evaluate(self, state: TrainState, event: dict) -> None:
        self.eval_s = self.clock() - self.last_end
        self.dev_seconds.append(self.eval_s)

    def step_s(self) -> float:
        """Seconds a step costs on the wall clock, from the recent steps (the first, with its compiles, left out)."""
        return statistics.median(self.step_walls[1:][-REPLAN_WINDOW:])

    def final_s(self) -> float:
        """The final evaluation: the base model's time, scaled as the measured dev evaluations were against their
        estimate, plus the model load and the report."""
        scale = 1.0
        if self.dev_seconds and self.dev_eval_s > 0:
            scale = min(max(statistics.mean(self.dev_seconds) / self.dev_eval_s, 0.5), 3.0)
        return self.final_eval_s * scale + self.load_s + self.report_s

    def dev_s(self) -> float:
        return statistics.mean(self.dev_seconds) if self.dev_seconds else self.dev_eval_s

    def projected_s(self, state: TrainState, steps: int) -> float:
        """Run time if training stopped after `steps` (each dev evaluation still to come counted)."""
        evals = _evaluations(state.step, steps, state.eval_steps)
        return (self.clock() - self.run_started + (steps - state.step) * self.step_s() + evals * self.dev_s()
                + self.final_s())

    def replan(self, state: TrainState) -> None:
        assert self.plan is not None and self.budget_s is not None
        steps = state.total_steps
        while steps > state.step and self.projected_s(state, steps) > self.budget_s:
            steps -= 1
        if steps < state.total_steps:
            self.plan.notes.append(f"steps {state.total_steps} -> {steps} at step {state.step} "
                                   f"({self.step_s():.2f} s/step measured)")
            log.info("time budget: %s", self.plan.notes[-1])
            state.total_steps = self.plan.steps = steps
        self.plan.step_s, self.plan.dev_eval_s = self.step_s(), self.dev_s()
        self.plan.final_eval_s = self.final_s()
        self.plan.estimated_s = self.projected_s(state, state.total_steps)

    def make_plan(self, state: TrainState) -> Plan:
        step_s = self.step_s()
        elapsed = self.clock() - self.run_started
        final_s = self.final_s()
        steps, eval_steps, notes = state.total_steps, self.eval_steps, []
        if self.budget_s is not None:
            left = self.budget_s - elapsed - final_s
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
        dev_total = _evaluations(state.step, steps, eval_steps) * self.dev_eval_s
        estimated = elapsed + (steps - state.step) * step_s + dev_total + final_s
        return Plan(self.budget_s, steps, eval_steps, step_s, self.dev_eval_s, final_s, estimated, notes)

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


def _evaluations(step: int, steps: int, eval_steps: int) -> int:
    """Dev evaluations after `step` up to `steps`: every eval_steps-th step, and the last one."""
    if not eval_steps or steps <= step:
        return 0
    return steps // eval_steps - step // eval_steps + (1 if steps % eval_steps else 0)
