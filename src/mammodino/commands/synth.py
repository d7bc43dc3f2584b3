"""Generate synthetic breast phantoms: FFDM and DBT DICOM files with labels and lesion boxes.

Examples:
  mammodino synth OUT --ffdm 200 --dbt 20 --seed 0 --preview
  mammodino synth OUT --ffdm 16 --dbt 2 --ffdm-shape 256 200 --dbt-shape 16 128 100   # small

Writes OUT/ffdm/*.dcm (Digital Mammography For Presentation), OUT/dbt/*.dcm (multi-frame Breast
Tomosynthesis), OUT/labels.csv (one row per file), OUT/lesions.csv (one row per lesion) and, with
--preview, OUT/preview.png. The same seed gives identical pixels. See docs/phantom.md.
"""

from __future__ import annotations

import argparse

HELP = "synthetic breast phantoms: FFDM + DBT DICOM with density, lesion labels and boxes"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", metavar="OUT", help="output folder")
    parser.add_argument(
        "--ffdm", type=int, default=16, help="number of FFDM images (4 per patient)"
    )
    parser.add_argument("--dbt", type=int, default=4, help="number of DBT volumes (4 per patient)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--ffdm-shape", type=int, nargs=2, default=[1024, 800], metavar=("ROWS", "COLS")
    )
    parser.add_argument(
        "--dbt-shape", type=int, nargs=3, default=[40, 512, 400], metavar=("SLICES", "ROWS", "COLS")
    )
    parser.add_argument("--bits", type=int, choices=(12, 14), default=12, help="bits stored")
    parser.add_argument(
        "--lesion-fraction", type=float, default=0.5, help="share of breasts with a lesion"
    )
    parser.add_argument("--arc", type=float, default=15.0, help="DBT sweep in degrees (total)")
    parser.add_argument("--views", type=int, default=15, help="DBT projections")
    parser.add_argument(
        "--workers", type=int, default=None, help="processes (default: CPU count, max 8)"
    )
    parser.add_argument("--preview", action="store_true", help="also write OUT/preview.png")


def run(args: argparse.Namespace) -> int:
    import os

    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from mammodino.errors import ConfigError
    from mammodino.synth.dataset import SynthSettings, generate, plan
    from mammodino.synth.dbt import DbtSettings
    from mammodino.synth.preview import write_preview

    if args.ffdm < 0 or args.dbt < 0 or args.ffdm + args.dbt == 0:
        raise ConfigError("nothing to generate: give --ffdm N and/or --dbt M (non-negative)")
    if min(args.ffdm_shape) < 32 or min(args.dbt_shape[1:]) < 32 or args.dbt_shape[0] < 4:
        raise ConfigError(
            "image too small: --ffdm-shape and --dbt-shape rows/cols >= 32, slices >= 4"
        )
    if not 0.0 <= args.lesion_fraction <= 1.0 or args.views < 2 or not 0 < args.arc < 90:
        raise ConfigError("--lesion-fraction must be in [0, 1], --views >= 2, --arc in (0, 90)")
    settings = SynthSettings(
        n_ffdm=args.ffdm,
        n_dbt=args.dbt,
        seed=args.seed,
        ffdm_shape=tuple(args.ffdm_shape),
        dbt_shape=tuple(args.dbt_shape),
        bits=args.bits,
        lesion_fraction=args.lesion_fraction,
        dbt=DbtSettings(arc_deg=args.arc, n_views=args.views),
    )
    workers = args.workers or min(os.cpu_count() or 1, 8)
    columns = [
        TextColumn("synth"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeRemainingColumn(),
    ]
    # Off when not on a terminal: a transient bar still leaves an empty line in a log file.
    with Progress(*columns, transient=True, disable=not Console().is_terminal) as progress:
        task = progress.add_task("synth", total=len(plan(settings)))
        labels, lesions = generate(
            args.output, settings, workers, on_item=lambda _: progress.advance(task)
        )
    print(f"{args.ffdm} FFDM + {args.dbt} DBT written to {args.output} ({len(lesions)} lesions)")
    if args.preview:
        print(f"preview: {write_preview(args.output, _as_text(labels), _as_text(lesions))}")
    return 0


def _as_text(rows: list[dict]) -> list[dict]:
    """Rows as read back from CSV (all values str), the form write_preview takes."""
    return [{k: str(v) for k, v in r.items()} for r in rows]
