"""--time-budget: durations parse, the plan shrinks steps and widens dev evaluation to fit, the run reports it."""
from __future__ import annotations

import json
import time

import pytest

from embedtune.cli import main
from embedtune.config import Config, budget_seconds, parse_duration
from embedtune.errors import ConfigError
from embedtune.training.budget import PROBE_STEPS, TimeBudget
from embedtune.training.callbacks import TrainState


@pytest.mark.parametrize("text,seconds", [("20m", 1200), ("1h30m", 5400), ("90s", 90), ("900", 900),
                                          ("1.5h", 5400), (" 2m 30s ", 150)])
def test_durations_parse(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "twenty minutes", "20x", "m", "-5m"])
def test_bad_durations_are_config_errors(text):
    with pytest.raises(ConfigError, match="time budget must look like"):
        parse_duration(text)


def plan_for(budget_s: float | None, step_s: float, total: int, eval_steps: int, dev_eval_s: float,
             final_eval_s: float = 10.0) -> TrainState:
    state = TrainState(output_dir=None, step=0, total_steps=total, eval_steps=eval_steps, embedder=None,
                       loss_fn=None, optimizer=None)
    budget = TimeBudget(budget_s, time.perf_counter(), final_eval_s=final_eval_s, dev_eval_s=dev_eval_s,
                        eval_steps=eval_steps)
    budget.on_train_start(state)
    for _ in range(PROBE_STEPS):
        state.step += 1
        budget.on_step_end(state, {"seconds": step_s})
    return state, budget.plan


def test_budget_shrinks_steps_to_fit():
    # 100 s left after the final evaluation, 85% of it for steps of 2 s: 42 steps, plus the 3 already run.
    state, plan = plan_for(budget_s=110, step_s=2.0, total=150, eval_steps=0, dev_eval_s=0)
    assert state.total_steps == plan.steps == 45
    assert plan.estimated_s == pytest.approx(10 + 42 * 2.0, abs=1.0)


def test_budget_never_grows_a_run_and_without_one_only_estimates(capsys):
    state, plan = plan_for(budget_s=None, step_s=1.0, total=20, eval_steps=5, dev_eval_s=0.1)
    assert state.total_steps == 20 and state.eval_steps == 5 and plan.budget_s is None
    assert plan.estimated_s == pytest.approx(17 * 1.0 + 4 * 0.1 + 10, abs=1.0)
    assert "plan: 20 steps" in capsys.readouterr().out


def test_dev_evaluation_is_spaced_to_its_share_of_the_time():
    # 100 steps of 1 s with an eval every 5 steps would spend 20 x 10 s on dev evaluation; 15 s fit (15%).
    state, plan = plan_for(budget_s=10_000, step_s=1.0, total=100, eval_steps=5, dev_eval_s=10.0)
    assert state.eval_steps == plan.eval_steps == 100 and state.total_steps == 100
    assert any("dev evaluation every 100 steps" in note for note in plan.notes)


def test_without_a_budget_the_dev_evaluation_interval_is_the_users():
    state, plan = plan_for(budget_s=None, step_s=1.0, total=100, eval_steps=5, dev_eval_s=10.0)
    assert state.eval_steps == plan.eval_steps == 5 and plan.notes == []


def test_run_with_a_budget_reports_its_plan(tiny_model_dir, tiny_data_dir, tmp_path, capsys):
    out = tmp_path / "exp"
    code = main(["run", "--model", str(tiny_model_dir), "--data-dir", str(tiny_data_dir), "--output-dir", str(out),
                 "--max-steps", "6", "--batch-size", "8", "--eval-steps", "3", "--precision", "fp32",
                 "--tasks", "sts12", "--time-budget", "10m"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["plan"]["budget_s"] == 600 and report["plan"]["steps"] == 6  # a tiny model fits easily
    assert "plan: 6 steps" in capsys.readouterr().out
    assert "within a budget of 10 min 00 s" in (out / "report.md").read_text()


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def simulate(step_s, budget_s: float, total: int, eval_steps: int = 0, dev_eval_s: float = 0.0,
             dev_real_s: float = 0.0, final_eval_s: float = 10.0, load_s: float = 0.0) -> tuple[TrainState, float]:
    """A budgeted run on a fake clock: `step_s(step)` wall seconds per step, dev evaluations taking `dev_real_s`;
    returns the state and when the final evaluation would end if it took final_eval_s x dev_real_s / dev_eval_s."""
    clock = FakeClock()
    budget = TimeBudget(budget_s, 0.0, final_eval_s=final_eval_s, dev_eval_s=dev_eval_s, eval_steps=eval_steps,
                        clock=clock)
    state = TrainState(output_dir=None, step=0, total_steps=total, eval_steps=eval_steps, embedder=None,
                       loss_fn=None, optimizer=None)
    clock.now += load_s
    budget.on_train_start(state)
    while state.step < state.total_steps:
        seconds = step_s(state.step + 1)
        clock.now += seconds
        state.step += 1
        budget.on_step_end(state, {"seconds": seconds})
        if state.eval_steps and (state.step % state.eval_steps == 0 or state.step == state.total_steps):
            clock.now += dev_real_s
            budget.on_evaluate(state, {})
    ratio = dev_real_s / dev_eval_s if dev_eval_s else 1.0
    return state, clock.now + load_s + final_eval_s * ratio


def test_steps_that_slow_down_after_the_plan_shrink_the_run_to_the_budget():
    # Planned on 1 s steps, then every step takes 2 s: without re-planning the run would end near 180 s.
    state, ends = simulate(lambda step: 1.0 if step <= PROBE_STEPS else 2.0, budget_s=100, total=200)
    assert ends <= 100 and ends >= 97  # held, and not by stopping far too early
    assert state.total_steps < 85  # the first plan's count (85% of 90 s at 1 s a step, +3)


def test_measured_dev_evaluations_rescale_the_final_evaluation():
    # The dev evaluation was estimated at 1 s and takes 3 s (unmerged LoRA layers): the final one is scaled alike.
    state, ends = simulate(lambda step: 1.0, budget_s=200, total=500, eval_steps=20, dev_eval_s=1.0, dev_real_s=3.0,
                           final_eval_s=20.0, load_s=5.0)
    assert ends <= 200 and ends >= 194


def test_a_run_within_its_budget_is_not_shortened():
    state, ends = simulate(lambda step: 1.0, budget_s=1000, total=50)
    assert state.total_steps == 50 and ends == pytest.approx(60.0)


@pytest.mark.parametrize("text", [None, "off", "OFF", "none", "0", "0m"])
def test_off_none_and_zero_mean_no_budget(text):
    assert budget_seconds(text) is None
    Config.from_dict({"train": {"time_budget": text}}).validate()


def test_off_lifts_the_budget_a_config_file_sets(tmp_path):
    from embedtune.cli import build_parser, config_from_args

    path = tmp_path / "c.yaml"
    path.write_text("train:\n  time_budget: 20m\n")
    args = build_parser().parse_args(["run", "--config", str(path), "--output-dir", "x", "--time-budget", "off"])
    assert budget_seconds(config_from_args(args).train.time_budget) is None
    assert budget_seconds("1h30m") == 5400
