"""Intensity levels: the background to 0, the breast's brightest tissue to 1.

Vendors store the same anatomy in very different parts of their bit range. Normalised by bits
stored (`voi: none`), the display window of a GE "For Presentation" header here (2262 / 380 of
12 bits) covers a tenth of [0, 1], that of a Hologic one (109 / 500 of 14 bits) a fiftieth;
digitised film spans most of it. A backbone trained on one range sees another as a nearly flat
image (docs/prepare.md, "Intensity"). `dataset` (the default) stretches every image of a data set
alike, between the background and the brightest tissue of a sample of its images: each data set
gets the same range, and within it an image stays brighter or darker than another. `image`
stretches each image between its own levels, which also evens out the brightness differences
between images that density goes with.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

# Images measured for a data set's levels, evenly spaced over its sources (in their listed order).
SAMPLE_SIZE = 64

# The breast's top percentile becomes 1: high enough that only calcifications and markers (a
# few pixels on the downsampled copy) clip, low enough that one of them cannot set the scale.
BRIGHT_PERCENTILE = 99.9
# With less background than this (an image already cropped to the breast) the breast's darkest
# percentile stands in for the background level.
MIN_BACKGROUND_SHARE = 0.05
DARK_PERCENTILE = 0.1
# Levels closer than this describe a flat image: it is left as it is.
MIN_SPAN = 1e-3
# A cache whose breasts span less than this share of [0, 1] (1st to 99th percentile, median
# image) holds its tissue in a narrow band: mini-MIAS spans 0.77 after the stretch, the project's
# phantoms 0.70; a GE-like display window over a black background would leave about 0.15.
NARROW_SPREAD = 0.25
# That spread is measured this far inside the mask, whose edge pixels mix in background.
EDGE_PIXELS = 3


@dataclass(frozen=True)
class IntensityLevels:
    """The source values that become 0 and 1 in the cache (both in the reader's [0, 1])."""

    low: float = 0.0
    high: float = 1.0

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        """Pixels stretched so that `low` -> 0 and `high` -> 1 (not clipped)."""
        if (self.low, self.high) == (0.0, 1.0):
            return pixels
        scale = np.float32(1.0 / (self.high - self.low))
        return (pixels - np.float32(self.low)) * scale


def breast_levels(small: np.ndarray, mask: np.ndarray) -> IntensityLevels | None:
    """Levels of one image from its downsampled copy and breast mask (same grid).

    low: the median of the background (film base, detector floor; robust to labels and tape);
    high: the breast's 99.9th percentile. None for an empty mask or a flat image: nothing to
    measure (unlike levels 0 and 1, which a windowed image may well have).
    """
    breast = small[mask]
    if breast.size == 0:
        return None
    background = small[~mask]
    if background.size >= MIN_BACKGROUND_SHARE * small.size:
        low = float(np.median(background))
    else:
        low = float(np.percentile(breast, DARK_PERCENTILE))
    high = float(np.percentile(breast, BRIGHT_PERCENTILE))
    if not high - low >= MIN_SPAN:  # also catches NaN
        return None
    return IntensityLevels(low, high)


def sample_evenly(items: Sequence[str], size: int = SAMPLE_SIZE) -> list[str]:
    """Up to `size` items spread evenly over `items`, first and last included."""
    if len(items) <= size:
        return list(items)
    picks = np.linspace(0, len(items) - 1, size).round().astype(int)
    return [items[i] for i in sorted(set(picks.tolist()))]


def dataset_levels(
    sources: Sequence[str], measure: Callable[[str], IntensityLevels | None]
) -> IntensityLevels | None:
    """A sample's levels: the median of its lows, the highest of its highs; None if none measured.

    The highest, so that no image of the sample clips its brightest tissue (on all of mini-MIAS
    2 of 322 images clip more than 1% of their breast, at most 1.3%); with the median of the
    highs one image in ten would clip more than 5%, with their 95th percentile 14 images more
    than 1% (up to 20%). `measure` gives one source's own levels, or None for a file that cannot
    be read or holds no breast.
    """
    measured = [m for m in map(measure, sample_evenly(sources)) if m is not None]
    if not measured:
        return None
    low = float(np.median([m.low for m in measured]))
    high = max(m.high for m in measured)
    return IntensityLevels(low, high) if high - low >= MIN_SPAN else None


def tissue_spread(images: Iterable[tuple[np.ndarray, np.ndarray]]) -> float | None:
    """Median over (image, mask) pairs of the breast's 1st-99th percentile width; None if none.

    Measured 3 pixels in from the mask's edge, whose pixels mix in background.
    """
    interior = np.ones((2 * EDGE_PIXELS + 1,) * 2, np.uint8)
    spreads = []
    for image, mask in images:
        breast = image[cv2.erode(mask.astype(np.uint8), interior) > 0]
        if breast.size:
            low, high = np.percentile(breast, (1, 99))
            spreads.append(float(high - low))
    return float(np.median(spreads)) if spreads else None
