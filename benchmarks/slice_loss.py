"""Step time with and without the cross-slice loss at equal batch size (issue 5, acceptance 3).

    .venv/bin/python benchmarks/slice_loss.py [--repeats 5] [--configs phantom-dbt,vits14]
        [--fractions 0.25,0.5] [--device cpu|cuda] [--precision fp32|bf16]

Times the production optimiser step (`Trainer.train_step`: teacher, student, DINO + iBOT +
KoLeo, backward, clipping, AdamW, EMA) on one fixed synthetic batch in which `data.dbt_fraction`
of the samples are DBT and bring a slice pair, twice in the same process: with
`dbt.slice_loss_weight=0` (no slice objective) and with the slice objective wired in exactly as
the meta-architecture hook of docs/tomosynthesis.md does (`MammoDINOWithSlice` below: the model
class is swapped before the trainer builds its optimiser, so the slice head is trained and EMA'd
like the real thing). Timed steps alternate between the two trainers; medians of `--repeats`
after one warm-up each, plus the model FLOPs of one step of each (torch's FlopCounterMode: a
figure the machine's load does not disturb). Target: the slice loss adds <= 15% to the step time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils import flop_counter

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mammodino.train.loop as loop  # noqa: E402
from mammodino.config import load_config  # noqa: E402
from mammodino.data.mixed_sampler import dbt_per_batch  # noqa: E402
from mammodino.settings import Settings  # noqa: E402
from mammodino.train.meta_arch import MammoDINO  # noqa: E402
from mammodino.train.slice_objective import SliceObjective  # noqa: E402
from train_step import synthetic_batch  # noqa: E402  (the batch shapes of the other benchmark)

CONFIGS = {
    "phantom-dbt": ("phantom-dbt", ["monitor.every=0"]),
    "vits14": (None, ["data.batch_size=16", "monitor.every=0"]),
}


class MammoDINOWithSlice(MammoDINO):
    """MammoDINO plus the slice-loss hook proposed for meta_arch (docs/tomosynthesis.md)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.slice_objective = None
        if settings.dbt.slice_loss_weight > 0:
            self.slice_objective = SliceObjective.from_settings(
                settings.dbt,
                settings.masking.patch_tissue_threshold,
                self.student["backbone"].embed_dim,
            )
            self.slice_objective.attach(self.student, self.teacher)
            self.weights["slice"] = settings.dbt.slice_loss_weight

    def compute_losses(self, student, teacher, batch):
        """The parent's losses plus `loss/slice` (weighted into `loss`)."""
        losses = super().compute_losses(student, teacher, batch)
        if self.slice_objective is not None:
            slice_loss = self.slice_objective(
                self.student["backbone"], self.teacher["backbone"], batch
            )
            losses["loss"] = losses["loss"] + self.weights["slice"] * slice_loss
            losses["loss/slice"] = slice_loss
        return losses


def mixed_batch(cfg, fraction: float) -> dict:
    """The synthetic batch of train_step.py plus slice pairs for round(B * fraction) samples."""
    batch = synthetic_batch(cfg)
    b = int(cfg.data.batch_size)
    n_pairs = dbt_per_batch(b, fraction, b, b)
    size = int(cfg.dbt.pair_size or cfg.crops.global_size)
    n_tokens = (size // int(cfg.model.patch_size)) ** 2
    gen = torch.Generator().manual_seed(1)
    batch.update(
        slice_pairs=torch.rand(2, n_pairs, 1, size, size, generator=gen),
        slice_volume=torch.arange(n_pairs),
        slice_offset_mm=torch.ones(n_pairs),
        slice_position_mm=torch.arange(n_pairs, dtype=torch.float32),
        slice_patch_tissue=torch.ones(n_pairs, n_tokens),
    )
    return batch


def make_trainer(cfg, out: str) -> loop.Trainer:
    """A trainer whose model carries the slice hook (swapped in before the optimiser is built)."""
    original = loop.MammoDINO
    loop.MammoDINO = MammoDINOWithSlice
    try:
        return loop.Trainer(cfg, out, dataset=[None] * cfg.data.batch_size, show_progress=False)
    finally:
        loop.MammoDINO = original


def bench(name: str, fraction: float, args: argparse.Namespace) -> dict:
    """Median step seconds without and with the slice loss, same batch, alternating."""
    preset, overrides = CONFIGS[name]
    common = [
        *overrides,
        f"data.dbt_fraction={fraction}",
        f"train.device={args.device}",
        f"train.precision={args.precision}",
        *args.overrides,
    ]
    cfgs = {
        "without": load_config(preset=preset, overrides=[*common, "dbt.slice_loss_weight=0"]),
        "with": load_config(preset=preset, overrides=[*common, "dbt.slice_loss_weight=1"]),
    }
    batch = mixed_batch(cfgs["with"], fraction)
    times: dict[str, list[float]] = {"without": [], "with": []}
    with tempfile.TemporaryDirectory() as out:
        trainers = {k: make_trainer(cfg, f"{out}/{k}") for k, cfg in cfgs.items()}
        values = trainers["with"].schedules.at(trainers["with"].schedules.total_steps // 2)
        flops = {}
        for key, trainer in trainers.items():
            trainer.train_step([batch], values)  # warm-up: allocations, kernel selection
            # FLOPs do not depend on the machine's load: the compute share of the slice loss.
            with flop_counter.FlopCounterMode(display=False) as counter:
                trainer.train_step([batch], values)
            flops[key] = counter.get_total_flops()
        for _ in range(args.repeats):
            for key, trainer in trainers.items():
                _sync(args.device)
                start = time.perf_counter()
                result = trainer.train_step([batch], values)
                _sync(args.device)
                times[key].append(time.perf_counter() - start)
        assert "loss/slice" in result.losses, "the slice objective did not run"
    medians = {k: statistics.median(v) for k, v in times.items()}
    return {
        "config": name,
        "batch": int(cfgs["with"].data.batch_size),
        "pairs": int(batch["slice_pairs"].shape[1]),
        "pair_size": int(batch["slice_pairs"].shape[-1]),
        **medians,
        "overhead": medians["with"] / medians["without"] - 1.0,
        "gflop": {k: v / 1e9 for k, v in flops.items()},
        "flop_overhead": flops["with"] / flops["without"] - 1.0,
    }


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads on CPU")
    parser.add_argument("--configs", default="phantom-dbt")
    parser.add_argument("--fractions", default="0.25,0.5")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("overrides", nargs="*", help="key=value config overrides for both runs")
    args = parser.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"{os.cpu_count()} CPUs"
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {where}, "
        f"{args.precision} (shared machine on CPU: other jobs run at the same time; noisy)"
    )
    for name in args.configs.split(","):
        for fraction in (float(f) for f in args.fractions.split(",")):
            row = bench(name, fraction, args)
            verdict = "ok" if row["overhead"] <= 0.15 else "ABOVE 15%"
            print(
                f"  {row['config']:11s} batch {row['batch']:3d} dbt_fraction {fraction:.2f} "
                f"({row['pairs']} pairs at {row['pair_size']} px): without {row['without']:.3f} "
                f"s/step, with {row['with']:.3f} s/step: +{row['overhead']:.1%} ({verdict}); "
                f"FLOPs {row['gflop']['without']:.1f} -> {row['gflop']['with']:.1f} GFLOP/step: "
                f"+{row['flop_overhead']:.1%}"
            )


if __name__ == "__main__":
    main()
