"""The learning-rate schedule: linear warm-up, then cosine, linear or constant, by the step count read each step."""
from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch.optim.lr_scheduler import LambdaLR

from embedtune.cli import DATA_FLAGS, MODEL_FLAGS, TRAIN_FLAGS, build_parser, config_from_args
from embedtune.config import SCHEDULES
from embedtune.training.optim import _DECAYS, warmup_then_decay

PEAK = 1e-3


def _scheduled(schedule: str, warmup_ratio: float, total: Callable[[], int]) -> tuple[torch.optim.Optimizer, LambdaLR]:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=PEAK)
    return optimizer, warmup_then_decay(optimizer, warmup_ratio, total, schedule)


def _rates(schedule: str, steps: int, warmup_ratio: float) -> list[float]:
    """The rate each optimizer step runs at, read as the loop does: step, then advance the scheduler."""
    optimizer, scheduler = _scheduled(schedule, warmup_ratio, lambda: steps)
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_every_configurable_schedule_has_a_decay():
    assert set(SCHEDULES) == set(_DECAYS)


@pytest.mark.parametrize("schedule,after_warmup", [
    # 10 steps, warm-up int(0.2 * 10) = 2 steps at 1/3 and 2/3 of the peak; then progress (s - 2) / 8
    ("cosine", [0.5 * (1 + math.cos(math.pi * k / 8)) for k in range(8)]),
    ("linear", [1 - k / 8 for k in range(8)]),
    ("constant", [1.0] * 8),
])
def test_each_schedule_follows_its_formula_after_the_same_warmup(schedule, after_warmup):
    expected = [PEAK / 3, 2 * PEAK / 3] + [PEAK * f for f in after_warmup]
    assert _rates(schedule, 10, 0.2) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_decay_follows_a_total_changed_mid_run():
    """A time budget resizes the run: the decay stretches over the new length from the step it is read."""
    total = {"steps": 20}
    optimizer, scheduler = _scheduled("linear", 0.0, lambda: total["steps"])
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    total["steps"] = 10
    scheduler.step()  # step 6 of 10: linear progress 0.6
    assert optimizer.param_groups[0]["lr"] == pytest.approx(PEAK * 0.4)


@pytest.mark.parametrize("flags,schedule", [([], "cosine"), (["--schedule", "linear"], "linear")])
def test_schedule_flag_reaches_the_config(flags, schedule):
    args = build_parser().parse_args(["train", "--output-dir", "o", *flags])
    assert config_from_args(args, MODEL_FLAGS | DATA_FLAGS | TRAIN_FLAGS).train.schedule == schedule
