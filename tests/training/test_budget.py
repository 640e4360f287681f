"""--time-budget: durations parse, the plan shrinks steps and widens dev evaluation to fit, the run reports it."""
from __future__ import annotations

import json
import time

import pytest

from embedtune.cli import main
from embedtune.config import parse_duration
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
