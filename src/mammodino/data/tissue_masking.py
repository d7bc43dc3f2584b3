"""iBOT block masks drawn over breast tissue only (METHOD.md section 3).

`block_mask` follows DINOv2's `MaskingGenerator` (dinov2/data/masking.py): rectangular blocks of
random area and log-uniform aspect are added until the target count is reached. With an `allowed`
grid (tissue patches), each block is anchored on a tissue patch, only tissue patches inside it are
masked, and the target is a share of the tissue patches: background tokens are never masked.
Without `allowed` it is DINOv2's algorithm step for step (block top-left uniform over the grid).
With `masking.dense_weight` > 0, anchors are drawn with weight 1 + dense_weight * the patch's
brightness relative to the crop's tissue patches (0 for the faintest, 1 for the brightest): the
masks fall more often on fibroglandular tissue, which density is judged by, than on fat.
"""

from __future__ import annotations

import math

import numpy as np

from mammodino.settings import MaskingSettings

# DINOv2 train.py builds its generator with max_num_patches = 0.5 * N: no block exceeds half the grid.
MAX_BLOCK_FRACTION = 0.5
# DINOv2's _mask tries this many blocks before giving up on adding one.
_BLOCK_ATTEMPTS = 10


def block_mask(
    rng: np.random.Generator,
    grid_shape: tuple[int, int],
    num_masking_patches: int,
    allowed: np.ndarray | None = None,
    min_block_patches: float = 4,
    block_aspect: tuple[float, float] = (0.3, 1 / 0.3),
    anchor_weights: np.ndarray | None = None,
) -> np.ndarray:
    """A bool [h, w] block mask with about num_masking_patches True cells, inside `allowed` only.

    `anchor_weights` ([h, w], with `allowed`): relative odds of each tissue patch as a block anchor
    (default: uniform).
    """
    height, width = grid_shape
    n_candidates = height * width if allowed is None else int(allowed.sum())
    max_block = MAX_BLOCK_FRACTION * n_candidates
    log_aspect = (math.log(block_aspect[0]), math.log(block_aspect[1]))
    mask = np.zeros(grid_shape, dtype=bool)
    anchors = None if allowed is None else np.flatnonzero(allowed)
    odds = None
    if anchors is not None and anchor_weights is not None:
        weights = anchor_weights.reshape(-1)[anchors].astype(np.float64)
        odds = weights / weights.sum()
    count = 0
    while count < num_masking_patches:
        budget = min(num_masking_patches - count, max_block)
        delta = _add_block(rng, mask, budget, min_block_patches, log_aspect, allowed, anchors, odds)
        if delta == 0:
            break
        count += delta
    return mask


def _uniform(rng: np.random.Generator, a: float, b: float) -> float:
    """Python's random.uniform: defined for a > b too (DINOv2 relies on it near the target)."""
    return a + (b - a) * rng.random()


def _add_block(
    rng: np.random.Generator,
    mask: np.ndarray,
    budget: float,
    min_block_patches: float,
    log_aspect: tuple[float, float],
    allowed: np.ndarray | None,
    anchors: np.ndarray | None,
    odds: np.ndarray | None = None,
) -> int:
    """Add one block to `mask` in place; the number of newly masked cells (0: none fitted)."""
    height, width = mask.shape
    for _ in range(_BLOCK_ATTEMPTS):
        target_area = _uniform(rng, min_block_patches, budget)
        aspect = math.exp(_uniform(rng, *log_aspect))
        h = int(round(math.sqrt(target_area * aspect)))
        w = int(round(math.sqrt(target_area / aspect)))
        if not (w < width and h < height):
            continue
        if anchors is None:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
        else:
            # The block covers a random tissue patch at a random place inside the block.
            pick = rng.integers(anchors.size) if odds is None else rng.choice(anchors.size, p=odds)
            row, col = divmod(int(anchors[pick]), width)
            top = min(max(row - int(rng.integers(max(h, 1))), 0), height - h)
            left = min(max(col - int(rng.integers(max(w, 1))), 0), width - w)
        window = mask[top : top + h, left : left + w]
        new = ~window if allowed is None else ~window & allowed[top : top + h, left : left + w]
        delta = int(new.sum())
        if 0 < delta <= budget:
            window |= new
            return delta
    return 0


def sample_crop_mask(
    rng: np.random.Generator,
    patch_tissue: np.ndarray,
    config: MaskingSettings,
    patch_brightness: np.ndarray | None = None,
) -> np.ndarray:
    """The iBOT mask (bool, flat [n*n]) of one global crop from its patch tissue fractions.

    With probability `config.probability` the crop is masked at a ratio drawn uniformly from
    `config.ratio`: of its tissue patches (mode tissue) or of all patches (mode random). A crop with
    fewer than `min_tissue_patches` tissue patches is not masked in tissue mode. In tissue mode,
    `patch_brightness` (mean intensity per patch, grid-shaped) weights the block anchors when
    `config.dense_weight` > 0.
    """
    grid_shape = patch_tissue.shape
    if rng.random() >= config.probability:
        return np.zeros(patch_tissue.size, dtype=bool)
    ratio = rng.uniform(*config.ratio)
    if config.mode == "random":
        target = int(patch_tissue.size * ratio)
        allowed = None
    else:
        allowed = patch_tissue >= config.patch_tissue_threshold
        n_tissue = int(allowed.sum())
        if n_tissue < config.min_tissue_patches:
            return np.zeros(patch_tissue.size, dtype=bool)
        target = int(n_tissue * ratio)
    weights = None
    if uses_patch_brightness(config) and allowed.any() and patch_brightness is not None:
        weights = dense_anchor_weights(patch_brightness, allowed, config.dense_weight)
    mask = block_mask(
        rng, grid_shape, target, allowed, config.block_min_patches, config.block_aspect, weights
    )
    return mask.reshape(-1)


def uses_patch_brightness(config: MaskingSettings) -> bool:
    """True when `sample_crop_mask` weights anchors by patch brightness (tissue mode only)."""
    return config.mode == "tissue" and config.dense_weight > 0


def patch_means(image: np.ndarray, patch_size: int) -> np.ndarray:
    """Mean of each patch_size x patch_size patch of a 2-D image whose sides are multiples of it."""
    height, width = image.shape
    grid = image.reshape(height // patch_size, patch_size, width // patch_size, patch_size)
    return grid.mean(axis=(1, 3))


def dense_anchor_weights(
    patch_brightness: np.ndarray, allowed: np.ndarray, dense_weight: float
) -> np.ndarray:
    """1 + dense_weight * brightness rescaled to [0, 1] over the allowed patches (grid-shaped).

    Relative to the crop, not absolute: a fatty breast's brightest tissue is still where its
    glandular structure is, and the odds stay comparable between dense and fatty breasts.
    """
    values = patch_brightness[allowed]
    low, high = float(values.min()), float(values.max())
    relative = np.clip((patch_brightness - low) / max(high - low, 1e-12), 0.0, 1.0)
    return np.where(allowed, 1.0 + dense_weight * relative, 0.0)
