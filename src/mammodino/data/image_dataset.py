"""Pretraining samples of a list of 2-D images: cached (with their masks) or plain image files.

Each item is the sample dict of docs/ARCHITECTURE.md, built by `PretrainTransform`. An item is a
pure function of (train.seed, epoch, image index): `__getitem__` takes a sample key from
`ResumableSampler` (data/resumable_sampler.py), which encodes the epoch, so loading is deterministic
whatever the worker and resumable at any position. Each worker keeps decoded images and their
integral images in a small LRU cache (`data.cache_mb`), so an image seen again costs no decoding.
With `partners` (data/patient_pairs.py) a sample also carries a crop of another image of its
patient, for the cross-slice loss.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch.utils.data

from mammodino.data.patient_pairs import PartnerCrops
from mammodino.data.resumable_sampler import split_key
from mammodino.data.tissue_crops import TissueMap
from mammodino.data.transform import PretrainTransform
from mammodino.errors import ConfigError, MammoReadError, NoBreastFoundError
from mammodino.preprocess.cache import read_cached_image, read_cached_mask
from mammodino.preprocess.mask import breast_mask


@dataclass(frozen=True)
class ImageRecord:
    """One training image: its id, the image file and its mask file (None: computed on load).

    A record with a mask is a prepared-cache image; one without is a plain image file.
    """

    id: str
    image: Path
    mask: Path | None

    @classmethod
    def from_row(cls, folder: Path, row: Mapping[str, str]) -> ImageRecord:
        """The record of a manifest row (its paths are relative to the cache folder)."""
        return cls(row["id"], folder / row["image"], folder / row["mask"])


def with_full_scale(pixels: np.ndarray) -> tuple[np.ndarray, float]:
    """Pixels and the value that maps to 1.0 (255 for uint8, 65535 for uint16, else 1.0)."""
    if pixels.dtype == np.uint8:
        return pixels, 255.0
    if pixels.dtype == np.uint16:
        return pixels, 65535.0
    return pixels.astype(np.float32), 1.0


def read_pixels(path: Path) -> tuple[np.ndarray, float]:
    """Raw 2-D pixels of a plain image file and the value that maps to 1.0."""
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
    return with_full_scale(pixels)


def read_cached_pixels(path: Path) -> tuple[np.ndarray, float]:
    """A cached image (or DBT slice) and the value that maps to 1.0."""
    return with_full_scale(read_cached_image(path))


def compute_breast_mask(pixels: np.ndarray, intensity_max: float) -> np.ndarray:
    """Breast mask (uint8 0/1) of an unprepared image, by prepare's method, at the image's size."""
    result = breast_mask(pixels.astype(np.float32) * np.float32(1.0 / intensity_max))
    height, width = pixels.shape
    small = result.mask.astype(np.uint8)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_NEAREST)


def entry_nbytes(pixels: np.ndarray, tissue: TissueMap) -> int:
    """Memory one cached image holds: its pixels, breast mask and integral image."""
    return pixels.nbytes + tissue.nbytes


class PretrainDataset(torch.utils.data.Dataset):
    """Pretraining samples of a list of images (with cached or computed breast masks)."""

    def __init__(
        self,
        records: list[ImageRecord],
        transform: PretrainTransform,
        seed: int,
        cache_mb: float,
        partners: PartnerCrops | None = None,
    ) -> None:
        if not records:
            raise ConfigError("the pretraining source holds no images")
        self.records = records
        self.transform = transform
        self.partners = partners
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
        sample = self.transform(pixels, tissue, (self.seed, epoch, index), intensity_max, index)
        if self.partners is not None:
            self.partners.add(sample, index, epoch, self.load)
        return sample

    def load(self, index: int) -> tuple[np.ndarray, float, TissueMap]:
        """Raw pixels, their full-scale value and the tissue map of image `index` (LRU cached)."""
        hit = self._cache.get(index)
        if hit is not None:
            self._cache.move_to_end(index)
            return hit
        record = self.records[index]
        if record.mask is not None:
            pixels, intensity_max = read_cached_pixels(record.image)
            mask = read_cached_mask(record.mask, pixels.shape)
        else:
            pixels, intensity_max = read_pixels(record.image)
            mask = compute_breast_mask(pixels, intensity_max)
        tissue = TissueMap.from_mask(mask, pixels, intensity_max)
        if tissue.tissue_pixels == 0:
            raise NoBreastFoundError(
                record.image, "breast mask is empty", "check the image or mask"
            )
        entry = (pixels, intensity_max, tissue)
        self._remember(index, entry)
        return entry

    def _remember(self, index: int, entry: tuple[np.ndarray, float, TissueMap]) -> None:
        nbytes = entry_nbytes(entry[0], entry[2])
        if nbytes > self.cache_bytes:
            return
        self._cache[index] = entry
        self._cached_bytes += nbytes
        while self._cached_bytes > self.cache_bytes:
            _, (pixels, _, tissue) = self._cache.popitem(last=False)
            self._cached_bytes -= entry_nbytes(pixels, tissue)
