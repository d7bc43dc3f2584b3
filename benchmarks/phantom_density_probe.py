"""Where a frozen backbone's density signal is: whole image vs the breast's interior (issue 13).

For each backbone (run folder, checkpoint, or `random:vit_tiny/16`) prints the k-NN density
accuracy of its CLS token on the monitor's input (whole images, zero-padded square), on the
breast's inner box (the cache's central rows, chest-wall side, `--inner` of each side), a
patient-grouped 5-fold logistic regression on the whole-image CLS, and, once, k-NN on
standardised brightness statistics of the breast (mean, sd, percentiles): what the density
classes of the phantom rest on. All k-NN as the online monitor computes it (cosine, other
patients' images only, balanced accuracy).

  python benchmarks/phantom_density_probe.py CACHE LABELS.csv random:vit_tiny/16 RUN [RUN ...]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path, PurePath

import cv2
import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import GroupKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from mammodino.eval.backbone import load_backbone
from mammodino.preprocess.cache import read_cached_float, read_manifest
from mammodino.train.monitor import knn_balanced_accuracy, square_thumbnail

BACKGROUND = 0.02  # below this a thumbnail pixel counts as background for the brightness statistics


def inner_box(image: np.ndarray, share: float, size: int) -> np.ndarray:
    """The central `share` of the rows and the chest-wall `share` of the columns, resized."""
    height, width = image.shape
    rows, cols = max(1, int(height * share)), max(1, int(width * share))
    top = (height - rows) // 2
    return cv2.resize(image[top : top + rows, :cols], (size, size), interpolation=cv2.INTER_AREA)


def load_images(cache: Path, labels_csv: Path, column: str, size: int, share: float):
    """Whole-image thumbnails, inner boxes, integer labels and patient groups of labelled rows."""
    with labels_csv.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if not {"file", column} <= set(reader.fieldnames or ()):
            raise SystemExit(f"{labels_csv.name}: needs columns 'file' and {column!r}")
        labels = {PurePath(r["file"]).name: r[column] for r in reader if r[column]}
    whole, inner, names, groups = [], [], [], []
    for row in read_manifest(cache, required=("image",)):
        key = PurePath(row.get("source", "")).name
        if key not in labels:
            continue
        image = read_cached_float(cache, row)
        whole.append(square_thumbnail(image, size))
        inner.append(np.clip(inner_box(image, share, size), 0.0, 1.0))
        names.append(labels[key])
        groups.append(row.get("patient_id") or key)
    classes = sorted(set(names))
    y = np.array([classes.index(n) for n in names])
    return np.stack(whole), np.stack(inner), y, np.array(groups)


def brightness_statistics(thumbnails: np.ndarray) -> np.ndarray:
    """Per image: mean, sd, 10/25/50/75/90th percentiles and area of the breast's pixels."""
    rows = []
    for image in thumbnails:
        breast = image[image > BACKGROUND]
        if breast.size == 0:
            breast = np.zeros(1, dtype=np.float32)
        rows.append([breast.mean(), breast.std(), *np.percentile(breast, [10, 25, 50, 75, 90])])
        rows[-1].append(breast.size)
    stats = np.array(rows, dtype=np.float64)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cache", type=Path, help="prepared phantom cache")
    parser.add_argument("labels", type=Path, help="the phantom's labels.csv")
    parser.add_argument("weights", nargs="+", help="run folders, checkpoints or random:ARCH/PATCH")
    parser.add_argument("--column", default="density")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--inner", type=float, default=0.5, help="share of each side kept")
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    size = args.image_size
    whole, inner, y, groups = load_images(args.cache, args.labels, args.column, size, args.inner)
    print(f"{len(y)} images, {len(set(groups))} patients, {len(set(y))} classes, {size} px")
    stats = brightness_statistics(whole)
    print(f"brightness statistics: k-NN {knn_balanced_accuracy(stats, y, groups, args.k):.3f}")
    print("backbone | whole-image k-NN | inner-box k-NN | whole-image logreg")
    for weights in args.weights:
        cls_whole = cls_features(weights, whole, size)
        cls_inner = cls_features(weights, inner, size)
        print(
            f"{weights} | {knn_balanced_accuracy(cls_whole, y, groups, args.k):.3f}"
            f" | {knn_balanced_accuracy(cls_inner, y, groups, args.k):.3f}"
            f" | {grouped_logreg(cls_whole, y, groups):.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
