"""Per-step schedules of the DINOv2 recipe: lr, weight decay, teacher momentum and temperature.

Every schedule is a float64 array with one value per optimiser step, built once from the config,
so the value at step t is a pure function of t (a resumed run reads the same numbers). Steps past
the end of an array keep its last value. `optim.epochs * optim.steps_per_epoch` steps make the
whole schedule; `optim.max_steps` only stops a run early and never rescales a schedule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mammodino.errors import ConfigError
from mammodino.settings import OptimSettings, TeacherSettings

LR_REFERENCE_BATCH = 1024  # DINOv2 scales base_lr by sqrt(global batch / 1024)


def cosine_schedule(
    start: float,
    end: float,
    total_steps: int,
    warmup_steps: int = 0,
    warmup_start: float = 0.0,
) -> np.ndarray:
    """A linear warm-up warmup_start -> start over `warmup_steps`, then a cosine start -> end."""
    if total_steps <= 0:
        raise ConfigError(f"a schedule needs at least one step, got {total_steps}")
    if warmup_steps > total_steps:
        raise ConfigError(
            f"warm-up ({warmup_steps} steps) exceeds the {total_steps} steps of the run; "
            "shorten optim.warmup_epochs or add optim.epochs"
        )
    warmup = np.linspace(warmup_start, start, warmup_steps, endpoint=False)
    n_cosine = total_steps - warmup_steps
    t = np.arange(n_cosine)
    cosine = end + 0.5 * (start - end) * (1 + np.cos(np.pi * t / max(n_cosine, 1)))
    return np.concatenate([warmup, cosine]).astype(np.float64)


def linear_warmup_schedule(
    start: float, end: float, total_steps: int, warmup_steps: int
) -> np.ndarray:
    """Linear start -> end over `warmup_steps`, then constant `end` (DINOv2's teacher temp)."""
    if total_steps <= 0:
        raise ConfigError(f"a schedule needs at least one step, got {total_steps}")
    warmup_steps = min(warmup_steps, total_steps)
    ramp = np.linspace(start, end, warmup_steps) if warmup_steps else np.empty(0)
    return np.concatenate([ramp, np.full(total_steps - warmup_steps, end)]).astype(np.float64)


def scaled_lr(base_lr: float, global_batch: int) -> float:
    """Peak learning rate: base_lr * sqrt(global batch / 1024) (DINOv2's square-root scaling)."""
    return base_lr * math.sqrt(global_batch / LR_REFERENCE_BATCH)


@dataclass(frozen=True)
class Schedules:
    """All per-step schedule arrays of a run."""

    lr: np.ndarray
    last_layer_lr: np.ndarray
    weight_decay: np.ndarray
    momentum: np.ndarray
    teacher_temp: np.ndarray

    @property
    def total_steps(self) -> int:
        """Steps the schedules span."""
        return len(self.lr)

    def at(self, step: int) -> dict[str, float]:
        """Values at `step` (the last value past the end)."""
        i = min(max(step, 0), self.total_steps - 1)
        return {
            "lr": float(self.lr[i]),
            "last_layer_lr": float(self.last_layer_lr[i]),
            "wd": float(self.weight_decay[i]),
            "momentum": float(self.momentum[i]),
            "teacher_temp": float(self.teacher_temp[i]),
        }


def build_schedules(optim: OptimSettings, teacher: TeacherSettings, global_batch: int) -> Schedules:
    """The schedules of sections `optim` and `teacher` for a given global batch size."""
    per_epoch = optim.steps_per_epoch
    total = optim.epochs * per_epoch
    peak_lr = scaled_lr(optim.base_lr, global_batch)
    warmup = int(round(optim.warmup_epochs * per_epoch))
    lr_args = (peak_lr, optim.min_lr, total, warmup)
    freeze = int(round(optim.freeze_last_layer_epochs * per_epoch))
    # DINOv2: the last layer's lr schedule is the lr schedule with its first steps set to zero.
    last_layer_lr = cosine_schedule(*lr_args)
    last_layer_lr[: min(freeze, total)] = 0.0
    return Schedules(
        lr=cosine_schedule(*lr_args),
        last_layer_lr=last_layer_lr,
        weight_decay=cosine_schedule(optim.weight_decay, optim.weight_decay_end, total),
        momentum=cosine_schedule(teacher.momentum, teacher.final_momentum, total),
        teacher_temp=linear_warmup_schedule(
            teacher.warmup_temp,
            teacher.temp,
            total,
            int(round(teacher.warmup_temp_epochs * per_epoch)),
        ),
    )
