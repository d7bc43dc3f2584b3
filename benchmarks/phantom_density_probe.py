"""Where a frozen backbone's density signal is: whole image vs the breast's interior (issue 13).

For each backbone (run folder, checkpoint, or `random:vit_tiny/16`) prints the k-NN density
accuracy of its CLS token on the monitor's input (whole images, zero-padded square), on the
breast's inner box (the cache's central rows, chest-wall side, `--inner` of each side), a
patient-grouped 5-fold logistic regression on the whole-image CLS, and, once, k-NN on the
standardised intensity entries of the hand-crafted baseline (histogram, mean, sd, percentiles,
moments, breast area, inside the cached mask): what the phantom's density classes rest on.
With `--regress COLUMN ...` (default: the phantom's `gland_fraction` and `thickness_mm`) it also
prints how much of each continuous column a patient-grouped 5-fold ridge regression recovers from
the CLS (R^2, whole image and inner box) and how the breast's mean brightness correlates with it:
whether a backbone that k-NN ranks poorly still carries the density signal linearly.
Images, labels and patients are joined as the online monitor joins them, and every k-NN is the
monitor's (cosine, other patients' images only, balanced accuracy).

  python benchmarks/phantom_density_probe.py CACHE LABELS.csv random:vit_tiny/16 RUN [RUN ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import torch
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import GroupKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from mammodino.config import load_config
from mammodino.errors import ConfigError
from mammodino.eval.backbone import load_backbone
from mammodino.eval.handcrafted import feature_names, handcrafted_features
from mammodino.preprocess.cache import read_cached_float, read_cached_mask
from mammodino.settings import MonitorSettings, as_settings
from mammodino.train.monitor import (
    join_key,
    knn_balanced_accuracy,
    labelled_cache_rows,
    labels_by_join_key,
    square_thumbnail,
)

# The hand-crafted vector starts with its intensity entries, up to the breast's area.
N_INTENSITY = feature_names().index("area_fraction") + 1


def inner_box(image: np.ndarray, share: float, size: int) -> np.ndarray:
    """The central `share` of the rows and the chest-wall `share` of the columns, resized."""
    height, width = image.shape
    rows, cols = max(1, int(height * share)), max(1, int(width * share))
    top = (height - rows) // 2
    box = cv2.resize(image[top : top + rows, :cols], (size, size), interpolation=cv2.INTER_AREA)
    return np.clip(box, 0.0, 1.0)


def intensity_features(images: list[np.ndarray], masks: list[np.ndarray]) -> np.ndarray:
    """The hand-crafted baseline's intensity entries of each image, standardised over images."""
    vectors = [handcrafted_features(i, m)[:N_INTENSITY] for i, m in zip(images, masks, strict=True)]
    stats = np.stack(vectors).astype(np.float64)
    return (stats - stats.mean(0)) / (stats.std(0) + 1e-9)


@torch.no_grad()
def cls_features(weights: str, images: np.ndarray, size: int) -> np.ndarray:
    backbone = load_backbone(weights, image_size=size)
    batch = torch.from_numpy(images).unsqueeze(1).float()
    return backbone.model.forward_features(batch)["x_norm_clstoken"].numpy()


def grouped_logreg(features: np.ndarray, y: np.ndarray, groups: np.ndarray) -> float:
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    predicted = cross_val_predict(model, features, y, groups=groups, cv=GroupKFold(5))
    return float(balanced_accuracy_score(y, predicted))


def grouped_r2(features: np.ndarray, target: np.ndarray, groups: np.ndarray) -> float:
    """R^2 of a patient-grouped 5-fold ridge regression (alpha chosen inside each fold)."""
    model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-2, 4, 13)))
    predicted = cross_val_predict(model, features, target, groups=groups, cv=GroupKFold(5))
    return float(1.0 - ((predicted - target) ** 2).sum() / ((target - target.mean()) ** 2).sum())


def column_values(
    rows: list[dict[str, str]], labels: Path, monitor: MonitorSettings, column: str
) -> np.ndarray:
    """`column` of the labels CSV as floats, in the order of the monitor's cache rows."""
    try:
        by_key = labels_by_join_key(labels, monitor.labels_key, column)
    except ConfigError as error:
        raise SystemExit(str(error)) from None
    values = [by_key.get(join_key(row, monitor.manifest_key)) for row in rows]
    if any(value is None for value in values):
        raise SystemExit(f"{labels.name}: column {column!r} is empty for some images")
    try:
        return np.array([float(value) for value in values])
    except ValueError as error:
        raise SystemExit(f"{labels.name}: column {column!r} is not numeric ({error})") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cache", type=Path, help="prepared phantom cache")
    parser.add_argument("labels", type=Path, help="the phantom's labels.csv")
    parser.add_argument("weights", nargs="+", help="run folders, checkpoints or random:ARCH/PATCH")
    parser.add_argument("--column", default="density")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--inner", type=float, default=0.5, help="share of each side kept")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument(
        "--regress",
        nargs="*",
        default=["gland_fraction", "thickness_mm"],
        help="continuous label columns to recover by ridge regression (none: skip)",
    )
    args = parser.parse_args()
    size = args.image_size
    monitor = as_settings(load_config(overrides=[f"monitor.label_column={args.column}"])).monitor
    try:
        rows, names, patients = labelled_cache_rows(args.cache, args.labels, monitor)
    except ConfigError as error:
        raise SystemExit(str(error)) from None
    images, masks = [], []
    for row in rows:
        image = read_cached_float(args.cache, row)
        images.append(image)
        masks.append(read_cached_mask(args.cache / row["mask"], image.shape) > 0)
    classes = sorted(set(names))
    y, groups = np.array([classes.index(n) for n in names]), np.array(patients)
    whole = np.stack([square_thumbnail(image, size) for image in images])
    inner = np.stack([inner_box(image, args.inner, size) for image in images])
    print(f"{len(y)} images, {len(set(patients))} patients, {len(classes)} classes, {size} px")
    stats = intensity_features(images, masks)
    print(
        f"hand-crafted intensity entries: k-NN {knn_balanced_accuracy(stats, y, groups, args.k):.3f}"
    )
    targets = {c: column_values(rows, args.labels, monitor, c) for c in args.regress}
    brightness = np.array([image[mask].mean() for image, mask in zip(images, masks, strict=True)])
    for column, target in targets.items():
        print(
            f"mean breast brightness vs {column}: r = {np.corrcoef(brightness, target)[0, 1]:+.2f}"
        )
    r2_header = "".join(f" | R^2 {c} whole / inner" for c in targets)
    print(f"backbone | whole-image k-NN | inner-box k-NN | whole-image logreg{r2_header}")
    for weights in args.weights:
        cls_whole = cls_features(weights, whole, size)
        cls_inner = cls_features(weights, inner, size)
        r2_cells = "".join(
            f" | {grouped_r2(cls_whole, t, groups):.2f} / {grouped_r2(cls_inner, t, groups):.2f}"
            for t in targets.values()
        )
        print(
            f"{weights} | {knn_balanced_accuracy(cls_whole, y, groups, args.k):.3f}"
            f" | {knn_balanced_accuracy(cls_inner, y, groups, args.k):.3f}"
            f" | {grouped_logreg(cls_whole, y, groups):.3f}{r2_cells}",
            flush=True,
        )


if __name__ == "__main__":
    main()
