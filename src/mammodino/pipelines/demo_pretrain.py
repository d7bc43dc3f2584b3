"""The demo's pretraining runs: each in a child process, watched for its pace.

A child process gets the CPU allocator settings (GLIBC_TUNABLES, read only at process start) and
returns its memory when done; it runs what `mammodino pretrain` runs and prints the same lines.
"""

from __future__ import annotations

import datetime
import json
import multiprocessing
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mammodino.errors import MammodinoError

MIN_PACE_STEPS = 8  # steps between the two sightings that time a run (polled once a second)


def last_step(run: Path) -> int:
    """The last step a run logged (0 before its first record)."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        return 0
    lines = path.read_text().splitlines()
    steps = [json.loads(line).get("step", 0) for line in lines if line.strip()]
    return int(max(steps, default=0))


def _pretrain(preset: str, overrides: list[str], run: str, resume: bool, progress: bool) -> None:
    """The child process: the pretraining of `mammodino pretrain`, with its console lines."""
    from mammodino.config import load_config
    from mammodino.train.distributed_trainer import train
    from mammodino.train.hardware import resolve_device, resolve_hardware_defaults
    from mammodino.train.loop import summary_lines

    try:
        cfg = load_config(preset=preset, overrides=overrides)
        device = resolve_device(str(cfg.train.device))
        for line in resolve_hardware_defaults(cfg, device):  # also written to RUN/config.yaml
            print(line, flush=True)
        record = train(cfg, run, resume=resume, show_progress=progress)
    except MammodinoError as err:
        print(f"mammodino pretrain: error: {err}", file=sys.stderr)
        sys.exit(1)
    print("\n".join(summary_lines(run, record, device)), flush=True)


@contextmanager
def _glibc_tunables(preset: str, overrides: list[str]) -> Iterator[None]:
    """GLIBC_TUNABLES set while a child starts, where a CPU run wants them (train.hardware)."""
    from mammodino.config import load_config
    from mammodino.train.hardware import malloc_tunables, resolve_device

    cfg = load_config(preset=preset, overrides=overrides)
    before = os.environ.get("GLIBC_TUNABLES")
    device = resolve_device(str(cfg.train.device))
    tunables = malloc_tunables(bool(cfg.train.malloc_tunables), device, before or "")
    if tunables is None:
        yield
        return
    os.environ["GLIBC_TUNABLES"] = tunables
    try:
        yield
    finally:
        if before is None:
            del os.environ["GLIBC_TUNABLES"]
        else:
            os.environ["GLIBC_TUNABLES"] = before


def run_pretraining(
    run: Path,
    preset: str,
    overrides: list[str],
    steps: int,
    progress: bool,
    runs_left: int = 0,
    log=print,
) -> None:
    """One pretraining run in a child process (resumed when `run` has a checkpoint); logs the run's
    pace and an ETA once its first steps are logged."""
    resume = (run / "checkpoints" / "last.pt").is_file()
    # spawn: a fresh interpreter (forking a process that holds torch's threads is unsafe).
    context = multiprocessing.get_context("spawn")
    args = (preset, overrides, str(run), resume, progress)
    child = context.Process(target=_pretrain, args=args, name=f"pretrain {run.name}")
    with _glibc_tunables(preset, overrides):
        child.start()
    pace = PaceWatch(run / "metrics.jsonl", steps, runs_left)
    while child.is_alive():
        child.join(1.0)
        if (line := pace.check()) is not None:
            log(f"[demo] pretrain {run.name}: {line}")
    if child.exitcode != 0:
        raise MammodinoError(
            f"demo pretraining {run.name!r} failed with exit code {child.exitcode}"
        )


class PaceWatch:
    """Watches a run's metrics.jsonl; once two logged steps are seen, gives one line with the
    seconds per step and when this run (and `runs_left` more of the same length) will end."""

    def __init__(self, metrics: Path, steps: int, runs_left: int = 0) -> None:
        self.metrics, self.steps, self.runs_left = metrics, steps, runs_left
        self.first: tuple[int, float] | None = None
        self.done = False

    def check(self, now: float | None = None) -> str | None:
        """The pace line the first time it can be computed, else None."""
        if self.done or not self.metrics.is_file():
            return None
        now = time.monotonic() if now is None else now
        step = last_step(self.metrics.parent)
        if step <= 0 or step >= self.steps:
            return None
        if self.first is None or step < self.first[0] + MIN_PACE_STEPS:
            self.first = self.first or (step, now)
            return None
        self.done = True
        per_step = (now - self.first[1]) / (step - self.first[0])
        left = per_step * ((self.steps - step) + self.runs_left * self.steps)
        end = datetime.datetime.now() + datetime.timedelta(seconds=left)
        both = f" and {self.runs_left} more run(s) of as many steps" if self.runs_left else ""
        return (
            f"{per_step:.2f} s/step at step {step}/{self.steps}: this run{both} "
            f"done in about {left / 60:.1f} min (ETA {end:%H:%M})"
        )
