"""One pretraining sample from one image: tissue-aware crops, patch tissue, iBOT masks, augmentations.

`PretrainTransform(image, tissue, seed)` is the whole per-sample recipe; datasets (cache, folder,
shards) only decode the image and its breast mask and call it. Crops, augmentations and masks use
three independent random streams spawned from the sample's seed, so switching one part (for
example `masking.mode`) never changes the draws of the others.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mammodino.data.augment import augment_intensity, draw_vflip, vflip
from mammodino.data.tissue_crops import (
    CropBox,
    TissueMap,
    patch_tissue_fractions,
    resize_crop,
    sample_crop_box,
)
from mammodino.data.tissue_masking import patch_means, sample_crop_mask, uses_patch_brightness
from mammodino.settings import AugmentSettings, CropSettings, MaskingSettings, Settings


@dataclass
class CropPlan:
    """The geometry of one sample: a box and a vertical flip per crop."""

    global_boxes: list[CropBox] = field(default_factory=list)
    global_flips: list[bool] = field(default_factory=list)
    local_boxes: list[CropBox] = field(default_factory=list)
    local_flips: list[bool] = field(default_factory=list)


def sample_rngs(seed: int | Sequence[int], n: int = 3) -> list[np.random.Generator]:
    """n independent generators from one sample seed (an int or a tuple such as (seed, epoch, i))."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(n)]


class PretrainTransform:
    """Build the sample dict of docs/ARCHITECTURE.md from one image and its tissue map."""

    def __init__(
        self,
        crops: CropSettings,
        masking: MaskingSettings,
        augment: AugmentSettings,
        patch_size: int,
    ) -> None:
        self.crops = crops
        self.masking = masking
        self.augment = augment
        self.patch_size = patch_size

    @classmethod
    def from_settings(cls, settings: Settings) -> PretrainTransform:
        """Sections crops, masking, augment and the ViT's `model.patch_size`."""
        return cls(settings.crops, settings.masking, settings.augment, settings.model.patch_size)

    def __call__(
        self,
        image: np.ndarray,
        tissue: TissueMap,
        seed: int | Sequence[int],
        intensity_max: float = 65535.0,
        index: int = 0,
    ) -> dict[str, Any]:
        """Crops, patch tissue fractions and masks of one image; `image` holds raw values."""
        crop_rng, aug_rng, mask_rng = sample_rngs(seed)
        plan = self.plan(crop_rng, tissue)
        return self.render(image, tissue, plan, aug_rng, mask_rng, intensity_max, index)

    def plan(self, rng: np.random.Generator, tissue: TissueMap) -> CropPlan:
        """Draw every crop box and flip of one sample (global crops first)."""
        c, flip_p = self.crops, self.augment.vflip_p
        plan = CropPlan()
        for _ in range(c.n_global):
            plan.global_boxes.append(self._box(rng, tissue, c.global_scale, c.global_min_tissue))
            plan.global_flips.append(draw_vflip(rng, flip_p))
        for _ in range(c.n_local):
            plan.local_boxes.append(self._box(rng, tissue, c.local_scale, c.local_min_tissue))
            plan.local_flips.append(draw_vflip(rng, flip_p))
        return plan

    def render(
        self,
        image: np.ndarray,
        tissue: TissueMap,
        plan: CropPlan,
        aug_rng: np.random.Generator,
        mask_rng: np.random.Generator,
        intensity_max: float = 65535.0,
        index: int = 0,
    ) -> dict[str, Any]:
        """The sample dict of an image cut by a crop plan (aligned DBT slices share one plan)."""
        c = self.crops
        scale = np.float32(1.0 / intensity_max)
        globals_, tissues, masks = [], [], []
        weighted = uses_patch_brightness(self.masking)
        for i, (box, flip) in enumerate(zip(plan.global_boxes, plan.global_flips, strict=True)):
            crop = resize_crop(image, box, c.global_size).astype(np.float32) * scale
            patch_tissue = patch_tissue_fractions(
                tissue.integral, box, c.global_size, self.patch_size
            )
            if flip:
                crop, patch_tissue = vflip(crop), vflip(patch_tissue)
            brightness = patch_means(crop, self.patch_size) if weighted else None
            globals_.append(augment_intensity(crop, aug_rng, self.augment, "global", i))
            tissues.append(patch_tissue)
            masks.append(sample_crop_mask(mask_rng, patch_tissue, self.masking, brightness))
        locals_ = []
        for i, (box, flip) in enumerate(zip(plan.local_boxes, plan.local_flips, strict=True)):
            crop = resize_crop(image, box, c.local_size).astype(np.float32) * scale
            crop = vflip(crop) if flip else crop
            locals_.append(augment_intensity(crop, aug_rng, self.augment, "local", i))
        return {
            "global_crops": torch.from_numpy(np.stack(globals_)[:, None]),
            "local_crops": torch.from_numpy(_stack(locals_, c.local_size)[:, None]),
            "global_patch_tissue": torch.from_numpy(np.stack(tissues)),
            "masks": torch.from_numpy(np.stack(masks)),
            "index": int(index),
        }

    def _box(
        self,
        rng: np.random.Generator,
        tissue: TissueMap,
        scale: tuple[float, float],
        min_tissue: float,
    ) -> CropBox:
        c = self.crops
        box, _ = sample_crop_box(
            rng, tissue, scale, c.ratio, min_tissue, c.max_tries, c.dense_weight, c.sampler
        )
        return box


def _stack(crops: list[np.ndarray], size: int) -> np.ndarray:
    """Stack crops; an empty list (n_local = 0) gives a [0, size, size] array."""
    if not crops:
        return np.zeros((0, size, size), dtype=np.float32)
    return np.stack(crops)
