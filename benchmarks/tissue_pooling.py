"""Mean patch token over the breast only, for `eval` (issue 13, item 3).

`embed` averages every patch token of the square canvas. On a cropped mini-MIAS cache the canvas
is mostly zero padding (the crop of a breast is about twice as tall as wide) and only 40% of the
8 x 8 grid at 128 px lies on breast; on whole images the background fills most of the rest. This
rewrites a FEATS folder (written with `embed --patch-grid`) so that its `patch_mean` averages the
patch tokens weighted by their breast fraction (the cache mask placed on the same canvas and
area-resized to the grid), or, with `--min-fraction F`, over the patches at least F breast. `cls`
and the metadata stay as they are, so `mammodino eval` probes it as it probes `embed`'s output.

  mammodino embed --weights RUN --input CACHE --output FEATS --image-size 128 --patch-grid
  python benchmarks/tissue_pooling.py FEATS CACHE OUT
  mammodino eval --features OUT --labels LABELS.csv --task density --protocol knn logreg

Measured on mini-MIAS (docs/pretrain.md, "What the probe reads"): within a seed's spread of
`embed`'s plain mean on both caches and both recipes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from mammodino.errors import EvaluationError, MammodinoError
from mammodino.eval.backbone import square_canvas
from mammodino.eval.features import load_features, save_features
from mammodino.preprocess.cache import cache_folder, read_cached_pair, read_manifest


def grid_tissue_fractions(mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Breast share of each patch: the mask on `embed`'s square canvas, area-resized to the grid."""
    canvas = square_canvas((np.asarray(mask) > 0).astype(np.float32))
    height, width = grid
    return cv2.resize(canvas, (width, height), interpolation=cv2.INTER_AREA)


def tissue_mean(
    tokens: np.ndarray, fractions: np.ndarray, min_fraction: float | None
) -> np.ndarray:
    """Mean of the patch tokens [h, w, D] weighted by breast fraction [h, w] (or over the patches
    at least `min_fraction` breast); the plain mean when no patch qualifies."""
    weights = fractions if min_fraction is None else (fractions >= min_fraction).astype(np.float64)
    tokens = np.asarray(tokens, dtype=np.float64)
    if weights.sum() <= 0:
        return tokens.mean(axis=(0, 1))
    return np.tensordot(weights, tokens, axes=([0, 1], [0, 1])) / weights.sum()


def tissue_pooled(
    feats: str | Path, cache: str | Path, output: Path, min_fraction: float | None = None
) -> tuple[Path, float, int]:
    """Write OUT; return its features.npz, the mean breast share of the grid and the number of
    images pooled over the whole grid for want of breast."""
    features = load_features(feats)
    if features.patch_grid is None:
        raise EvaluationError(f"{feats}: no patch grid (run `embed` with --patch-grid)")
    rows = {row["id"]: row for row in read_manifest(cache, required=("id", "image", "mask"))}
    missing = [str(i) for i in features.ids if str(i) not in rows]
    if missing:
        raise EvaluationError(f"{len(missing)} images of {feats} are not in {cache}: {missing[0]}")
    folder = cache_folder(cache)
    grid = features.patch_grid.shape[1:3]
    pooled, shares, fallback = [], [], 0
    for image_id, tokens in zip(features.ids, features.patch_grid, strict=True):
        _, mask = read_cached_pair(folder, rows[str(image_id)])
        fractions = grid_tissue_fractions(mask, grid)
        weights = fractions if min_fraction is None else fractions >= min_fraction
        fallback += int(np.sum(weights) <= 0)
        shares.append(float(fractions.mean()))
        pooled.append(tissue_mean(tokens, fractions, min_fraction))
    path = save_features(output, features.ids, features.cls, np.stack(pooled), features.meta)
    return path, float(np.mean(shares)), fallback


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("feats", help="a FEATS folder written with `embed --patch-grid`")
    parser.add_argument("cache", help="the prepared cache it was embedded from")
    parser.add_argument("output", type=Path, help="the FEATS folder to write")
    parser.add_argument(
        "--min-fraction",
        type=float,
        default=None,
        help="average the patches at least this breast (default: weight every patch by it)",
    )
    args = parser.parse_args(argv)
    if args.min_fraction is not None and not 0 < args.min_fraction <= 1:
        parser.error("--min-fraction must be in (0, 1]")
    try:
        path, share, fallback = tissue_pooled(
            args.feats, args.cache, args.output, args.min_fraction
        )
    except MammodinoError as exc:  # a FEATS without grid, another cache: one line
        raise SystemExit(f"tissue_pooling: {exc}") from None
    print(
        f"breast {share:.0%} of the grid on average; {fallback} images pooled over the whole "
        f"grid (no breast patch): {path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
