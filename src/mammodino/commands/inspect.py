"""Inspect a prepared cache: counts, mask statistics and a contact sheet with mask outlines.

Example:
  mammodino inspect /tmp/mias-cache --sheet sheet.png --max 64

The sheet shows each cached image (chest wall on the left) with its breast mask outlined in red
(pectoral mask in blue when prepared with --pectoral), so a person can check masks by eye.
"""

from __future__ import annotations

import argparse

HELP = "inspect a prepared cache: summary and a contact sheet with mask outlines"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", metavar="OUT", help="prepared cache folder (has manifest.csv)")
    parser.add_argument("--sheet", help="write a contact sheet PNG here")
    parser.add_argument("--max", type=int, default=64, help="most images on the sheet")
    parser.add_argument("--columns", type=int, default=8, help="tiles per line")
    parser.add_argument("--tile-height", type=int, default=192, help="tile height, pixels")


def run(args: argparse.Namespace) -> int:
    from collections import Counter
    from pathlib import Path

    import cv2
    import numpy as np

    from mammodino.errors import MammodinoError
    from mammodino.preprocess.cache import read_manifest
    from mammodino.preprocess.sheet import contact_sheet, pick_rows

    out = Path(args.out)
    rows = read_manifest(
        out, required=("image", "mask", "source", "view", "flipped", "mask_fraction")
    )
    errors = (
        (out / "errors.csv").read_text().count("\n") - 1 if (out / "errors.csv").exists() else 0
    )
    fractions = np.array([float(r["mask_fraction"]) for r in rows]) if rows else np.zeros(0)
    flipped = sum(int(r["flipped"]) for r in rows)
    views = Counter(r["view"] or "?" for r in rows)
    print(f"{len(rows)} images, {max(errors, 0)} skipped files in errors.csv")
    if rows:
        print(
            f"mask fraction of cache: median {np.median(fractions):.3f}, "
            f"min {fractions.min():.3f}, max {fractions.max():.3f}; {flipped} flipped to chest wall left"
        )
        print("views: " + ", ".join(f"{k} {v}" for k, v in sorted(views.items())))
    if args.sheet and rows:
        sheet = contact_sheet(out, pick_rows(rows, args.max), args.tile_height, args.columns)
        if not cv2.imwrite(str(args.sheet), sheet):
            raise MammodinoError(f"could not write {args.sheet}")
        print(f"contact sheet: {args.sheet}")
    return 0
