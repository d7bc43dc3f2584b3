"""Mixed FFDM + DBT pretraining: manifest rows grouped into volumes, slice samples with slice pairs.

A prepared cache stores DBT slice-wise (one manifest row per slice with `volume_id, slice_index,
slice_count, slice_spacing_mm`, one breast mask per volume). `MixedPretrainDataset` has two kinds
of items: FFDM images (exactly the items of `PretrainDataset`) and DBT volumes. A DBT item draws
slice k inside the volume's tissue-bearing range and slice k + d (1 <= |d| <= d_max), returns slice
k's usual multi-crop sample (so DBT takes part in DINO, iBOT and KoLeo) plus one aligned crop of
each slice of the pair for the cross-slice loss:

    "slice_pair": float32 [2, 1, S, S]   # slice k, slice k + d: one box and flip, own intensities
    "slice_volume": int                   # volume index (same-volume negatives, docs)
    "slice_offset_mm": float              # d * slice spacing
    "slice_position_mm": float            # k * slice spacing (for dbt.negative_gap_mm)
    "slice_patch_tissue": float32 [N]     # tissue fraction per ViT patch of the pair crop

Keys come from `MixedSampler` (data/mixed_sampler.py), which fixes the DBT share of each batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch.utils.data

from mammodino.data.dbt_pairs import (
    draw_slice_pair,
    max_slice_offset,
    pair_transform,
    render_slice_pair,
    tissue_slice_range,
)
from mammodino.data.image_dataset import ImageRecord, PretrainDataset, read_cached_pixels
from mammodino.data.mixed_sampler import FFDM, MixedSampler, dbt_per_batch, decode_key
from mammodino.data.resumable_sampler import split_key
from mammodino.data.tissue_crops import TissueMap
from mammodino.data.transform import PretrainTransform
from mammodino.errors import CacheError, ConfigError
from mammodino.preprocess.cache import (
    manifest_file,
    read_cached_image,
    read_cached_mask,
    read_manifest,
)
from mammodino.settings import DbtSettings, Settings

# Reconstructions without a stated spacing: 1 mm is what DBT vendors reconstruct at.
DEFAULT_SLICE_SPACING_MM = 1.0
# Seeds of DBT items are (seed, epoch, volume, DBT_SEED_TAG, part): apart from FFDM's (seed, epoch, i).
DBT_SEED_TAG = 0xDB7


@dataclass(frozen=True)
class VolumeRecord:
    """One DBT volume of a prepared cache: its slices in order and its breast mask."""

    id: str
    slices: tuple[Path, ...]
    mask: Path
    spacing_mm: float


def split_manifest(folder: Path) -> tuple[list[ImageRecord], list[VolumeRecord]]:
    """FFDM image records and DBT volume records of a prepared cache (volumes in id order)."""
    rows = read_manifest(folder)
    images: list[ImageRecord] = []
    grouped: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        volume = row.get("volume_id") or ""
        if volume and int(row.get("slice_count") or 1) > 1:
            grouped.setdefault(volume, []).append(row)
        else:
            images.append(ImageRecord.from_row(folder, row))
    volumes = []
    for volume_id in sorted(grouped):
        slices = sorted(grouped[volume_id], key=lambda r: int(r["slice_index"]))
        indices = [int(r["slice_index"]) for r in slices]
        if indices != list(range(int(slices[0]["slice_count"]))):
            raise CacheError(
                f"{manifest_file(folder)}: DBT volume {volume_id} lists slices {indices[:3]}... of "
                f"{slices[0]['slice_count']} (rerun `mammodino prepare` to complete it)"
            )
        spacing = float(slices[0].get("slice_spacing_mm") or DEFAULT_SLICE_SPACING_MM)
        volumes.append(
            VolumeRecord(
                volume_id,
                tuple(folder / r["image"] for r in slices),
                folder / slices[0]["mask"],
                spacing,
            )
        )
    return images, volumes


def slice_tissue_contrast(slices: Sequence[Path], mask: np.ndarray) -> list[float]:
    """Per slice: mean inside the breast mask minus mean outside, read at 1/8 size (8-bit).

    A profile along the volume only: 8-bit reduced decoding is ample and keeps the first look
    at a volume cheap (one pass per worker, cached).
    """
    contrast = []
    inside = None
    for path in slices:
        pixels = read_cached_image(path, preview=True)
        if inside is None or inside.shape != pixels.shape:
            size = (pixels.shape[1], pixels.shape[0])
            inside = cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST) > 0
        if not inside.any():
            contrast.append(0.0)
            continue
        outside = float(pixels[~inside].mean()) if (~inside).any() else 0.0
        contrast.append(float(pixels[inside].mean()) - outside)
    return contrast


class MixedPretrainDataset(torch.utils.data.Dataset):
    """FFDM images and DBT volumes; a DBT item is a slice sample plus an aligned slice pair."""

    def __init__(
        self,
        images: list[ImageRecord],
        volumes: list[VolumeRecord],
        transform: PretrainTransform,
        settings: DbtSettings,
        dbt_fraction: float,
        seed: int,
        cache_mb: float,
    ) -> None:
        if not volumes:
            raise ConfigError("the pretraining source holds no DBT volumes")
        # Validates the fraction; a large batch has an FFDM slot whenever the fraction is < 1.
        dbt_per_batch(1 << 20, dbt_fraction, len(images), len(volumes))
        self.images = PretrainDataset(images, transform, seed, cache_mb) if images else None
        self.volumes = volumes
        self.transform = transform
        self.pair = pair_transform(transform, settings.pair_size)
        self.settings = settings
        self.dbt_fraction = float(dbt_fraction)
        self.seed = int(seed)
        self._ranges: dict[int, tuple[int, int]] = {}
        self._masks: dict[int, np.ndarray] = {}

    @property
    def n_images(self) -> int:
        """Number of FFDM images."""
        return len(self.images) if self.images is not None else 0

    def __len__(self) -> int:
        return self.n_images + len(self.volumes)

    def mixed_sampler(
        self, batch_size: int, seed: int, start_index: int = 0, rank: int = 0, world_size: int = 1
    ) -> MixedSampler:
        """The sampler that gives each batch of `batch_size` its share of DBT items."""
        quota = dbt_per_batch(batch_size, self.dbt_fraction, self.n_images, len(self.volumes))
        return MixedSampler(
            self.n_images, len(self.volumes), batch_size, quota, seed, start_index, rank, world_size
        )

    def set_epoch(self, epoch: int) -> None:
        """Epoch of plain FFDM indices (keys from `MixedSampler` carry their own epoch)."""
        if self.images is not None:
            self.images.set_epoch(epoch)

    def __getitem__(self, key: int) -> dict[str, Any]:
        kind, stream_key = decode_key(key)
        if kind == FFDM and self.images is not None:
            return self.images[stream_key]
        epoch, volume = split_key(stream_key, len(self.volumes))
        return self.volume_item(volume, epoch)

    def volume_item(self, volume: int, epoch: int) -> dict[str, Any]:
        """Slice k's multi-crop sample and the aligned pair (k, k + d) of one DBT volume."""
        record = self.volumes[volume]
        first, last = self.slice_range(volume)
        d_max = max_slice_offset(record.spacing_mm, self.settings.d_max_mm)
        seed = (self.seed, epoch, volume, DBT_SEED_TAG)
        k, other = draw_slice_pair(np.random.default_rng((*seed, 0)), first, last, d_max)
        pixels, intensity_max = read_cached_pixels(record.slices[k])
        partner, _ = read_cached_pixels(record.slices[other])
        mask = self._mask(volume, pixels.shape)
        tissue = TissueMap.from_mask(mask, pixels, intensity_max)
        index = self.n_images + volume
        sample = self.transform(pixels, tissue, (*seed, 1), intensity_max, index)
        a, b = render_slice_pair(
            self.pair, pixels, partner, tissue, (*seed, 2), intensity_max, index
        )
        sample["slice_pair"] = torch.stack([a["global_crops"][0], b["global_crops"][0]])
        sample["slice_patch_tissue"] = a["global_patch_tissue"][0].flatten()
        sample["slice_volume"] = volume
        sample["slice_offset_mm"] = float((other - k) * record.spacing_mm)
        sample["slice_position_mm"] = float(k * record.spacing_mm)
        return sample

    def slice_range(self, volume: int) -> tuple[int, int]:
        """Tissue-bearing [first, last] slices of a volume (two slices at least; cached)."""
        cached = self._ranges.get(volume)
        if cached is not None:
            return cached
        record = self.volumes[volume]
        mask = read_cached_mask(record.mask)
        means = slice_tissue_contrast(record.slices, mask)
        first, last = tissue_slice_range(means, self.settings.tissue_threshold)
        if first == last:  # a pair needs two slices: take the brighter neighbour too
            n = len(record.slices)
            left = means[first - 1] if first > 0 else -1.0
            right = means[last + 1] if last < n - 1 else -1.0
            first, last = (first - 1, last) if left >= right else (first, last + 1)
        self._ranges[volume] = (first, last)
        return first, last

    def _mask(self, volume: int, shape: tuple[int, int]) -> np.ndarray:
        mask = self._masks.get(volume)
        if mask is None or mask.shape != shape:
            mask = read_cached_mask(self.volumes[volume].mask, shape)
            if len(self._masks) > 64:
                self._masks.clear()
            self._masks[volume] = mask
        return mask


def build_mixed_dataset(settings: Settings, folder: Path) -> MixedPretrainDataset:
    """The mixed FFDM + DBT data set of a prepared cache, at `data.dbt_fraction`."""
    images, volumes = split_manifest(folder)
    return MixedPretrainDataset(
        images,
        volumes,
        PretrainTransform.from_settings(settings),
        settings.dbt,
        settings.data.dbt_fraction,
        seed=settings.train.seed,
        cache_mb=settings.data.cache_mb,
    )
