"""Breast-tissue-aware crop boxes (METHOD.md section 2).

A crop's size is drawn exactly like torchvision's RandomResizedCrop (area fraction of the whole
image, log-uniform aspect). Its centre is drawn from breast pixels (optionally weighted toward bright,
dense tissue) and the candidate is accepted when its tissue fraction reaches `min_tissue`; otherwise
a new candidate (size and centre) is drawn, and after `max_tries` the candidate with the most tissue
is kept. Tissue fractions come in O(1) per box from the integral image of the breast mask.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numpy as np

from mammodino.errors import ConfigError
from mammodino.settings import CROP_SAMPLERS

# torchvision's RandomResizedCrop tries this many (scale, aspect) draws before its central fallback.
_SIZE_ATTEMPTS = 10
# Centre candidates drawn at once for rejection sampling; rounds before the exact (slow) fallback.
_CENTRE_BATCH = 64
_CENTRE_ROUNDS = 4


class CropBox(NamedTuple):
    """A half-open pixel box: columns x0..x1-1, rows y0..y1-1."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0


def binary_mask(mask: np.ndarray) -> np.ndarray:
    """A breast mask as uint8 0/1 (any nonzero value is tissue)."""
    if mask.ndim != 2 or mask.size == 0:
        raise ValueError(f"breast mask must be a non-empty 2-D array, got shape {mask.shape}")
    if mask.dtype == np.uint8:
        return cv2.threshold(mask, 0, 1, cv2.THRESH_BINARY)[1]
    return (mask > 0).astype(np.uint8)


def integral_image(mask: np.ndarray) -> np.ndarray:
    """Integral image (H+1, W+1, int32) of a breast mask (any nonzero value is tissue)."""
    return cv2.integral(binary_mask(mask), sdepth=cv2.CV_32S)


def box_tissue_fraction(integral: np.ndarray, box: CropBox) -> float:
    """Share of the box's pixels inside the breast mask, in O(1)."""
    x0, y0, x1, y1 = box
    area = (x1 - x0) * (y1 - y0)
    if area <= 0:
        return 0.0
    total = (
        int(integral[y1, x1])
        - int(integral[y0, x1])
        - int(integral[y1, x0])
        + int(integral[y0, x0])
    )
    return total / area


def patch_tissue_fractions(
    integral: np.ndarray, box: CropBox, out_size: int, patch_size: int
) -> np.ndarray:
    """Tissue fraction of every ViT patch of the crop resized to out_size x out_size.

    Output patch k spans output pixels [k*p, (k+1)*p), i.e. crop pixels scaled by box/out_size,
    rounded to whole pixels (at least one pixel per patch). Returns float32 [n, n], n = out_size // p.
    """
    n = out_size // patch_size
    lo_y, hi_y = _patch_spans(box.y0, box.height, n, patch_size / out_size)
    lo_x, hi_x = _patch_spans(box.x0, box.width, n, patch_size / out_size)
    lo_y, hi_y = lo_y[:, None], hi_y[:, None]
    lo_x, hi_x = lo_x[None, :], hi_x[None, :]
    sums = (
        integral[hi_y, hi_x].astype(np.int64)
        - integral[lo_y, hi_x]
        - integral[hi_y, lo_x]
        + integral[lo_y, lo_x]
    )
    areas = (hi_y - lo_y) * (hi_x - lo_x)
    return (sums / areas).astype(np.float32)


def _patch_spans(start: int, length: int, n: int, step: float) -> tuple[np.ndarray, np.ndarray]:
    """First and one-past-last pixel of each of n patches along one axis of a crop."""
    pix = np.rint(start + np.arange(n + 1) * step * length).astype(np.int64)
    end = start + max(length, 1)
    # Crops with fewer pixels than patches: give each patch at least one pixel, inside the crop.
    hi = np.minimum(np.maximum(pix[1:], pix[:-1] + 1), end)
    lo = np.minimum(pix[:-1], hi - 1)
    return lo, hi


def draw_crop_size(
    rng: np.random.Generator,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
) -> tuple[int, int] | None:
    """(h, w) like torchvision's RandomResizedCrop.get_params, or None where it falls back."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(_SIZE_ATTEMPTS):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return h, w
    return None


def central_fallback_box(height: int, width: int, ratio: tuple[float, float]) -> CropBox:
    """torchvision's fallback: the largest central box whose aspect lies within `ratio`."""
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        h, w = height, width
    y0, x0 = (height - h) // 2, (width - w) // 2
    return CropBox(x0, y0, x0 + w, y0 + h)


def random_resized_crop_box(
    rng: np.random.Generator,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
) -> CropBox:
    """Plain RandomResizedCrop box: size as torchvision, position uniform over the image."""
    size = draw_crop_size(rng, height, width, scale, ratio)
    if size is None:
        return central_fallback_box(height, width, ratio)
    h, w = size
    y0 = int(rng.integers(0, height - h + 1))
    x0 = int(rng.integers(0, width - w + 1))
    return CropBox(x0, y0, x0 + w, y0 + h)


@dataclass
class TissueMap:
    """What the sampler needs of one image: its 0/1 breast mask, the mask's integral image and,
    optionally, the intensities that weight crop centres toward dense tissue (`dense_weight` > 0).
    """

    mask: np.ndarray
    integral: np.ndarray
    intensity: np.ndarray | None = None
    intensity_max: float = 1.0

    @classmethod
    def from_mask(
        cls, mask: np.ndarray, intensity: np.ndarray | None = None, intensity_max: float = 1.0
    ) -> TissueMap:
        """Build from a breast mask (nonzero = breast) and the image it belongs to."""
        binary = binary_mask(mask)
        return cls(binary, cv2.integral(binary, sdepth=cv2.CV_32S), intensity, intensity_max)

    @property
    def shape(self) -> tuple[int, int]:
        return self.mask.shape

    @property
    def nbytes(self) -> int:
        """Memory held besides the intensities (which belong to the image)."""
        return self.mask.nbytes + self.integral.nbytes

    @property
    def tissue_pixels(self) -> int:
        return int(self.integral[-1, -1])

    def sample_centre(self, rng: np.random.Generator, dense_weight: float = 0.0) -> tuple[int, int]:
        """A breast pixel (row, col), uniform, or with weight 1 + dense_weight * intensity."""
        height, width = self.shape
        if self.tissue_pixels == 0:
            return int(rng.integers(height)), int(rng.integers(width))
        use_weight = dense_weight > 0 and self.intensity is not None
        # Rejection sampling: exact, and O(1) per draw when the breast fills a fair share of the image.
        flat_mask = self.mask.reshape(-1)
        for _ in range(_CENTRE_ROUNDS):
            flat = rng.integers(0, height * width, _CENTRE_BATCH)
            keep = flat_mask[flat] > 0
            if use_weight:
                rows, cols = np.divmod(flat, width)
                weight = 1.0 + dense_weight * self._intensity_at(rows, cols)
                keep &= rng.uniform(0.0, 1.0 + dense_weight, _CENTRE_BATCH) < weight
            hits = np.flatnonzero(keep)
            if hits.size:
                row, col = divmod(int(flat[hits[0]]), width)
                return row, col
        return self._sample_centre_exact(rng, dense_weight if use_weight else 0.0)

    def _intensity_at(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        assert self.intensity is not None
        return self.intensity[rows, cols].astype(np.float64) / self.intensity_max

    def _sample_centre_exact(
        self, rng: np.random.Generator, dense_weight: float
    ) -> tuple[int, int]:
        """Exact draw over all breast pixels, for masks too small for rejection sampling."""
        inside = np.flatnonzero(self.mask)
        rows, cols = np.divmod(inside, self.shape[1])
        if dense_weight > 0:
            weight = 1.0 + dense_weight * self._intensity_at(rows, cols)
            pick = rng.choice(inside.size, p=weight / weight.sum())
        else:
            pick = rng.integers(inside.size)
        return int(rows[pick]), int(cols[pick])


def sample_crop_box(
    rng: np.random.Generator,
    tissue: TissueMap,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    min_tissue: float,
    max_tries: int = 10,
    dense_weight: float = 0.0,
    sampler: str = "tissue",
) -> tuple[CropBox, float]:
    """A crop box and its tissue fraction; `sampler='random'` gives plain RandomResizedCrop."""
    height, width = tissue.shape
    if sampler == "random":
        box = random_resized_crop_box(rng, height, width, scale, ratio)
        return box, box_tissue_fraction(tissue.integral, box)
    if sampler != "tissue":
        raise ConfigError(f"crops.sampler must be one of {CROP_SAMPLERS}, got {sampler!r}")
    best_box, best_fraction = None, -1.0
    for _ in range(max(1, max_tries)):
        size = draw_crop_size(rng, height, width, scale, ratio)
        if size is None:
            box = central_fallback_box(height, width, ratio)
        else:
            h, w = size
            row, col = tissue.sample_centre(rng, dense_weight)
            # Clamp so the box stays inside the image; the centre moves, the size does not.
            y0 = min(max(row - h // 2, 0), height - h)
            x0 = min(max(col - w // 2, 0), width - w)
            box = CropBox(x0, y0, x0 + w, y0 + h)
        fraction = box_tissue_fraction(tissue.integral, box)
        if fraction >= min_tissue:
            return box, fraction
        if fraction > best_fraction:
            best_box, best_fraction = box, fraction
    assert best_box is not None
    return best_box, best_fraction


def resize_crop(image: np.ndarray, box: CropBox, out_size: int) -> np.ndarray:
    """Cut the box out of the image and resize it to out_size x out_size (area when shrinking)."""
    sub = image[box.y0 : box.y1, box.x0 : box.x1]
    shrinking = box.width >= out_size and box.height >= out_size
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(sub, (out_size, out_size), interpolation=interpolation)
