"""Pretraining data sets: a prepared cache (OUT/manifest.csv) or a plain folder of images.

Each item is the sample dict of docs/ARCHITECTURE.md, built by `PretrainTransform`. An item is a
pure function of (train.seed, epoch, image index): `__getitem__` takes a sample key from
`ResumableSampler` (data/sampler.py), which encodes the epoch, so loading is deterministic whatever
the worker and resumable at any position. Each worker keeps decoded images and their integral images
in a small LRU cache (`data.cache_mb`), so an image seen again costs no decoding.
"""

from __future__ import annotations

import csv
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch.utils.data

from mammodino.data.sampler import split_key
from mammodino.data.tissue_crops import TissueMap
from mammodino.data.transform import PretrainTransform
from mammodino.errors import ConfigError, MammoReadError, NoBreastFoundError
from mammodino.preprocess.mask import breast_mask

MANIFEST_NAME = "manifest.csv"
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".pgm", ".jpg", ".jpeg", ".npy", ".dcm")


@dataclass(frozen=True)
class ImageRecord:
    """One training image: its id, the image file and its mask file (None: computed on load)."""

    id: str
    image: Path
    mask: Path | None


def read_manifest(folder: Path) -> list[ImageRecord]:
    """The records of a prepared cache; paths in the manifest are relative to the cache folder."""
    path = folder / MANIFEST_NAME
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if rows and not {"id", "image", "mask"} <= set(rows[0]):
        raise ConfigError(f"{path}: manifest needs the columns id, image, mask (see prepare)")
    return [ImageRecord(row["id"], folder / row["image"], folder / row["mask"]) for row in rows]


def list_image_folder(folder: Path) -> list[ImageRecord]:
    """Every image file under a folder (sorted; masks are computed when the image is read)."""
    files = sorted(
        p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )
    return [ImageRecord(str(p.relative_to(folder).with_suffix("")), p, None) for p in files]


def read_pixels(path: Path) -> tuple[np.ndarray, float]:
    """Raw 2-D pixels of an image file and the value that maps to 1.0 (65535 for uint16 PNG)."""
    suffix = path.suffix.lower()
    if suffix == ".dcm":
        from mammodino.io.reader import read_image

        return read_image(path).pixels, 1.0
    if suffix == ".npy":
        pixels = np.load(path, allow_pickle=False)
    else:
        pixels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise MammoReadError(path, "not a readable image", "check the file or rerun prepare")
    if pixels.ndim == 3:
        pixels = (
            pixels[..., 0] if pixels.shape[-1] != 3 else cv2.cvtColor(pixels, cv2.COLOR_BGR2GRAY)
        )
    if pixels.ndim != 2:
        raise MammoReadError(path, f"expected a 2-D image, got shape {pixels.shape}")
    if pixels.dtype == np.uint8:
        return pixels, 255.0
    if pixels.dtype == np.uint16:
        return pixels, 65535.0
    return pixels.astype(np.float32), 1.0


def read_mask(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """A cached uint8 breast mask (0/255) of the image's size."""
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise MammoReadError(path, "breast mask not readable", "rerun prepare on this image")
    if mask.shape != shape:
        raise MammoReadError(
            path, f"mask {mask.shape} does not match image {shape}", "rerun prepare"
        )
    return mask


def compute_breast_mask(pixels: np.ndarray, intensity_max: float) -> np.ndarray:
    """Breast mask (uint8 0/1) of an unprepared image, by prepare's method, at the image's size."""
    result = breast_mask(pixels.astype(np.float32) * np.float32(1.0 / intensity_max))
    height, width = pixels.shape
    small = result.mask.astype(np.uint8)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_NEAREST)


class PretrainDataset(torch.utils.data.Dataset):
    """Pretraining samples of a list of images (with cached or computed breast masks)."""

    def __init__(
        self,
        records: list[ImageRecord],
        transform: PretrainTransform,
        seed: int = 0,
        cache_mb: float = 256.0,
    ) -> None:
        if not records:
            raise ConfigError("the pretraining source holds no images")
        self.records = records
        self.transform = transform
        self.seed = int(seed)
        self.epoch = 0
        self.cache_bytes = int(cache_mb * 2**20)
        self._cache: OrderedDict[int, tuple[np.ndarray, float, TissueMap]] = OrderedDict()
        self._cached_bytes = 0

    def __len__(self) -> int:
        return len(self.records)

    def __getstate__(self) -> dict[str, Any]:
        """Loader workers start with an empty cache (it is per process, not shipped to them)."""
        state = self.__dict__.copy()
        state["_cache"], state["_cached_bytes"] = OrderedDict(), 0
        return state

    def set_epoch(self, epoch: int) -> None:
        """Epoch of plain indices (< len): for loaders that do not use ResumableSampler keys."""
        self.epoch = int(epoch)

    def __getitem__(self, key: int) -> dict[str, Any]:
        if torch.utils.data.get_worker_info() is not None and cv2.getNumThreads() != 1:
            # One OpenCV thread per loader worker: the workers already fill the cores.
            cv2.setNumThreads(1)
        epoch, index = split_key(key, len(self.records))
        if key < len(self.records):
            epoch = self.epoch
        pixels, intensity_max, tissue = self.load(index)
        return self.transform(pixels, tissue, (self.seed, epoch, index), intensity_max, index)

    def load(self, index: int) -> tuple[np.ndarray, float, TissueMap]:
        """Raw pixels, their full-scale value and the tissue map of image `index` (LRU cached)."""
        hit = self._cache.get(index)
        if hit is not None:
            self._cache.move_to_end(index)
            return hit
        record = self.records[index]
        pixels, intensity_max = read_pixels(record.image)
        if record.mask is not None:
            mask = read_mask(record.mask, pixels.shape)
        else:
            mask = compute_breast_mask(pixels, intensity_max)
        tissue = TissueMap.from_mask(mask, pixels, intensity_max)
        if tissue.tissue_pixels == 0:
            raise NoBreastFoundError(
                record.image, "breast mask is empty", "check the image or mask"
            )
        entry = (pixels, intensity_max, tissue)
        self._remember(index, entry, pixels.nbytes + tissue.nbytes)
        return entry

    def _remember(self, index: int, entry: tuple, nbytes: int) -> None:
        if nbytes > self.cache_bytes:
            return
        self._cache[index] = entry
        self._cached_bytes += nbytes
        while self._cached_bytes > self.cache_bytes:
            _, (pixels, _, tissue) = self._cache.popitem(last=False)
            self._cached_bytes -= pixels.nbytes + tissue.nbytes


def build_pretrain_dataset(cfg: Any, source: str | Path | None = None) -> torch.utils.data.Dataset:
    """The pretraining data set of `cfg.data.source` (a prepared cache or a folder of images).

    With `data.dbt_fraction` > 0 a prepared cache gives the mixed FFDM + DBT data set
    (data/dbt_dataset.py); at 0 every cached DBT slice is an image like any other.
    """
    source = source if source is not None else cfg["data"]["source"]
    if source is None:
        raise ConfigError("data.source is not set: give a prepared cache or a folder of images")
    folder = Path(source)
    dbt_fraction = float(cfg["data"].get("dbt_fraction", 0.0) or 0.0)
    if (folder / MANIFEST_NAME).is_file() and dbt_fraction > 0:
        from mammodino.data.dbt_dataset import build_mixed_dataset

        return build_mixed_dataset(cfg, folder)
    if (folder / MANIFEST_NAME).is_file():
        records = read_manifest(folder)
    elif folder.is_dir():
        records = list_image_folder(folder)
    else:
        raise ConfigError(f"data.source {str(folder)!r} is neither a prepared cache nor a folder")
    return PretrainDataset(
        records,
        PretrainTransform.from_cfg(cfg),
        seed=cfg["train"]["seed"],
        cache_mb=cfg["data"].get("cache_mb", 256.0),
    )
