"""Online health monitor: a k-NN probe of the teacher's CLS features on a small labelled set.

Every `monitor.every` steps the teacher backbone embeds the whole images of `monitor.source` (a
prepared cache), zero-padded to a square and resized to `monitor.image_size`; each image is
classified by a cosine-weighted vote of its k nearest neighbours among the *other patients'*
images (leave-one-patient-out:
mini-MIAS stores both breasts of a woman, which would otherwise vote for each other) and the
balanced accuracy is logged as `monitor/knn_acc`. Deterministic: fixed images, no augmentation,
ties broken by the lower class index. A collapsing run shows here long before its loss does.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path, PurePath

import cv2
import numpy as np
import torch
from torch import nn

from mammodino.errors import ConfigError
from mammodino.labels.mini_mias import mias_patient_id
from mammodino.preprocess.cache import read_cached_float, read_manifest
from mammodino.settings import MonitorSettings

KNN_TEMPERATURE = 0.07  # DINO's k-NN evaluation weights neighbours by exp(similarity / 0.07)


def knn_balanced_accuracy(
    features: np.ndarray, labels: np.ndarray, groups: np.ndarray, k: int
) -> float:
    """Leave-one-group-out cosine-weighted k-NN; balanced accuracy (mean per-class recall)."""
    feats = features.astype(np.float64)
    feats /= np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
    similarity = feats @ feats.T
    similarity[groups[:, None] == groups[None, :]] = -np.inf  # self and same patient
    classes = np.unique(labels)
    k = min(k, len(labels) - 1)
    neighbours = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    weights = np.exp(np.take_along_axis(similarity, neighbours, axis=1) / KNN_TEMPERATURE)
    weights[~np.isfinite(weights)] = 0.0  # fewer than k other-patient images
    votes = np.zeros((len(labels), len(classes)))
    class_of = np.searchsorted(classes, labels[neighbours])
    np.add.at(votes, (np.arange(len(labels))[:, None], class_of), weights)
    predicted = classes[np.argmax(votes, axis=1)]
    recalls = [np.mean(predicted[labels == c] == c) for c in classes]
    return float(np.mean(recalls))


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise ConfigError(f"monitor file {path} does not exist")
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _patient_of(row: dict[str, str], key: str) -> str:
    """The manifest's patient id; for mini-MIAS names without one, the woman's number."""
    if row.get("patient_id"):
        return row["patient_id"]
    return mias_patient_id(key) or key


def square_thumbnail(image: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad to a square at the bottom/right (background; keeps the aspect), resize to size."""
    height, width = image.shape
    side = max(height, width)
    square = np.zeros((side, side), dtype=np.float32)
    square[:height, :width] = image
    small = cv2.resize(square, (size, size), interpolation=cv2.INTER_AREA)
    return np.clip(small, 0.0, 1.0)


def join_key(row: dict[str, str], column: str) -> str:
    """What the monitor joins a manifest row and a labels row on: the file name in `column`
    (labels may give `ffdm/a.dcm` where the manifest gives `/data/src/a.dcm`)."""
    return PurePath(row.get(column) or "").name


def labels_by_join_key(
    labels_csv: Path, key_column: str, label_column: str, settings: str = ""
) -> dict[str, str]:
    """The non-empty `label_column` values of a labels CSV, by join key. `settings` names, in
    the error for a missing column, the config keys that choose the two columns."""
    rows = _read_csv(labels_csv)
    if rows and not {key_column, label_column} <= rows[0].keys():  # every row has the header's keys
        raise ConfigError(
            f"{labels_csv.name}: needs columns {key_column!r} and {label_column!r}{settings}"
        )
    labels: dict[str, str] = {}
    for row in rows:
        value = (row[label_column] or "").strip()  # None: a row shorter than the header
        if value:
            labels[join_key(row, key_column)] = value
    return labels


def labelled_cache_rows(
    cache: Path, labels_csv: Path, monitor: MonitorSettings
) -> tuple[list[dict[str, str]], list[str], list[str]]:
    """The cache's manifest rows that have a label, their labels and their patients' ids."""
    label_key = monitor.labels_key
    settings = " (monitor.labels_key, monitor.label_column)"
    labels_by_key = labels_by_join_key(labels_csv, label_key, monitor.label_column, settings)
    rows, names, groups = [], [], []
    for row in read_manifest(cache, required=("image",)):
        key = join_key(row, monitor.manifest_key)
        if key not in labels_by_key:
            continue
        rows.append(row)
        names.append(labels_by_key[key])
        groups.append(_patient_of(row, key))
    if len(set(names)) < 2 or len(names) < 4:
        raise ConfigError(
            f"monitor: only {len(names)} labelled images in {cache.name} match {labels_csv.name} "
            f"(join {monitor.manifest_key!r} -> {label_key!r}); need 4+ images and 2+ classes"
        )
    return rows, names, groups


def load_monitor_images(
    cache: Path, labels_csv: Path, monitor: MonitorSettings, image_size: int
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Images [N, 1, S, S] in [0, 1], integer labels and patient groups of the labelled cache rows."""
    rows, names, groups = labelled_cache_rows(cache, labels_csv, monitor)
    images = [
        torch.from_numpy(square_thumbnail(read_cached_float(cache, row), image_size))
        for row in rows
    ]
    classes = sorted(set(names))
    labels = np.array([classes.index(n) for n in names])
    return torch.stack(images).unsqueeze(1), labels, np.array(groups)


class KNNMonitor:
    """Embeds fixed labelled images with the teacher and scores a k-NN probe on them."""

    def __init__(
        self, images: torch.Tensor, labels: np.ndarray, groups: np.ndarray, k: int = 10
    ) -> None:
        self.images, self.labels, self.groups, self.k = images, labels, groups, k

    @classmethod
    def from_settings(cls, monitor: MonitorSettings, global_size: int) -> KNNMonitor | None:
        """The monitor of section `monitor`, or None when it is off (every: 0 or no source);
        images at `monitor.image_size`, else at the global crop size."""
        if not monitor.every or not monitor.source:
            return None
        if not monitor.labels or not monitor.label_column:
            raise ConfigError(
                "monitor.source is set: also set monitor.labels and monitor.label_column"
            )
        size = monitor.image_size or global_size
        images, labels, groups = load_monitor_images(
            Path(monitor.source), Path(monitor.labels), monitor, size
        )
        return cls(images, labels, groups, monitor.k)

    @torch.no_grad()
    def evaluate(
        self,
        backbone: nn.Module,
        device: torch.device,
        autocast: Callable[[], AbstractContextManager] = nullcontext,
        batch_size: int = 32,
    ) -> dict[str, float]:
        """{'monitor/knn_acc': balanced accuracy} of the backbone's CLS features."""
        was_training = backbone.training
        backbone.eval()
        chunks = []
        for start in range(0, len(self.images), batch_size):
            batch = self.images[start : start + batch_size].to(device)
            with autocast():
                cls_tokens = backbone.forward_features(batch)["x_norm_clstoken"]
            chunks.append(cls_tokens.float().cpu())
        backbone.train(was_training)
        features = torch.cat(chunks).numpy()
        return {
            "monitor/knn_acc": knn_balanced_accuracy(features, self.labels, self.groups, self.k)
        }
