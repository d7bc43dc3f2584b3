"""Classification metrics with bootstrap 95% intervals (seeded; resampling patients or images).

Binary tasks: AUROC, AUPRC (average precision), balanced accuracy, macro-F1, confusion matrix.
Multi-class: one-vs-rest macro AUROC, balanced accuracy, macro-F1, confusion matrix, and for
ordinal tasks (density, BI-RADS) the quadratic-weighted kappa. Each scalar comes as
`{"value": v, "ci95": [low, high], "n_boot": valid replicates}`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from mammodino.errors import EvaluationError

MetricFn = Callable[[np.ndarray, np.ndarray, np.ndarray | None], float]


def _weights(n: int, weight: np.ndarray | None) -> np.ndarray:
    return np.ones(n) if weight is None else np.asarray(weight, dtype=np.float64)


def auroc(y: np.ndarray, score: np.ndarray, weight: np.ndarray | None = None) -> float:
    """Area under the ROC curve of a binary task (score = probability of class 1).

    The Mann-Whitney form: P(score of a positive > score of a negative) + 0.5 P(tie), with sample
    weights. Written in numpy (not sklearn) because the bootstrap calls it thousands of times.
    """
    y = np.asarray(y).astype(bool)
    w = _weights(len(y), weight)
    values, inverse = np.unique(np.asarray(score), return_inverse=True)
    pos = np.bincount(inverse, weights=w * y, minlength=len(values))
    neg = np.bincount(inverse, weights=w * ~y, minlength=len(values))
    total_pos, total_neg = pos.sum(), neg.sum()
    if total_pos <= 0 or total_neg <= 0:
        raise ValueError("AUROC needs both classes")
    below = np.cumsum(neg) - neg
    return float(np.sum(pos * (below + 0.5 * neg)) / (total_pos * total_neg))


def auprc(y: np.ndarray, score: np.ndarray, weight: np.ndarray | None = None) -> float:
    """Average precision: sum over thresholds of (recall step) x precision, as scikit-learn."""
    y = np.asarray(y).astype(bool)
    w = _weights(len(y), weight)
    values, inverse = np.unique(-np.asarray(score), return_inverse=True)  # descending scores
    tp = np.cumsum(np.bincount(inverse, weights=w * y, minlength=len(values)))
    fp = np.cumsum(np.bincount(inverse, weights=w * ~y, minlength=len(values)))
    if tp[-1] <= 0:
        raise ValueError("AUPRC needs a positive sample")
    recall = tp / tp[-1]
    precision = tp / np.maximum(tp + fp, 1e-300)
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def auroc_ovr(y: np.ndarray, proba: np.ndarray, weight: np.ndarray | None = None) -> float:
    """Macro one-vs-rest AUROC of a multi-class task (`proba` [N, C], rows sum to 1)."""
    aucs = [auroc(y == c, proba[:, c], weight) for c in range(proba.shape[1])]
    return float(np.mean(aucs))


def _confusion_weighted(y, pred, weight, n: int | None = None) -> np.ndarray:
    y, pred = np.asarray(y, dtype=np.int64), np.asarray(pred, dtype=np.int64)
    n = n or int(max(y.max(initial=0), pred.max(initial=0))) + 1
    w = _weights(len(y), weight)
    return np.bincount(y * n + pred, weights=w, minlength=n * n).reshape(n, n)


def balanced_accuracy(y: np.ndarray, pred: np.ndarray, weight: np.ndarray | None = None) -> float:
    """Mean per-class recall over the classes present in `y`."""
    matrix = _confusion_weighted(y, pred, weight)
    support = matrix.sum(axis=1)
    present = support > 0
    return float(np.mean(np.diag(matrix)[present] / support[present]))


def macro_f1(y: np.ndarray, pred: np.ndarray, weight: np.ndarray | None = None) -> float:
    """Unweighted mean of per-class F1 = 2TP / (2TP + FP + FN) over classes in `y` or `pred`."""
    matrix = _confusion_weighted(y, pred, weight)
    tp = np.diag(matrix)
    fp = matrix.sum(axis=0) - tp
    fn = matrix.sum(axis=1) - tp
    present = (matrix.sum(axis=0) + matrix.sum(axis=1)) > 0
    denominator = 2 * tp + fp + fn
    f1 = np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1e-300), 0.0)
    return float(np.mean(f1[present]))


def quadratic_kappa(y: np.ndarray, pred: np.ndarray, weight: np.ndarray | None = None) -> float:
    """Cohen's kappa with quadratic weights on the ordinal codes: 1 - sum(W O) / sum(W E).

    O is the confusion matrix, E the outer product of its margins over the total, and
    W_ij = (i - j)^2 on the class codes (equal to scikit-learn when every class occurs).
    """
    observed = _confusion_weighted(y, pred, weight)
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / observed.sum()
    i, j = np.indices(observed.shape)
    w = (i - j) ** 2
    chance = np.sum(w * expected)
    if chance <= 0:
        raise ValueError("kappa is undefined when one class holds every sample")
    return float(1.0 - np.sum(w * observed) / chance)


def confusion(y: np.ndarray, pred: np.ndarray, n_classes: int) -> list[list[int]]:
    """Counts [true class][predicted class]."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y, dtype=np.int64), np.asarray(pred, dtype=np.int64)), 1)
    return matrix.tolist()


def bootstrap_ci(
    metric: MetricFn,
    y: np.ndarray,
    output: np.ndarray,
    groups: Sequence[str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float, int]:
    """Percentile bootstrap interval of `metric(y, output, weight)`: (low, high, valid replicates).

    With `groups` whole patients are resampled with replacement (their images move together, as
    the folds do); without, single images. A resample is drawn as integer weights, which equals
    repeating the chosen rows. Replicates where the metric is undefined (one class only) are
    skipped and not counted.
    """
    y = np.asarray(y)
    if groups is None:
        group_index = np.arange(len(y))
    else:
        _, group_index = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)
    n_groups = int(group_index.max()) + 1 if len(y) else 0
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        counts = np.bincount(rng.integers(0, n_groups, n_groups), minlength=n_groups)
        weight = counts[group_index].astype(np.float64)
        keep = weight > 0
        try:
            value = metric(y[keep], output[keep], weight[keep])
        except ValueError:
            continue  # e.g. AUROC of a resample holding one class only
        if np.isfinite(value):
            values.append(value)
    if not values:
        return float("nan"), float("nan"), 0
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return float(low), float(high), len(values)


def _scalar(
    metric: MetricFn,
    y: np.ndarray,
    output: np.ndarray,
    groups: Sequence[str] | None,
    n_boot: int,
    seed: int,
) -> dict:
    try:
        value = metric(y, output, None)
    except ValueError:
        value = float("nan")
    result: dict = {"value": value}
    if n_boot > 0 and np.isfinite(value):
        low, high, n_valid = bootstrap_ci(metric, y, output, groups, n_boot, seed)
        result.update(ci95=[low, high], n_boot=n_valid)
    return result


def classification_metrics(
    y: np.ndarray,
    proba: np.ndarray,
    *,
    ordinal: bool = False,
    groups: Sequence[str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict:
    """Every figure of one set of predictions: `y` class codes [N], `proba` [N, C]."""
    y = np.asarray(y, dtype=np.int64)
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim != 2 or proba.shape[0] != len(y):
        raise EvaluationError(f"probabilities {proba.shape} do not match {len(y)} labels")
    n_classes = proba.shape[1]
    pred = proba.argmax(axis=1)
    out: dict = {"n": int(len(y))}
    if n_classes == 2:
        score = proba[:, 1]
        out["auroc"] = _scalar(auroc, y, score, groups, n_boot, seed)
        out["auprc"] = _scalar(auprc, y, score, groups, n_boot, seed)
    else:
        out["auroc_ovr"] = _scalar(auroc_ovr, y, proba, groups, n_boot, seed)
    out["balanced_accuracy"] = _scalar(balanced_accuracy, y, pred, groups, n_boot, seed)
    out["macro_f1"] = _scalar(macro_f1, y, pred, groups, n_boot, seed)
    if ordinal:
        out["kappa_quadratic"] = _scalar(quadratic_kappa, y, pred, groups, n_boot, seed)
    out["confusion_matrix"] = confusion(y, pred, n_classes)
    return out


SCALAR_KEYS = ("auroc", "auprc", "auroc_ovr", "balanced_accuracy", "macro_f1", "kappa_quadratic")


def summarise_folds(per_fold: Sequence[dict]) -> dict:
    """Mean and standard deviation across folds of each scalar metric."""
    out: dict = {}
    for key in SCALAR_KEYS:
        values = [f[key]["value"] for f in per_fold if key in f]
        values = [v for v in values if np.isfinite(v)]
        if values:
            out[key] = {
                "mean": float(np.mean(values)),
                "std": float(np.std(values)),
                "n": len(values),
            }
    return out
