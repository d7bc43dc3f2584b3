"""What a run tells its user: `RUN/metrics.jsonl` (one JSON object per logged step) and a rich
progress bar with loss, samples/s and ETA."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
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
    """A progress bar over optimiser steps showing loss and samples/s (rich; quiet when off)."""

    def __init__(self, total_steps: int, start_step: int, enabled: bool = True) -> None:
        self.console = Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]pretrain"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[rate]} samples/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            disable=not enabled,
            transient=not sys.stderr.isatty(),
        )
        self.task = self.progress.add_task(
            "pretrain", total=total_steps, completed=start_step, loss="-", rate="-"
        )

    def __enter__(self) -> ProgressDisplay:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def update(self, step: int, loss: float | None = None, rate: float | None = None) -> None:
        """Move the bar to `step`; refresh the shown loss and samples/s when given."""
        fields = {}
        if loss is not None:
            fields["loss"] = f"{loss:.4f}"
        if rate is not None:
            fields["rate"] = f"{rate:.1f}"
        self.progress.update(self.task, completed=step, **fields)

    def warn(self, message: str) -> None:
        """A one-line warning above the bar."""
        self.console.print(f"[yellow]warning:[/yellow] {message}")
