"""Several runs' features side by side in one FEATS folder, for `eval` (issue 13, acceptance 1).

How far can a frozen probe go on this data at all? Concatenating the features of several runs (seeds,
recipes, the hand-crafted set) gives a probe everything those runs learnt between them: an
ensemble's figure, a practical ceiling for any single run of the same kind. Each source is
z-scored per dimension and scaled by 1 / sqrt(its width), so every source weighs the same in a
distance whatever its width (192 learned dimensions do not drown 54 hand-crafted ones). `cls`
and `patch_mean` are concatenated separately, so `eval`'s representations keep their meaning.
Rows are matched by id; sources that do not hold the same images are refused.

  python benchmarks/concat_features.py OUT FEATS_A FEATS_B ...
  mammodino eval --features OUT --labels LABELS.csv --task density --protocol knn logreg

Measured on cropped mini-MIAS (docs/pretrain.md, "How far a frozen probe goes").
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mammodino.errors import EvaluationError, MammodinoError
from mammodino.eval.features import Features, load_features, save_features
from mammodino.eval.probes import standardise


def equal_weight_columns(x: np.ndarray) -> np.ndarray:
    """Columns z-scored (constant ones become 0), divided by sqrt(width): mean row norm^2 <= 1."""
    x = x.astype(np.float64)
    return standardise(x, x)[0] / np.sqrt(x.shape[1])


def concatenate(sources: Sequence[Features]) -> Features:
    """One Features with every source's columns, rows in the first source's order."""
    if len(sources) < 2:
        raise EvaluationError("give at least two FEATS to concatenate")
    first = sources[0]
    position = {str(i): n for n, i in enumerate(first.ids)}
    cls, patch_mean = [], []
    for n, source in enumerate(sources):
        ids = [str(i) for i in source.ids]
        if len(ids) != len(position) or set(ids) != set(position):
            raise EvaluationError(
                f"source {n + 1} holds other images than source 1 "
                f"({len(set(ids) - set(position))} not in source 1, "
                f"{len(set(position) - set(ids))} missing)"
            )
        order = np.argsort([position[i] for i in ids])
        cls.append(equal_weight_columns(source.cls[order]))
        patch_mean.append(equal_weight_columns(source.patch_mean[order]))
    return Features(
        ids=first.ids,
        cls=np.concatenate(cls, axis=1).astype(np.float32),
        patch_mean=np.concatenate(patch_mean, axis=1).astype(np.float32),
        meta=first.meta,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", type=Path, help="FEATS folder to write")
    parser.add_argument("features", nargs="+", help="FEATS folders (from embed) to concatenate")
    args = parser.parse_args(argv)
    try:
        joined = concatenate([load_features(f, with_grid=False) for f in args.features])
    except MammodinoError as err:
        raise SystemExit(f"concat_features: {err}") from None
    path = save_features(args.output, joined.ids, joined.cls, joined.patch_mean, joined.meta)
    print(
        f"{path}: {len(joined)} images, cls {joined.cls.shape[1]} + patch_mean "
        f"{joined.patch_mean.shape[1]} columns from {len(args.features)} sources"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
