"""Schedule values at given steps (issue 4, acceptance 1)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mammodino.config import load_config
from mammodino.errors import ConfigError
from mammodino.settings import Settings
from mammodino.train.schedules import (
    build_schedules,
    cosine_schedule,
    linear_warmup_schedule,
    scaled_lr,
)


def _sections(**optim):
    overrides = [
        "optim.epochs=10",
        "optim.steps_per_epoch=10",
        "optim.warmup_epochs=2",
        "optim.base_lr=0.004",
        "optim.min_lr=1e-6",
        "optim.freeze_last_layer_epochs=1",
        "teacher.warmup_temp_epochs=3",
    ] + [f"optim.{k}={v}" for k, v in optim.items()]
    settings = Settings.from_config(load_config(overrides=overrides))
    return settings.optim, settings.teacher


def test_lr_is_scaled_by_square_root_of_batch():
    assert scaled_lr(0.004, 1024) == pytest.approx(0.004)
    assert scaled_lr(0.004, 256) == pytest.approx(0.002)
    assert scaled_lr(0.004, 16) == pytest.approx(0.004 / 8)


def test_cosine_schedule_values():
    values = cosine_schedule(1.0, 0.0, total_steps=10, warmup_steps=2, warmup_start=0.0)
    assert values.shape == (10,)
    assert values[0] == 0.0
    assert values[1] == pytest.approx(0.5)
    assert values[2] == pytest.approx(1.0)  # peak right after warm-up
    # cosine over the 8 remaining steps: t = step - 2
    for step in range(2, 10):
        expected = 0.5 * (1 + math.cos(math.pi * (step - 2) / 8))
        assert values[step] == pytest.approx(expected)


def test_teacher_temperature_linear_warmup():
    values = linear_warmup_schedule(0.04, 0.07, total_steps=10, warmup_steps=4)
    np.testing.assert_allclose(values[:4], [0.04, 0.05, 0.06, 0.07])
    np.testing.assert_allclose(values[4:], 0.07)


def test_build_schedules_at_given_steps():
    sched = build_schedules(*_sections(), global_batch=64)
    peak = 0.004 * math.sqrt(64 / 1024)
    assert sched.total_steps == 100
    first, warm, mid, last = sched.at(0), sched.at(20), sched.at(60), sched.at(99)
    assert first["lr"] == 0.0
    assert sched.at(10)["lr"] == pytest.approx(peak * 10 / 20)
    assert warm["lr"] == pytest.approx(peak)
    assert mid["lr"] == pytest.approx(
        1e-6 + 0.5 * (peak - 1e-6) * (1 + math.cos(math.pi * 40 / 80))
    )
    assert last["lr"] < 2e-5
    # last layer frozen for one epoch (10 steps), then the lr schedule
    assert [sched.at(s)["last_layer_lr"] for s in range(10)] == [0.0] * 10
    assert sched.at(10)["last_layer_lr"] == pytest.approx(sched.at(10)["lr"])
    # weight decay 0.04 -> 0.4 and momentum 0.992 -> 1 by cosine, no warm-up
    assert first["wd"] == pytest.approx(0.04)
    assert sched.at(50)["wd"] == pytest.approx(0.22)
    assert last["wd"] == pytest.approx(0.4, abs=2e-4)
    assert first["momentum"] == pytest.approx(0.992)
    assert sched.at(50)["momentum"] == pytest.approx(0.996)
    assert last["momentum"] == pytest.approx(1.0, abs=1e-5)
    # teacher temperature 0.04 -> 0.07 over 3 epochs (30 steps), then constant
    assert first["teacher_temp"] == pytest.approx(0.04)
    assert sched.at(29)["teacher_temp"] == pytest.approx(0.07)
    assert sched.at(80)["teacher_temp"] == pytest.approx(0.07)
    # past the end: the last value
    assert sched.at(10_000) == sched.at(99)


def test_warmup_longer_than_run_is_a_config_error():
    with pytest.raises(ConfigError, match="warm-up"):
        build_schedules(*_sections(warmup_epochs=20), global_batch=64)
