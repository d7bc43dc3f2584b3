"""The prepared cache (`mammodino prepare SRC OUT`): manifest.csv, its rows and its images.

The one module that knows the cache's layout: the manifest's name and columns, how its rows are
read and written, and how a cached image (uint16 PNG) and mask (uint8 PNG, 0/255) are opened. Paths in the
manifest are relative to the folder holding it. Every problem with a cache is one `CacheError`
line naming the file and what to do. Cache <-> original coordinates live in
preprocess/geometry.py and are re-exported here.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from mammodino.errors import CacheError
from mammodino.preprocess.geometry import CacheGeometry, cache_to_original, original_to_cache

__all__ = [
    "MANIFEST_COLUMNS",
    "MANIFEST_NAME",
    "REQUIRED_COLUMNS",
    "CacheGeometry",
    "cache_folder",
    "cache_to_original",
    "is_prepared_cache",
    "manifest_file",
    "original_to_cache",
    "read_cached_bytes",
    "read_cached_float",
    "read_cached_image",
    "read_cached_mask",
    "read_cached_pair",
    "read_manifest",
    "write_csv_atomic",
    "write_manifest",
]

MANIFEST_NAME = "manifest.csv"
MANIFEST_COLUMNS = [
    "id",
    "source",
    "image",
    "mask",
    "laterality",
    "view",
    "height",
    "width",
    "flipped",
    "crop_x0",
    "crop_y0",
    "crop_x1",
    "crop_y1",
    "scale_x",
    "scale_y",
    "cache_height",
    "cache_width",
    "patient_id",
    "patient_source",
    "laterality_source",
    "spacing_mm",
    "cache_spacing_mm",
    "manufacturer",
    "presentation_intent",
    "bits_stored",
    "source_format",
    "mask_fraction",
    "pectoral",
    "volume_id",
    "slice_index",
    "slice_count",
    "slice_spacing_mm",
    "intensity_low",
    "intensity_high",
]
REQUIRED_COLUMNS = ("id", "image", "mask")  # what every reader needs: the rest is optional
_RERUN = "rerun `mammodino prepare`"


def manifest_file(cache: str | Path) -> Path:
    """The manifest of a cache named by its folder, or by the manifest (any .csv) itself."""
    path = Path(cache)
    return path if path.suffix == ".csv" else path / MANIFEST_NAME


def cache_folder(cache: str | Path) -> Path:
    """The folder the manifest's paths are relative to."""
    return manifest_file(cache).parent


def is_prepared_cache(cache: str | Path) -> bool:
    """True when `cache` is a folder holding a manifest, or a manifest file."""
    return manifest_file(cache).is_file()


def read_manifest(
    cache: str | Path, required: Iterable[str] = REQUIRED_COLUMNS
) -> list[dict[str, str]]:
    """The manifest's rows in file order (cells as text), after checking its `required` columns."""
    path = manifest_file(cache)
    if not path.is_file():
        folder = path.parent
        raise CacheError(
            f"{folder}: no {path.name}, not a prepared cache "
            f"(run `mammodino prepare SRC {folder}` first)"
        )
    try:
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            columns = reader.fieldnames  # None for an empty file: no rows, nothing to check
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise CacheError(f"{path}: manifest unreadable ({type(err).__name__}; {_RERUN})") from None
    missing = [c for c in required if c not in columns] if columns is not None else []
    if missing:
        raise CacheError(f"{path}: manifest lacks columns {', '.join(missing)} ({_RERUN})")
    return rows


def write_csv_atomic(path: Path, columns: Iterable[str], rows: Iterable[Mapping[str, Any]]) -> None:
    """Write a CSV through a temporary file and os.replace: readers never see half a file."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(buffer.getvalue())
    os.replace(tmp, path)


def write_manifest(
    cache: str | Path,
    rows: Iterable[Mapping[str, Any]],
    columns: Iterable[str] = MANIFEST_COLUMNS,
) -> Path:
    """Write the manifest of the cache folder `cache` (atomically); returns its path."""
    path = Path(cache) / MANIFEST_NAME
    write_csv_atomic(path, columns, rows)
    return path


def read_cached_image(path: str | Path, *, preview: bool = False) -> np.ndarray:
    """A cached image as stored (2-D uint16); `preview`: 8-bit at 1/8 size, a cheap first look."""
    flags = cv2.IMREAD_REDUCED_GRAYSCALE_8 if preview else cv2.IMREAD_UNCHANGED
    image = cv2.imread(str(path), flags)
    if image is None:
        raise CacheError(f"{path}: cached image missing or unreadable ({_RERUN})")
    if image.ndim != 2:
        raise CacheError(f"{path}: cached image of shape {image.shape}, not 2-D ({_RERUN})")
    return image


def read_cached_mask(path: str | Path, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """A cached uint8 mask (breast or pectoral), checked against its image's `shape` if given."""
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise CacheError(f"{path}: cached mask missing or unreadable ({_RERUN})")
    if shape is not None and mask.shape != tuple(shape):
        raise CacheError(f"{path}: mask {mask.shape} does not match its image {shape} ({_RERUN})")
    return mask


def read_cached_pair(cache: str | Path, row: Mapping[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """(image as stored, breast mask) of a manifest row; `cache` is the cache folder."""
    folder = Path(cache)
    image = read_cached_image(folder / row["image"])
    return image, read_cached_mask(folder / row["mask"], image.shape)


def read_cached_float(cache: str | Path, row: Mapping[str, str]) -> np.ndarray:
    """A manifest row's cached image as float32 in [0, 1] (scaled by its dtype's full range)."""
    image = read_cached_image(Path(cache) / row["image"])
    return image.astype(np.float32) / np.float32(np.iinfo(image.dtype).max)


def read_cached_bytes(path: str | Path) -> bytes:
    """A cached file's stored bytes (shards copy PNGs as they are, without re-encoding)."""
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise CacheError(
            f"{path}: cached file unreadable ({type(err).__name__}; {_RERUN})"
        ) from None
