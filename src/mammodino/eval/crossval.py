"""Patient-level k-fold cross-validation of a probe, with label-efficiency subsets.

Every protocol and every label fraction uses the same folds (seeded), so figures compare like
with like. Per fold the metrics come without intervals; the out-of-fold predictions of all folds
are pooled into one set whose metrics carry patient-level bootstrap 95% intervals.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from mammodino.eval.metrics import classification_metrics, summarise_folds
from mammodino.eval.splits import label_fraction_subsets

# fit_predict(x_train, y_train, x_test, n_classes, groups_train, seed) -> proba [n_test, C]
FitPredict = Callable[..., np.ndarray]


def cross_validate(
    fit_predict: FitPredict,
    x: np.ndarray,
    y: np.ndarray,
    groups: Sequence[str],
    fold: np.ndarray,
    n_classes: int,
    *,
    ordinal: bool = False,
    fractions: Sequence[float] = (1.0,),
    seed: int = 0,
    n_boot: int = 1000,
    progress: Callable[[], None] | None = None,
) -> tuple[dict, dict[float, np.ndarray]]:
    """Figures per label fraction, and the out-of-fold probabilities [N, C] per fraction.

    `fold` assigns every sample to a test fold (from `splits.patient_folds`); each training set
    is the other folds, cut to the nested patient subset of the fraction.
    """
    groups = np.asarray([str(g) for g in groups])
    results: dict = {}
    oof_all: dict[float, np.ndarray] = {}
    for fraction in fractions:
        oof = np.full((len(y), n_classes), np.nan)
        per_fold = []
        for k in np.unique(fold):
            test = np.flatnonzero(fold == k)
            train_all = np.flatnonzero(fold != k)
            train = label_fraction_subsets(train_all, groups, y, [fraction], seed + int(k))[
                float(fraction)
            ]
            proba = fit_predict(x[train], y[train], x[test], n_classes, groups[train], seed)
            oof[test] = proba
            figures = classification_metrics(y[test], proba, ordinal=ordinal, n_boot=0)
            per_fold.append(
                {
                    "fold": int(k),
                    "n_train": int(len(train)),
                    "n_train_patients": int(len(np.unique(groups[train]))),
                    "n_test": int(len(test)),
                    **figures,
                }
            )
            if progress is not None:
                progress()
        pooled = classification_metrics(
            y, oof, ordinal=ordinal, groups=groups, n_boot=n_boot, seed=seed
        )
        results[f"{fraction:g}"] = {
            "fraction": float(fraction),
            "per_fold": per_fold,
            "mean": summarise_folds(per_fold),
            "pooled": pooled,
        }
        oof_all[float(fraction)] = oof
    return results, oof_all
