"""Prepare a cache of mammograms: breast mask, chest wall left, crop, resize, manifest.

Example:
  mammodino prepare ../shared/data/mini-mias /tmp/mias-cache --workers 2

SRC is a folder (walked recursively), one file, or a CSV with a `path` column. OUT gets
images/ (uint16 PNG), masks/ (uint8 PNG), manifest.csv, errors.csv and config.yaml. A rerun skips
files already prepared. Ids are salted hashes; no PHI is written or printed. See docs/prepare.md.
"""

from __future__ import annotations

import argparse
import sys

HELP = "prepare a cache: breast masks, chest wall left, crops, manifest.csv, errors.csv"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mammodino.settings import INTENSITY_MODES

    parser.add_argument("src", metavar="SRC", help="folder of images, one image, or a CSV list")
    parser.add_argument("out", metavar="OUT", help="cache folder (created; rerun resumes)")
    parser.add_argument("--workers", type=int, help="worker processes (default: prepare.workers)")
    parser.add_argument("--cache-size", type=int, help="long side of cached crops, pixels")
    parser.add_argument("--margin", type=float, help="crop margin, share of the breast box")
    parser.add_argument(
        "--no-crop", action="store_true", help="keep whole images (background too), not crops"
    )
    parser.add_argument("--pectoral", action="store_true", help="also write pectoral masks (MLO)")
    parser.add_argument("--voi", choices=("none", "window", "voi_lut"), help="DICOM VOI mode")
    parser.add_argument(
        "--intensity", choices=INTENSITY_MODES,
        help="stretch from background (0) to brightest tissue (1): one stretch for the data set "
        "(dataset), each image its own (image), or none",
    )  # fmt: skip
    parser.add_argument("--salt", help="salt of pseudonymous ids (else data.salt, $MAMMODINO_SALT)")
    parser.add_argument(
        "--patients", help="CSV with columns source,patient: patient of non-DICOM files"
    )
    parser.add_argument(
        "--patient-rule",
        default="auto",
        choices=("auto", "none", "mini-mias"),
        help="auto: mini-MIAS names mdbNNN pair right/left of one woman",
    )
    parser.add_argument(
        "--shards", nargs="?", const="", default=None, metavar="DIR",
        help="also write WebDataset tar shards of the cache (default DIR: OUT/shards)",
    )  # fmt: skip
    parser.add_argument("--shard-samples", type=int, default=1000, help="samples per shard")
    parser.add_argument("--strict", action="store_true", help="exit 1 when any file is skipped")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--config", help="preset name or YAML path")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")


def _settings(args: argparse.Namespace):
    from mammodino.config import load_config
    from mammodino.preprocess.pipeline import CacheOptions

    cfg = load_config(preset=args.config, overrides=args.overrides)
    section = cfg.prepare
    for key, flag in (("workers", "workers"), ("cache_size", "cache_size"), ("margin", "margin")):
        if getattr(args, flag) is not None:
            section[key] = getattr(args, flag)
    if args.voi:
        section.voi = args.voi
    if args.intensity:
        section.intensity = args.intensity
    if args.pectoral:
        section.pectoral = True
    if args.no_crop:
        section.crop = False
    return cfg, CacheOptions.from_config(cfg)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from mammodino.preprocess.intensity import NARROW_SPREAD
    from mammodino.preprocess.prepare import load_patients, run_prepare

    cfg, settings = _settings(args)
    salt = args.salt if args.salt is not None else cfg.data.salt
    out = Path(args.out)
    console = Console(stderr=True)
    bar = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=args.no_progress,
    )

    def progress(total: int):
        bar.start()  # only once there is work: an error before it prints no empty bar
        task = bar.add_task("preparing", total=total)
        return lambda: bar.advance(task)

    try:
        result = run_prepare(
            args.src,
            out,
            settings,
            workers=int(cfg.prepare.workers),
            salt=salt,
            patients=load_patients(args.patients),
            patient_rule=args.patient_rule,
            progress=progress,
        )
    finally:
        if bar.live.is_started:  # rich prints an empty line when stopping a bar never started
            bar.stop()
    if salt is not None:
        cfg.data.salt = "<set, not written>"  # the salt would let anyone re-derive the ids
    cfg.save(out / "config.yaml")
    if result.reused:
        print(f"{result.reused} already prepared by an earlier run (kept)", file=sys.stderr)
    if result.levels is not None:
        low, high = result.levels
        print(
            f"intensity: source values {low:.4g}-{high:.4g} -> 0-1 in every image", file=sys.stderr
        )
    if settings.intensity == "dataset" and result.levels is None:
        print(
            "warning: no sampled file could be measured for intensity levels: kept as read",
            file=sys.stderr,
        )
    if result.spread is not None and result.spread < NARROW_SPREAD:
        advice = (
            "the default --intensity dataset stretches them"
            if settings.intensity == "none"
            else "For Presentation DICOMs with a narrow display window may need --voi window"
        )
        print(
            f"warning: the breasts span {result.spread:.0%} of the intensity range (median image);"
            f" {advice} (docs/prepare.md, Intensity)",
            file=sys.stderr,
        )
    print(result.summary())
    if args.shards is not None:
        from mammodino.data.shards import shard_prepared_cache

        shard_dir = Path(args.shards or out / "shards")
        index = shard_prepared_cache(out, shard_dir, max_samples=args.shard_samples)
        print(f"{len(index.shards)} shards of {index.n_samples} samples in {shard_dir}")
    return 1 if args.strict and result.skipped else 0
