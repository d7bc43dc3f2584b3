"""What a run tells its user: `RUN/metrics.jsonl` (one JSON object per logged step) and a rich
progress bar with step, loss, samples/s and ETA."""

from __future__ import annotations

import datetime
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)


def _json_value(value: Any) -> Any:
    """Numbers as plain floats; non-finite ones as strings (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsLog:
    """Appends one JSON line per logged step; on resume, drops lines past the checkpoint's step."""

    def __init__(self, path: str | Path, resume_step: int | None = None) -> None:
        self.path = Path(path)
        if resume_step is not None and self.path.is_file():
            # Steps logged after the checkpoint we resume from will be run (and logged) again.
            kept = [
                line
                for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= resume_step
            ]
            self.path.write_text("".join(f"{line}\n" for line in kept))
        elif resume_step is None:
            self.path.write_text("")

    def write(self, record: dict[str, Any]) -> None:
        """Append one record (flushed at once, so `tail -f` and crashes see it)."""
        with self.path.open("a") as handle:
            handle.write(json.dumps({k: _json_value(v) for k, v in record.items()}) + "\n")


class ProgressDisplay:
    """A progress bar over optimiser steps: step, loss, samples/s and ETA from the first step on.

    Rate and ETA come from this session's own clock (steps done since the bar started), not
    rich's speed window, which shows no ETA while a slow run makes less than a step in 30 s.
    """

    def __init__(
        self, total_steps: int, start_step: int, enabled: bool = True, samples_per_step: int = 1
    ) -> None:
        self.console = Console(stderr=True)
        self.total, self.start_step = total_steps, start_step
        self.samples_per_step = samples_per_step
        self.started = time.monotonic()  # reset by __enter__: the clock of rate and ETA
        self.progress = Progress(
            TextColumn("[bold]pretrain step"),
            MofNCompleteColumn(),
            BarColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[rate]} samples/s"),
            TimeElapsedColumn(),
            TextColumn("ETA {task.fields[eta]}"),
            console=self.console,
            disable=not enabled,
            transient=not sys.stderr.isatty(),
        )
        self.task = self.progress.add_task(
            "pretrain", total=total_steps, completed=start_step, loss="-", rate="-", eta="-:--:--"
        )

    def __enter__(self) -> ProgressDisplay:
        self.started = time.monotonic()
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def update(self, step: int, loss: float | None = None) -> None:
        """Move the bar to `step`; show its loss and the samples/s and ETA so far."""
        fields = self.rate_and_eta(step, time.monotonic() - self.started)
        if loss is not None:
            fields["loss"] = f"{loss:.4f}"
        self.progress.update(self.task, completed=step, **fields)

    def rate_and_eta(self, step: int, seconds: float) -> dict[str, str]:
        """samples/s and the remaining time (H:MM:SS) after `seconds` of this session."""
        done = step - self.start_step
        if done <= 0 or seconds <= 0:
            return {}
        per_step = seconds / done
        eta = datetime.timedelta(seconds=round(per_step * max(0, self.total - step)))
        return {"rate": f"{self.samples_per_step / per_step:.1f}", "eta": str(eta)}

    def warn(self, message: str) -> None:
        """A one-line warning above the bar."""
        self.console.print(f"[yellow]warning:[/yellow] {message}")
