"""`mammodino demo` as a pipeline: phantom -> cache -> two pretrainings -> features -> CV.

Every stage writes into the demo folder and is skipped when its output already exists, so a rerun
resumes where an interrupted one stopped. Both pretraining runs make the same fixed number of
steps on every machine (the preset's schedule, or `steps`): a slow machine takes longer instead
of comparing two barely trained networks. The command then builds the report (report/).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mammodino.pipelines import demo_stages as stages
from mammodino.pipelines.demo_folder import Demo, DemoSettings
from mammodino.pipelines.demo_pretrain import last_step, run_pretraining
from mammodino.pipelines.demo_stages import TASKS, finished, write_eval_cache, write_labels

BACKBONES = ("mammodino", "dinov2-recipe", "random-init", "handcrafted")
BASELINE_OVERRIDES = ("crops.sampler=random", "masking.mode=random", "dbt.slice_loss_weight=0")
CURVE_POINTS = 28  # logged records per run: enough points for the report's loss curves
# Warm-ups given in epochs: rescaled with the schedule so each keeps its share of the run.
EPOCH_KEYS = (
    ("optim", "warmup_epochs"), ("optim", "freeze_last_layer_epochs"),
    ("teacher", "warmup_temp_epochs"),
)  # fmt: skip


def _pretrain(demo: Demo, name: str, extra: list[str], steps: int, runs_left: int = 0) -> None:
    """One pretraining run on the demo's cache, monitored on its FFDM images."""
    s = demo.settings
    overrides = [
        f"data.source={demo.cache}", f"monitor.source={demo.eval_cache}",
        f"monitor.labels={demo.labels}", f"train.seed={s.seed}", *extra, *s.overrides,
    ]  # fmt: skip
    run_pretraining(demo.runs / name, s.config, overrides, steps, s.progress, runs_left, demo.log)


def step_overrides(settings: DemoSettings) -> tuple[int, list[str]]:
    """The number of steps of each run and the overrides that make it so: `steps` rescales the
    preset's schedule to exactly that many steps (warm-ups keep their share of the run), and the
    log interval gives the curves about CURVE_POINTS points whatever the length."""
    from mammodino.config import load_config

    cfg = load_config(preset=settings.config, overrides=settings.overrides)
    epochs = int(cfg.optim.epochs)
    steps = int(settings.steps or epochs * int(cfg.optim.steps_per_epoch))
    if steps % epochs == 0:
        schedule = [f"optim.steps_per_epoch={steps // epochs}"]
    else:
        # Whole epochs cannot make `steps`; one-step epochs can. A schedule longer than the run
        # would stop it mid-schedule, unjudged by the end-of-run health check.
        scale = steps / epochs
        schedule = [f"optim.epochs={steps}", "optim.steps_per_epoch=1"] + [
            f"{section}.{key}={float(cfg[section][key]) * scale!r}" for section, key in EPOCH_KEYS
        ]
    overrides = [
        *schedule,
        f"optim.max_steps={steps}",
        f"train.log_every={max(1, steps // CURVE_POINTS)}",
    ]
    if settings.precision:
        overrides.append(f"train.precision={settings.precision}")
    return steps, overrides


def _pretrained(run: Path, steps: int) -> bool:
    return (run / "checkpoints" / "last.pt").is_file() and last_step(run) >= steps


def run_demo(out: Path, settings: DemoSettings, log: Callable[[str], None] = print) -> Demo:
    """Every stage in order (each skipped when done); returns the demo with its stage timings."""
    from mammodino.eval.handcrafted import extract_handcrafted
    from mammodino.preprocess.cache import is_prepared_cache

    demo = Demo(Path(out), settings, log=log)
    demo.out.mkdir(parents=True, exist_ok=True)
    demo.stage("synth", (demo.phantom / "labels.csv").is_file(), lambda: stages.synthesize(demo))
    demo.stage("prepare", is_prepared_cache(demo.cache), lambda: stages.prepare(demo))
    write_eval_cache(demo.cache, demo.eval_cache)
    write_labels(demo.phantom / "labels.csv", demo.labels)
    # Equal compute: both runs make the same fixed number of steps (a wall-time budget would
    # give a slow or shared machine two barely trained, indistinguishable networks).
    steps, budget = step_overrides(settings)
    main_run = demo.runs / "mammodino"
    demo.stage(
        "pretrain mammodino",
        _pretrained(main_run, steps),
        lambda: _pretrain(demo, "mammodino", budget, steps, runs_left=1),
    )
    demo.stage(
        "pretrain dinov2-recipe",
        _pretrained(demo.runs / "dinov2-recipe", steps),
        lambda: _pretrain(demo, "dinov2-recipe", [*BASELINE_OVERRIDES, *budget], steps),
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
            lambda spec=spec, name=name: stages.embed(demo, name, spec),
        )
    demo.stage(
        "hand-crafted features",
        (demo.feats / "handcrafted" / "features.npz").is_file(),
        lambda: extract_handcrafted(demo.eval_cache, demo.feats / "handcrafted"),
    )
    for name in BACKBONES:
        done = all(finished(main_run / "eval" / t / name) for t in (*TASKS, "localization"))
        demo.stage(f"evaluate {name}", done, lambda name=name: stages.evaluate_all(demo, name))
    return demo


def _random_spec(run: Path) -> str:
    """`random:ARCH/PATCH` of the run's architecture (the random-init baseline)."""
    from mammodino.config import load_config

    cfg = load_config(preset=run / "config.yaml")
    return f"random:{cfg.model.arch}/{cfg.model.patch_size}"
