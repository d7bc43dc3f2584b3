"""Lesion localization from patch tokens: a logistic-regression probe gives a heat map per image.

Patches are labelled positive when their centre lies inside a lesion disc or box (and the patch
holding the lesion centre always is, so small calcifications count). Metrics on held-out images:
- pointing game: the heat map's argmax lies within one patch (Chebyshev distance) of a lesion
  patch; the hit rate is over images that have a lesion (`hit_rate_chance`: a uniformly random
  pointer's expected rate, for scale);
- patch AUROC: lesion patches against all other patches of the held-out images (normal images
  included, so the probe is also judged on the false alarms it raises there);
- `position_prior`: both figures for a heat map that knows position only (the training images'
  lesion frequency at each grid cell), so that a probe's lead over where lesions usually are
  shows (a ViT's tokens carry their position: even a random-init one localizes above chance).

Lesions come from the labels column `lesions` (JSON, original pixel coordinates):
`[{"type": "circle", "x": col, "y": row, "r": radius}, {"type": "box", "x0":, "y0":, "x1":, "y1":}]`;
`[]` marks an image known to be lesion-free, an empty cell an image whose lesions are unknown
(left out). They reach the patch grid through the cache geometry of the features meta.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

import numpy as np

from mammodino.errors import EvaluationError
from mammodino.eval.features import Features
from mammodino.eval.metrics import auroc, bootstrap_ci
from mammodino.eval.splits import patient_folds

NEGATIVES_PER_IMAGE = 32  # background patches are plentiful; a sample keeps the probe fast
PATCH_BOOT_MAX = 200  # patch-level AUROC bootstrap is costly (all patches per replicate)


def parse_lesions(text: str | None) -> list[dict] | None:
    """Lesion shapes of a labels cell: a list (maybe empty), or None when unknown."""
    if text is None or not text.strip():
        return None
    try:
        shapes = json.loads(text)
    except json.JSONDecodeError as err:
        raise EvaluationError(f"lesions cell is not JSON: {text[:40]!r}") from err
    if not isinstance(shapes, list) or any(s.get("type") not in ("circle", "box") for s in shapes):
        raise EvaluationError(f"lesions must be a list of circle/box shapes: {text[:40]!r}")
    return shapes


def lesion_patch_mask(shapes: Sequence[dict], grid_h: int, grid_w: int) -> np.ndarray:
    """Bool [grid_h, grid_w]: patches inside a lesion. Shapes are in patch units (patch (i, j)
    spans x in [j, j+1), y in [i, i+1))."""
    yy, xx = np.mgrid[0:grid_h, 0:grid_w] + 0.5
    mask = np.zeros((grid_h, grid_w), dtype=bool)
    for s in shapes:
        if s["type"] == "circle":
            cx, cy = s["x"], s["y"]
            mask |= (xx - cx) ** 2 + (yy - cy) ** 2 <= s["r"] ** 2
        else:
            cx, cy = (s["x0"] + s["x1"]) / 2, (s["y0"] + s["y1"]) / 2
            mask |= (xx >= s["x0"]) & (xx <= s["x1"]) & (yy >= s["y0"]) & (yy <= s["y1"])
        i, j = int(np.floor(cy)), int(np.floor(cx))
        if 0 <= i < grid_h and 0 <= j < grid_w:
            mask[i, j] = True
    return mask


def pointing_hit(heatmap: np.ndarray, lesion_mask: np.ndarray, tolerance: int = 1) -> bool:
    """Whether the heat map's maximum lies within `tolerance` patches of a lesion patch."""
    i, j = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    window = lesion_mask[
        max(0, i - tolerance) : i + tolerance + 1, max(0, j - tolerance) : j + tolerance + 1
    ]
    return bool(window.any())


def patch_auroc(heatmaps: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> float:
    """AUROC of patch scores against patch lesion labels, pooled over images."""
    scores = np.concatenate([h.ravel() for h in heatmaps])
    labels = np.concatenate([m.ravel() for m in masks])
    return auroc(labels, scores)


ToCache = Callable[[dict, float, float], tuple[float, float]]


def shapes_to_grid(
    shapes: Sequence[dict],
    meta: dict[str, str],
    grid_h: int,
    grid_w: int,
    to_cache: ToCache | None = None,
) -> list:
    """Map shapes from original pixels to patch units through the cache geometry of `meta`.

    `to_cache(meta, x, y) -> (x, y)` defaults to `preprocess.geometry.original_to_cache`.
    """
    if to_cache is None:
        from mammodino.preprocess.geometry import original_to_cache as to_cache

    # The manifest's cache size is cache_width/cache_height (width/height are the original's).
    width = float(meta.get("cache_width") or meta.get("width") or "nan")
    height = float(meta.get("cache_height") or meta.get("height") or "nan")
    x0 = float(meta.get("grid_x0") or 0.0)
    y0 = float(meta.get("grid_y0") or 0.0)
    x1 = float(meta.get("grid_x1") or width)
    y1 = float(meta.get("grid_y1") or height)
    sx, sy = grid_w / (x1 - x0), grid_h / (y1 - y0)

    def to_grid(x: float, y: float) -> tuple[float, float]:
        # to_cache gives pixel-centre coordinates; + 0.5 measures from the image edge instead.
        cx, cy = to_cache(meta, x, y)
        return (cx + 0.5 - x0) * sx, (cy + 0.5 - y0) * sy

    try:
        return _shapes_to_grid(shapes, to_grid)
    except (KeyError, ValueError) as err:
        raise EvaluationError(
            f"image {meta.get('id', '?')}: features meta lacks the cache geometry ({err}); "
            "embed from a prepared cache so lesions can be placed on the patch grid"
        ) from err


def _shapes_to_grid(shapes: Sequence[dict], to_grid) -> list:
    out = []
    for s in shapes:
        if s["type"] == "circle":
            gx, gy = to_grid(s["x"], s["y"])
            ex, _ = to_grid(s["x"] + s["r"], s["y"])
            out.append({"type": "circle", "x": gx, "y": gy, "r": abs(ex - gx)})
        else:
            ax, ay = to_grid(s["x0"], s["y0"])
            bx, by = to_grid(s["x1"], s["y1"])
            out.append(
                {
                    "type": "box",
                    "x0": min(ax, bx),
                    "y0": min(ay, by),
                    "x1": max(ax, bx),
                    "y1": max(ay, by),
                }
            )
    return out


def position_prior_text(
    prior: dict | None, keys: Sequence[str] = ("hit_rate", "patch_auroc")
) -> str:
    """`position_prior`'s figures `keys` joined by " / "; "-" for results made before it.

    Undefined figures (no lesion image, or no lesion patch) are NaN in memory and null in
    results.json: both print as "n/a".
    """
    if not prior:
        return "-"
    values = [prior.get(key) for key in keys]
    return " / ".join("n/a" if v is None or v != v else f"{v:.3f}" for v in values)


def fit_patch_probe(tokens: np.ndarray, labels: np.ndarray, seed: int = 0):
    """Standardised logistic regression on patch tokens [M, D] -> a scorer of [..., D] tokens."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if labels.all() or not labels.any():
        raise EvaluationError("the training images need both lesion and lesion-free patches")
    model = make_pipeline(
        StandardScaler(),
        LogisticRegression(C=0.1, class_weight="balanced", max_iter=2000, random_state=seed),
    )
    model.fit(tokens.astype(np.float32), labels)

    def score(grid: np.ndarray) -> np.ndarray:
        flat = grid.reshape(-1, grid.shape[-1]).astype(np.float32)
        return model.predict_proba(flat)[:, 1].reshape(grid.shape[:-1])

    return score


def evaluate_localization(
    features: Features,
    joined: list[dict[str, str] | None],
    patients: Sequence[str],
    lesion_column: str = "lesions",
    *,
    n_folds: int = 5,
    seed: int = 0,
    n_boot: int = 1000,
    progress: Callable[[], None] | None = None,
    to_cache: ToCache | None = None,
) -> tuple[dict, dict[str, np.ndarray]]:
    """Hit rate and patch AUROC with patient-level folds; also the out-of-fold heat maps."""
    if features.patch_grid is None:
        raise EvaluationError("localization needs `patch_grid` in the features (embed --grid)")
    grid = features.patch_grid
    _, gh, gw, _ = grid.shape
    keep, masks = [], []
    for i, row in enumerate(joined):
        shapes = parse_lesions((row or {}).get(lesion_column))
        if shapes is None:
            continue
        keep.append(i)
        masks.append(
            lesion_patch_mask(shapes_to_grid(shapes, features.meta[i], gh, gw, to_cache), gh, gw)
        )
    if not keep:
        raise EvaluationError(f"no image has a {lesion_column!r} cell ('[]' marks lesion-free)")
    keep = np.asarray(keep)
    masks = np.stack(masks)
    has_lesion = masks.reshape(len(keep), -1).any(axis=1)
    groups = np.asarray(patients)[keep]
    fold = patient_folds(groups, has_lesion.astype(int), n_folds, seed)
    rng = np.random.default_rng(seed)
    heatmaps = np.zeros(masks.shape, dtype=np.float32)
    priors = np.zeros(masks.shape, dtype=np.float32)
    for k in range(n_folds):
        train = np.flatnonzero(fold != k)
        priors[fold == k] = masks[train].mean(axis=0)
        tokens, labels = [], []
        for t in train:
            pos = np.flatnonzero(masks[t].ravel())
            neg = np.flatnonzero(~masks[t].ravel())
            neg = rng.choice(neg, min(NEGATIVES_PER_IMAGE, len(neg)), replace=False)
            flat = grid[keep[t]].reshape(gh * gw, -1)
            tokens.append(flat[np.concatenate([pos, neg])])
            labels.append(np.concatenate([np.ones(len(pos), bool), np.zeros(len(neg), bool)]))
        score = fit_patch_probe(np.concatenate(tokens), np.concatenate(labels), seed)
        for t in np.flatnonzero(fold == k):
            heatmaps[t] = score(grid[keep[t]])
        if progress is not None:
            progress()
    lesion_images = np.flatnonzero(has_lesion)
    hits = np.asarray([pointing_hit(heatmaps[t], masks[t]) for t in lesion_images], dtype=float)
    result: dict = {"n_images": int(len(keep)), "n_images_with_lesions": int(len(lesion_images))}

    def hit_rate(y, hit, weight):
        return float(np.average(hit, weights=weight))

    rate = {"value": float(hits.mean()) if len(hits) else float("nan")}
    if n_boot and len(hits):
        low, high, n_valid = bootstrap_ci(hit_rate, hits, hits, groups[lesion_images], n_boot, seed)
        rate.update(ci95=[low, high], n_boot=n_valid)
    result["hit_rate"] = rate
    # What a pointer placed uniformly at random would score: share of patches that count as hits.
    from scipy.ndimage import binary_dilation

    near = [binary_dilation(masks[t], np.ones((3, 3), bool)).mean() for t in lesion_images]
    result["hit_rate_chance"] = float(np.mean(near)) if near else float("nan")
    patch_groups = np.repeat(groups, gh * gw)
    scores, labels = heatmaps.ravel(), masks.ravel()
    value = auroc(labels, scores) if labels.any() and not labels.all() else float("nan")
    result["patch_auroc"] = {"value": value}
    if n_boot and np.isfinite(value):
        boots = min(n_boot, PATCH_BOOT_MAX)
        low, high, n_valid = bootstrap_ci(auroc, labels, scores, patch_groups, boots, seed)
        result["patch_auroc"].update(ci95=[low, high], n_boot=n_valid)
    prior_hits = [pointing_hit(priors[t], masks[t]) for t in lesion_images]
    result["position_prior"] = {
        "hit_rate": float(np.mean(prior_hits)) if prior_hits else float("nan"),
        "patch_auroc": auroc(labels, priors.ravel()) if np.isfinite(value) else float("nan"),
    }
    result["per_fold"] = [
        {
            "fold": k,
            "n_test": int((fold == k).sum()),
            "hit_rate": float(hits[fold[lesion_images] == k].mean())
            if (fold[lesion_images] == k).any()
            else None,
        }
        for k in range(n_folds)
    ]
    return result, {"ids": features.ids[keep], "heatmaps": heatmaps, "lesion_masks": masks}
