"""What a pretraining run amounts to, read from its own files: steps, images seen, time.

The report and `mammodino demo` show these next to every comparison, and flag a run too short
for its features to say anything about the method (a few steps leave a network near its
random initialisation, so two such runs look alike whatever their recipes).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from mammodino.errors import ConfigError

# Below this many optimiser steps a run is flagged as too short to compare.
SHORT_RUN_STEPS = 50


@dataclass
class RunFacts:
    """Steps, images seen (one process) and the summed wall time of the logged steps."""

    name: str
    steps: int
    images_seen: int
    step_seconds: float
    curve_points: int  # logged records with a loss: the points of the loss curve

    @property
    def too_short(self) -> bool:
        return self.steps < SHORT_RUN_STEPS

    def summary(self) -> str:
        """One line: 'mammodino: 160 steps, 2,560 images, 2.4 min'."""
        text = (
            f"{self.name}: {self.steps} steps, {self.images_seen:,} images seen, "
            f"{format_minutes(self.step_seconds)} of training steps"
        )
        if self.too_short:
            text += f" (too short to compare: fewer than {SHORT_RUN_STEPS} steps)"
        return text


def format_minutes(seconds: float) -> str:
    """'42 s' below two minutes, else '3.5 min'."""
    if not math.isfinite(seconds):
        return "-"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _images_per_step(run: Path) -> int:
    """data.batch_size x optim.accumulate_steps of the run's config.yaml (1 when it has none)."""
    import yaml

    path = run / "config.yaml"
    if not path.is_file():
        return 1
    cfg = yaml.safe_load(path.read_text())
    try:  # pretrain writes the resolved config: both keys are always there
        return int(cfg["data"]["batch_size"]) * int(cfg["optim"]["accumulate_steps"])
    except (KeyError, TypeError, ValueError):
        raise ConfigError(
            f"{path}: no whole data.batch_size and optim.accumulate_steps: "
            "not the config a pretraining run writes"
        ) from None


def run_facts(run: Path, name: str | None = None) -> RunFacts | None:
    """The facts of one run folder, or None when it has no metrics.jsonl.

    The time is the sum of the logged steps' own durations (each record's samples/s covers the
    steps since the previous record): start-up, kNN monitor and checkpoint writes are left out,
    so it compares runs on machines of different loads better than a stopwatch would.
    """
    run = Path(run)
    path = run / "metrics.jsonl"
    if not path.is_file():
        return None
    per_step = _images_per_step(run)
    steps, previous, seconds, points = 0, 0, 0.0, 0
    for record in _records(path):
        step = int(record["step"])  # every record the loop writes has its step
        rate = record.get("samples_per_s")
        if isinstance(rate, int | float) and rate > 0 and step > previous:
            seconds += (step - previous) * per_step / rate
        if "loss" in record:
            points += 1
        previous = max(previous, step)
        steps = max(steps, step)
    return RunFacts(name or run.name, steps, steps * per_step, seconds, points)
