"""The features file: what `embed` (or a baseline) writes and `eval`/`report` read.

FEATS is a folder holding
- `features.npz`: `ids` [N] (manifest ids, str), `cls` [N, D] float32, `patch_mean` [N, D] float32,
  optionally `patch_grid` [N, h, w, D] (float16 is fine: it is the bulk of the file);
- `meta.csv`: one row per id in the same order, with at least `id, source, patient_id, laterality,
  view`; embed copies every manifest column (cache geometry: `cache_width, cache_height, flipped,
  crop_*, scale_*`) so lesion coordinates can be mapped onto the patch grid. Optional columns
  `grid_x0, grid_y0, grid_x1, grid_y1` give the cache-pixel box the patch grid covers (default: the
  whole cache image `0, 0, cache_width, cache_height`).
A bare `.npz` path is accepted too; its metadata then lives in `<stem>.meta.csv` next to it.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mammodino.errors import EvaluationError

FEATURES_NAME = "features.npz"
META_NAME = "meta.csv"
REQUIRED_META = ("id", "source", "patient_id", "laterality", "view")
REPRESENTATIONS = ("cls", "patch_mean", "cls+patch_mean")


def probe_representation(representation: str, protocol: str, features: Features) -> str:
    """The representation a probe reads. `auto` is DINOv2's evaluation protocol: kNN on the CLS
    token, linear probes on CLS + mean patch token; a features file with one vector per image
    (hand-crafted: `patch_mean` repeats `cls`) reads `cls`."""
    if representation != "auto":
        return representation
    if protocol == "knn" or features.single_vector:
        return "cls"
    return "cls+patch_mean"


# Below this relative spread the cosine ranking kNN votes with is decided by float rounding: a
# fresh ViT's CLS tokens sit at ~2e-5 on mini-MIAS, trained backbones and hand-crafted features at
# 0.3-1.5 (docs/evaluation.md, "Protocols").
KNN_MIN_SPREAD = 1e-3


def relative_spread(x: np.ndarray) -> float:
    """Mean distance of the rows from their mean, over the mean's norm: how far apart the images
    are relative to what they share (0 when every row is the same vector)."""
    x = np.asarray(x, dtype=np.float64)
    centre = x.mean(axis=0)
    scale = float(np.linalg.norm(centre))
    spread = float(np.linalg.norm(x - centre, axis=1).mean())
    return spread / scale if scale > 0 else math.inf if spread > 0 else 0.0


@dataclass
class Features:
    """Per-image features with their metadata rows (same order as `ids`)."""

    ids: np.ndarray
    cls: np.ndarray
    patch_mean: np.ndarray
    meta: list[dict[str, str]]
    patch_grid: np.ndarray | None = None
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def single_vector(self) -> bool:
        """True when `patch_mean` repeats `cls` (one vector per image, e.g. hand-crafted)."""
        return self.cls.shape == self.patch_mean.shape and np.array_equal(self.cls, self.patch_mean)

    def vectors(self, representation: str = "cls") -> np.ndarray:
        """The image-level matrix a probe uses: `cls`, `patch_mean` or both concatenated."""
        if representation == "cls":
            return self.cls.astype(np.float32)
        if representation == "patch_mean":
            return self.patch_mean.astype(np.float32)
        if representation == "cls+patch_mean":
            return np.concatenate([self.cls, self.patch_mean], axis=1).astype(np.float32)
        raise EvaluationError(
            f"unknown representation {representation!r}; use one of {', '.join(REPRESENTATIONS)}"
        )

    def subset(self, index: np.ndarray) -> Features:
        """The rows at `index` (an integer array), in that order."""
        return Features(
            ids=self.ids[index],
            cls=self.cls[index],
            patch_mean=self.patch_mean[index],
            meta=[self.meta[i] for i in index],
            patch_grid=None if self.patch_grid is None else self.patch_grid[index],
            extra={k: v[index] for k, v in self.extra.items()},
        )


def _paths(path: str | Path) -> tuple[Path, Path]:
    path = Path(path)
    if path.suffix == ".npz":
        return path, path.with_name(f"{path.stem}.meta.csv")
    return path / FEATURES_NAME, path / META_NAME


def save_features(
    path: str | Path,
    ids: Sequence[str],
    cls: np.ndarray,
    patch_mean: np.ndarray,
    meta: Sequence[Mapping[str, object]],
    patch_grid: np.ndarray | None = None,
    **extra: np.ndarray,
) -> Path:
    """Write FEATS (folder or .npz) and return the path of the .npz file."""
    n = len(ids)
    cls = np.asarray(cls)
    patch_mean = np.asarray(patch_mean)
    if cls.ndim != 2 or cls.shape[0] != n or patch_mean.shape[0] != n or len(meta) != n:
        raise EvaluationError(
            f"features do not line up: {n} ids, cls {cls.shape}, patch_mean {patch_mean.shape}, "
            f"{len(meta)} meta rows"
        )
    if patch_grid is not None and (patch_grid.ndim != 4 or patch_grid.shape[0] != n):
        raise EvaluationError(f"patch_grid must be [N, h, w, D]; got {patch_grid.shape}")
    npz_path, meta_path = _paths(path)
    npz_path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {
        "ids": np.asarray([str(i) for i in ids]),
        "cls": cls.astype(np.float32),
        "patch_mean": patch_mean.astype(np.float32),
        **{k: np.asarray(v) for k, v in extra.items()},
    }
    if patch_grid is not None:
        arrays["patch_grid"] = patch_grid
    # Write to a temporary name first so an interrupted run never leaves a half file behind.
    tmp = npz_path.with_name(npz_path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(npz_path)
    columns: list[str] = list(REQUIRED_META)
    for row in meta:
        columns += [str(k) for k in row if str(k) not in columns]
    with meta_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for i, row in zip(arrays["ids"], meta, strict=True):
            out = {c: "" if row.get(c) is None else str(row.get(c)) for c in columns}
            out["id"] = str(i)
            writer.writerow(out)
    return npz_path


def load_features(path: str | Path, *, with_grid: bool = True) -> Features:
    """Read FEATS written by `save_features` (folder or .npz path)."""
    npz_path, meta_path = _paths(path)
    if not npz_path.is_file():
        raise EvaluationError(
            f"{npz_path}: no features file (run `mammodino embed` first, or pass the FEATS folder)"
        )
    try:
        data = np.load(npz_path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise EvaluationError(
            f"{npz_path.name}: not a readable .npz features file ({err})"
        ) from err
    missing = [k for k in ("ids", "cls", "patch_mean") if k not in data.files]
    if missing:
        raise EvaluationError(f"{npz_path.name}: missing arrays {missing}")
    try:  # object arrays would need pickle, which np.load refuses with ValueError
        ids, cls, patch_mean = data["ids"].astype(str), data["cls"], data["patch_mean"]
    except ValueError as err:
        raise EvaluationError(f"{npz_path.name}: not plain arrays ({err})") from None
    meta: list[dict[str, str]] = [{"id": i} for i in ids]
    if meta_path.is_file():
        with meta_path.open(newline="") as fh:
            rows = {r["id"]: r for r in csv.DictReader(fh)}
        meta = [dict(rows.get(i, {"id": i})) for i in ids]
    grid = data["patch_grid"] if with_grid and "patch_grid" in data.files else None
    extra = {k: data[k] for k in data.files if k not in ("ids", "cls", "patch_mean", "patch_grid")}
    return Features(
        ids=ids,
        cls=cls,
        patch_mean=patch_mean,
        meta=meta,
        patch_grid=grid,
        extra=extra,
    )
