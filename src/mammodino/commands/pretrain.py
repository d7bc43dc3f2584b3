"""Pretrain a ViT with MammoDINO (DINOv2 + tissue-aware crops and masks) on CPU or GPUs.

  mammodino pretrain --config tiny-cpu --output-dir RUN data.source=CACHE [key=value ...]
  mammodino pretrain --output-dir RUN --resume [optim.max_steps=N ...]
  torchrun --nproc_per_node N -m mammodino pretrain ...   (DDP / FSDP2; only rank 0 prints)

data.source is a prepared cache, an image folder or shards (prepare --shards; streamed).
model.init=PATH model.init_warmup_steps=K continues from a DINOv2/RAD-DINO/timm/our backbone.

Writes RUN/config.yaml (the resolved config), RUN/metrics.jsonl (one JSON object per logged
step) and RUN/checkpoints/ (step_*.pt, last.pt). --resume continues from RUN/checkpoints/last.pt
exactly (same data order, RNG and schedules); without --config it reads RUN/config.yaml.
Plain DINOv2 baseline: crops.sampler=random masking.mode=random dbt.slice_loss_weight=0.
See docs/pretrain.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HELP = "pretrain a ViT with MammoDINO (self-supervised) from a prepared cache or image folder"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", default=None, help="preset name (tiny-cpu, vits14, ...) or YAML path"
    )
    parser.add_argument("--output-dir", required=True, type=Path, help="run folder (RUN)")
    parser.add_argument(
        "--resume", action="store_true", help="continue RUN from its last checkpoint"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")


def _reexec_with_malloc_tunables(tunables: str) -> None:
    """Restart this command with GLIBC_TUNABLES set (when run as `mammodino pretrain`)."""
    if len(sys.argv) > 1 and sys.argv[1] == "pretrain":
        env = dict(os.environ, GLIBC_TUNABLES=tunables)
        os.execve(sys.executable, [sys.executable, "-m", "mammodino", *sys.argv[1:]], env)


def run(args: argparse.Namespace) -> int:
    from mammodino.config import load_config
    from mammodino.errors import ConfigError

    preset = args.config
    if preset is None:
        saved = args.output_dir / "config.yaml"
        if not (args.resume and saved.is_file()):
            raise ConfigError("give --config (a preset or YAML), or --resume a run that has one")
        preset = saved
    cfg = load_config(preset=preset, overrides=args.overrides)

    from mammodino.train.distributed_trainer import train  # torchrun: DDP/FSDP2; else 1 process
    from mammodino.train.hardware import (
        malloc_tunables,
        resolve_device,
        resolve_hardware_defaults,
    )
    from mammodino.train.loop import summary_lines

    device = resolve_device(str(cfg.train.device))
    tunables = malloc_tunables(
        bool(cfg.train.malloc_tunables), device, os.environ.get("GLIBC_TUNABLES", "")
    )
    if tunables is not None:
        _reexec_with_malloc_tunables(tunables)
    main_rank = int(os.environ.get("RANK", "0")) == 0
    for line in resolve_hardware_defaults(cfg, device):  # also written to RUN/config.yaml
        if main_rank:
            print(line, flush=True)
    record = train(cfg, args.output_dir, resume=args.resume, show_progress=not args.no_progress)
    if main_rank:
        print("\n".join(summary_lines(args.output_dir, record, device)), flush=True)
    return 0
