"""The demo's settings and its folder: where each stage writes, and the stage runner that skips
a stage whose output exists and times the others."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class DemoSettings:
    """Sizes and step counts of one demo (defaults: ~5 minutes on 2 idle CPU cores in fp32)."""

    n_ffdm: int = 400  # 100 women: 95% intervals of about +-0.05 on density (96 gave +-0.1)
    n_dbt: int = 8
    ffdm_shape: tuple[int, int] = (384, 300)
    dbt_shape: tuple[int, int, int] = (12, 256, 200)
    cache_size: int = 256
    steps: int | None = None  # pretraining steps of each run; None: the preset's whole schedule
    precision: str | None = None  # train.precision (auto | fp32 | bf16); None: the preset's
    image_size: int | None = None  # embedding side; None: the side the backbones trained at
    folds: int = 5
    n_boot: int = 300
    # Fixed C: choosing it by inner CV takes 20x longer (12 CV runs would not fit the budget).
    logreg_C: float | None = 0.1
    seed: int = 0
    config: str = "demo"
    overrides: list[str] = field(default_factory=list)  # extra pretraining overrides (tests)
    progress: bool = True

    def embed_size(self) -> int:
        """`image_size`, else the pretraining's global crop side (random init has no trained size
        of its own, so the preset's is read rather than kept here a second time)."""
        if self.image_size:
            return self.image_size
        from mammodino.config import load_config

        return int(load_config(preset=self.config, overrides=self.overrides).crops.global_size)


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
