"""The hand-crafted baseline: intensity histogram and texture (GLCM, LBP) inside the breast mask.

Computed from the prepared cache (uint16 image + uint8 mask per manifest row) and written in the
features format (`cls` = `patch_mean` = the hand-crafted vector, and a `patch_grid` of local
descriptors for the localization probe), so `mammodino eval` runs it on the same folds as any
backbone:
  python -m mammodino.eval.handcrafted CACHE FEATS
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from mammodino.errors import EvaluationError
from mammodino.eval.features import save_features
from mammodino.preprocess.cache import (
    MANIFEST_NAME,
    cache_folder,
    read_cached_pair,
    read_manifest,
)

HIST_BINS = 16
GLCM_LEVELS = 32
GLCM_DISTANCES = (1, 2, 4)
GLCM_ANGLES = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)
GLCM_PROPS = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation", "ASM")
LBP_POINTS = 8
TEXTURE_SIDE = 256  # texture on a downsampled image: film grain at full size is not anatomy
GRID = 16  # patch grid over the whole cache image, as embed's grid covers it by default
PATCH_PX = 16


def feature_names() -> list[str]:
    """Names of the vector's entries, in order."""
    names = [f"hist_{i}" for i in range(HIST_BINS)]
    names += ["mean", "std", "p05", "p25", "p50", "p75", "p95", "skew", "kurtosis", "area_fraction"]
    names += [f"glcm_{p}_d{d}" for p in GLCM_PROPS for d in GLCM_DISTANCES]
    names += [f"lbp_{i}" for i in range(LBP_POINTS + 2)]
    return names


def _intensity(values: np.ndarray, area_fraction: float) -> np.ndarray:
    hist, _ = np.histogram(values, bins=HIST_BINS, range=(0.0, 1.0))
    hist = hist / max(hist.sum(), 1)
    mean, std = values.mean(), values.std()
    z = (values - mean) / max(std, 1e-8)
    stats = [mean, std, *np.percentile(values, [5, 25, 50, 75, 95])]
    stats += [np.mean(z**3), np.mean(z**4) - 3.0, area_fraction]
    return np.concatenate([hist, stats])


def _texture(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    import cv2
    from skimage.feature import graycomatrix, graycoprops, local_binary_pattern

    scale = TEXTURE_SIDE / max(image.shape)
    if scale < 1:
        size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        mask = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
    inside = image[mask]
    low, high = np.percentile(inside, [1, 99]) if inside.size else (0.0, 1.0)
    levels = np.clip((image - low) / max(high - low, 1e-6), 0, 1) * (GLCM_LEVELS - 1)
    # Level 0 is kept for background so pairs touching it can be dropped from the matrix.
    quantised = np.where(mask, np.round(levels).astype(np.uint8) + 1, 0).astype(np.uint8)
    glcm = graycomatrix(
        quantised, GLCM_DISTANCES, GLCM_ANGLES, levels=GLCM_LEVELS + 1, symmetric=True
    )[1:, 1:].astype(np.float64)
    glcm /= np.maximum(glcm.sum(axis=(0, 1), keepdims=True), 1.0)
    glcm_features = [graycoprops(glcm, p).mean(axis=1) for p in GLCM_PROPS]  # mean over angles
    # LBP on 8-bit grey levels of the same contrast stretch (float input makes LBP noise-driven).
    grey = np.round(levels * (255.0 / (GLCM_LEVELS - 1))).astype(np.uint8)
    lbp = local_binary_pattern(grey, LBP_POINTS, 1, method="uniform")
    hist, _ = np.histogram(lbp[mask], bins=LBP_POINTS + 2, range=(0, LBP_POINTS + 2))
    return np.concatenate([np.concatenate(glcm_features), hist / max(hist.sum(), 1)])


def handcrafted_features(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The baseline vector of one image ([0, 1] float) inside its breast mask (bool)."""
    image = np.asarray(image, dtype=np.float32)
    mask = np.asarray(mask, dtype=bool)
    if image.shape != mask.shape:
        raise EvaluationError(f"image {image.shape} and mask {mask.shape} differ in size")
    if not mask.any():
        mask = np.ones_like(mask)  # no breast found: describe the whole image rather than nothing
    vector = np.concatenate([_intensity(image[mask], float(mask.mean())), _texture(image, mask)])
    return np.nan_to_num(vector.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)


def patch_descriptors(image: np.ndarray, mask: np.ndarray, grid: int = GRID) -> np.ndarray:
    """Local descriptors [grid, grid, 17] of the image squeezed to a square grid of patches:
    mean, std, p10, p50, p90, max, tissue fraction, mean gradient, LBP histogram (9 bins)."""
    import cv2
    from skimage.feature import local_binary_pattern

    side = grid * PATCH_PX
    square = cv2.resize(np.asarray(image, np.float32), (side, side), interpolation=cv2.INTER_AREA)
    tissue = cv2.resize(mask.astype(np.float32), (side, side), interpolation=cv2.INTER_AREA)
    gradient = np.hypot(cv2.Sobel(square, cv2.CV_32F, 1, 0), cv2.Sobel(square, cv2.CV_32F, 0, 1))
    lbp = local_binary_pattern(np.round(square * 255).astype(np.uint8), LBP_POINTS, 1, "uniform")

    def tiles(a: np.ndarray) -> np.ndarray:  # [grid, grid, PATCH_PX * PATCH_PX]
        return (
            a.reshape(grid, PATCH_PX, grid, PATCH_PX).transpose(0, 2, 1, 3).reshape(grid, grid, -1)
        )

    values = tiles(square)
    codes = tiles(lbp).astype(np.int64)
    # LBP "non-uniform" code (P + 1) is dropped: the 9 uniform bins already sum to its complement.
    lbp_hist = np.stack([(codes == c).mean(axis=-1) for c in range(LBP_POINTS + 1)], axis=-1)
    stats = [values.mean(-1), values.std(-1), *np.percentile(values, [10, 50, 90], axis=-1)]
    stats += [values.max(-1), tiles(tissue).mean(-1), tiles(gradient).mean(-1)]
    return np.concatenate([np.stack(stats, axis=-1), lbp_hist], axis=-1).astype(np.float32)


def extract_handcrafted(cache: str | Path, output: str | Path) -> Path:
    """Hand-crafted features of every cache image, written as FEATS; returns the .npz path."""
    from rich.console import Console
    from rich.progress import track

    rows = read_manifest(cache)
    cache = cache_folder(cache)
    vectors, grids = [], []
    quiet = not Console().is_terminal  # a transient bar leaves an empty line in a log file
    for row in track(rows, description="hand-crafted features", transient=True, disable=quiet):
        image, mask = read_cached_pair(cache, row)
        # Cache images are uint16 PNGs; scale by the dtype's range to [0, 1].
        scaled = image.astype(np.float32) / float(np.iinfo(image.dtype).max)
        vectors.append(handcrafted_features(scaled, mask > 0))
        grids.append(patch_descriptors(scaled, mask > 0))
    matrix = np.stack(vectors)
    grid = np.stack(grids).astype(np.float16)
    return save_features(output, [r["id"] for r in rows], matrix, matrix, rows, patch_grid=grid)


def main(argv: list[str] | None = None) -> int:
    """`python -m mammodino.eval.handcrafted CACHE FEATS`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cache", help=f"prepared cache folder (holds {MANIFEST_NAME})")
    parser.add_argument("output", help="FEATS folder to write")
    args = parser.parse_args(argv)
    path = extract_handcrafted(args.cache, args.output)
    print(f"features: {path} ({len(feature_names())} per image)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
