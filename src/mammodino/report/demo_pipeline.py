"""The stages of `mammodino demo`: phantom -> cache -> two pretrainings -> features -> CV -> report.

Every stage writes into the demo folder and is skipped when its output already exists, so a rerun
resumes where an interrupted one stopped. Pretraining runs as a child process (`python -m
mammodino pretrain`) so it gets the CPU allocator settings and returns its memory when done.
Both pretraining runs make the same fixed number of steps on every machine (the preset's
schedule, or `steps`): a slow machine takes longer instead of comparing two barely trained
networks. An ETA is printed from the first logged steps of each run.
"""

from __future__ import annotations

import csv
import datetime
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mammodino.errors import EvaluationError, MammodinoError

TASKS = ("density", "lesion_present", "malignancy")
BACKBONES = ("mammodino", "dinov2-recipe", "random-init", "handcrafted")
SKIPPED_NAME = "skipped.json"
BASELINE_OVERRIDES = ("crops.sampler=random", "masking.mode=random", "dbt.slice_loss_weight=0")


CURVE_POINTS = 28  # logged records per run: enough points for the report's loss curves
MIN_PACE_STEPS = 8  # steps between the two sightings that time a run (polled once a second)


@dataclass
class DemoSettings:
    """Sizes and step counts of one demo (defaults: ~8 minutes on 2 CPU cores in fp32)."""

    n_ffdm: int = 96
    n_dbt: int = 8
    ffdm_shape: tuple[int, int] = (384, 300)
    dbt_shape: tuple[int, int, int] = (12, 256, 200)
    cache_size: int = 256
    steps: int | None = None  # pretraining steps of each run; None: the preset's whole schedule
    precision: str | None = None  # train.precision (auto | fp32 | bf16); None: the preset's
    image_size: int = 160  # whole mammograms are embedded at this side
    folds: int = 5
    n_boot: int = 300
    # Fixed C: choosing it by inner CV takes 20x longer (12 CV runs would not fit the budget).
    logreg_C: float | None = 0.1
    seed: int = 0
    config: str = "demo"
    overrides: list[str] = field(default_factory=list)  # extra pretraining overrides (tests)
    progress: bool = True


@dataclass
class Demo:
    """Paths of one demo folder and the time each stage took."""

    out: Path
    settings: DemoSettings
    timings: dict[str, float] = field(default_factory=dict)
    log: Callable[[str], None] = print

    phantom = property(lambda self: self.out / "phantom")
    cache = property(lambda self: self.out / "cache")
    eval_cache = property(lambda self: self.out / "cache-ffdm")
    labels = property(lambda self: self.out / "labels.csv")
    runs = property(lambda self: self.out / "runs")
    feats = property(lambda self: self.out / "features")

    def stage(self, name: str, done: bool, work: Callable[[], None]) -> None:
        """Run one stage unless its output exists; record its wall time."""
        if done:
            self.log(f"[demo] {name}: done earlier, skipped")
            self.timings[name] = 0.0
            return
        self.log(f"[demo] {name} ...")
        start = time.monotonic()
        work()
        self.timings[name] = time.monotonic() - start
        self.log(f"[demo] {name}: {self.timings[name]:.0f} s")

    def cli(self, *argv: str) -> None:
        """One `mammodino` subcommand in this process (fails loudly)."""
        from mammodino.cli import main

        if main([str(a) for a in argv]) != 0:
            raise MammodinoError(f"demo stage `mammodino {argv[0]}` failed (see above)")


def write_eval_cache(cache: Path, out: Path) -> None:
    """A view of the cache with the FFDM images only (DBT slices pretrain but are not cases to
    classify: 12 slices of one volume would outvote the 2-D images)."""
    with (cache / "manifest.csv").open(newline="") as fh:
        reader = csv.DictReader(fh)
        rows = [r for r in reader if not r.get("slice_index")]
        columns = reader.fieldnames or []
    out.mkdir(parents=True, exist_ok=True)
    for sub in ("images", "masks"):
        link = out / sub
        if not link.exists():
            link.symlink_to(os.path.relpath(cache / sub, out), target_is_directory=True)
    tmp = out / "manifest.csv.tmp"
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(out / "manifest.csv")


def write_labels(phantom_labels: Path, out: Path) -> None:
    """Phantom labels plus `malignancy`: malignant among breasts with a lesion, empty (left out)
    for lesion-free ones, so the task is benign vs malignant as in the clinic."""
    with phantom_labels.open(newline="") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        columns = [*(reader.fieldnames or []), "malignancy"]
    for r in rows:
        r["malignancy"] = r["malignant"] if r["lesion_present"] == "1" else ""
    with out.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def _last_step(run: Path) -> int:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return 0
    lines = path.read_text().splitlines()
    steps = [json.loads(line).get("step", 0) for line in lines if line.strip()]
    return int(max(steps, default=0))


def step_overrides(settings: DemoSettings) -> tuple[int, list[str]]:
    """The number of steps of each run and the overrides that make it so: `steps` rescales the
    preset's epochs (warm-ups keep their share of the run), and the log interval gives the
    curves about CURVE_POINTS points whatever the length."""
    from mammodino.config import load_config

    optim = load_config(preset=settings.config).optim
    epochs = int(optim.epochs)
    steps = int(settings.steps or epochs * int(optim.steps_per_epoch))
    overrides = [
        f"optim.steps_per_epoch={math.ceil(steps / epochs)}",
        f"optim.max_steps={steps}",
        f"train.log_every={max(1, steps // CURVE_POINTS)}",
    ]
    if settings.precision:
        overrides.append(f"train.precision={settings.precision}")
    return steps, overrides


def _pretrained(run: Path, steps: int) -> bool:
    return (run / "checkpoints" / "last.pt").is_file() and _last_step(run) >= steps


def pretrain(demo: Demo, name: str, extra: list[str], steps: int, runs_left: int = 0) -> None:
    """One pretraining run as a child process (resumed when an earlier demo was interrupted);
    prints the run's pace and an ETA once its first steps are logged."""
    s = demo.settings
    run = demo.runs / name
    args = [
        sys.executable, "-m", "mammodino", "pretrain", "--config", s.config, "--output-dir", str(run),
        f"data.source={demo.cache}", f"monitor.source={demo.eval_cache}",
        f"monitor.labels={demo.labels}", f"train.seed={s.seed}", *extra, *s.overrides,
    ]  # fmt: skip
    if not s.progress:
        args.insert(4, "--no-progress")
    if (run / "checkpoints" / "last.pt").is_file():
        args.insert(4, "--resume")
    child = subprocess.Popen(args)
    pace = PaceWatch(run / "metrics.jsonl", steps, runs_left)
    while child.poll() is None:
        time.sleep(1.0)
        if (line := pace.check()) is not None:
            demo.log(f"[demo] pretrain {name}: {line}")
    if child.returncode != 0:
        raise MammodinoError(f"demo pretraining {name!r} failed with exit code {child.returncode}")


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
        step = _last_step(self.metrics.parent)
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


def _finished(out: Path) -> bool:
    return (out / "results.json").is_file() or (out / SKIPPED_NAME).is_file()


def evaluate_all(demo: Demo, backbone: str) -> None:
    """Patient-level CV of every task (kNN + logreg) and localization for one backbone."""
    from mammodino.eval.evaluate import EvalSettings, evaluate, write_results

    s = demo.settings
    feats = demo.feats / backbone
    for task in (*TASKS, None):
        out = demo.runs / "mammodino" / "eval" / (task or "localization") / backbone
        if _finished(out):
            continue
        settings = EvalSettings(
            task=task,
            protocols=["knn", "logreg"],
            folds=s.folds,
            seed=s.seed,
            n_boot=s.n_boot,
            knn_k=10,
            logreg_C=s.logreg_C,
            knn_standardise=backbone == "handcrafted",
            localization=task is None,
            positive="1" if task in ("lesion_present", "malignancy") else None,
        )
        try:
            results, predictions, arrays = evaluate(feats, demo.labels, settings)
        except (EvaluationError, ValueError) as err:
            # Too few cases of a class for the folds (tiny sets): say so, keep the other tasks.
            demo.log(f"[demo] {task or 'localization'} of {backbone} skipped: {err}")
            out.mkdir(parents=True, exist_ok=True)
            (out / SKIPPED_NAME).write_text(json.dumps({"reason": str(err)}))
            continue
        write_results(out, results, predictions, arrays)


def run_demo(out: Path, settings: DemoSettings, log: Callable[[str], None] = print) -> Demo:
    """Every stage in order (each skipped when done); returns the demo with its stage timings."""
    from mammodino.eval.handcrafted import extract_handcrafted

    s = settings
    demo = Demo(Path(out), s, log=log)
    demo.out.mkdir(parents=True, exist_ok=True)
    demo.stage(
        "synth",
        (demo.phantom / "labels.csv").is_file(),
        lambda: demo.cli(
            "synth", demo.phantom, "--ffdm", s.n_ffdm, "--dbt", s.n_dbt, "--seed", s.seed,
            "--ffdm-shape", *s.ffdm_shape, "--dbt-shape", *s.dbt_shape, "--workers", 2,
        ),
    )  # fmt: skip
    demo.stage(
        "prepare",
        (demo.cache / "manifest.csv").is_file(),
        lambda: demo.cli(
            "prepare", demo.phantom, demo.cache, "--workers", 2, "--cache-size", s.cache_size,
            "--no-progress",
        ),
    )  # fmt: skip
    write_eval_cache(demo.cache, demo.eval_cache)
    write_labels(demo.phantom / "labels.csv", demo.labels)
    # Equal compute: both runs make the same fixed number of steps (a wall-time budget would
    # give a slow or shared machine two barely trained, indistinguishable networks).
    steps, budget = step_overrides(s)
    main_run = demo.runs / "mammodino"
    demo.stage(
        "pretrain mammodino",
        _pretrained(main_run, steps),
        lambda: pretrain(demo, "mammodino", budget, steps, runs_left=1),
    )
    demo.stage(
        "pretrain dinov2-recipe",
        _pretrained(demo.runs / "dinov2-recipe", steps),
        lambda: pretrain(demo, "dinov2-recipe", [*BASELINE_OVERRIDES, *budget], steps),
    )
    weights = {
        "mammodino": str(main_run),
        "dinov2-recipe": str(demo.runs / "dinov2-recipe"),
        "random-init": _random_spec(main_run),
    }
    for name, spec in weights.items():
        demo.stage(
            f"embed {name}",
            (demo.feats / name / "features.npz").is_file(),
            lambda spec=spec, name=name: demo.cli(
                "embed", "--weights", spec, "--input", demo.eval_cache, "--output",
                demo.feats / name, "--image-size", s.image_size, "--patch-grid", "--no-progress",
            ),
        )  # fmt: skip
    demo.stage(
        "hand-crafted features",
        (demo.feats / "handcrafted" / "features.npz").is_file(),
        lambda: extract_handcrafted(demo.eval_cache, demo.feats / "handcrafted"),
    )
    for name in BACKBONES:
        done = all(_finished(main_run / "eval" / t / name) for t in (*TASKS, "localization"))
        demo.stage(f"evaluate {name}", done, lambda name=name: evaluate_all(demo, name))
    return demo


def _random_spec(run: Path) -> str:
    """`random:ARCH/PATCH` of the run's architecture (the random-init baseline)."""
    from mammodino.config import load_config

    cfg = load_config(preset=run / "config.yaml")
    return f"random:{cfg.model.arch}/{cfg.model.patch_size}"
