"""Evaluation results gathered for the report: results.json files grouped by task and backbone,
ROC points from the out-of-fold predictions, and the side-by-side comparison tables."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mammodino.errors import EvaluationError
from mammodino.eval.localization import position_prior_text

METRICS = (
    ("auroc", "AUROC"),
    ("auprc", "AUPRC"),
    ("auroc_ovr", "AUROC (one-vs-rest)"),
    ("balanced_accuracy", "balanced accuracy"),
    ("macro_f1", "macro-F1"),
    ("kappa_quadratic", "quadratic kappa"),
)


@dataclass
class EvalResult:
    """One results.json: a backbone's figures on one task (and/or localization)."""

    backbone: str
    folder: Path
    data: dict

    @property
    def task(self) -> str | None:
        return self.data.get("task")


@dataclass
class TaskView:
    """Everything the report shows for one task: figures of every backbone, same folds."""

    task: str
    classes: list[str]
    results: dict[str, EvalResult] = field(default_factory=dict)


def backbone_name(results_dir: Path, data: dict) -> str:
    """The backbone a result belongs to: the name of its FEATS folder (demo: mammodino,
    dinov2-recipe, random-init, handcrafted), else the results folder name."""
    features = data.get("features")
    if features:
        path = Path(features)
        return path.stem if path.suffix == ".npz" else path.name
    return results_dir.name


def find_results(folders: Iterable[Path]) -> list[EvalResult]:
    """Every results.json under the given folders (or the files themselves), sorted by path."""
    found: list[EvalResult] = []
    for folder in folders:
        folder = Path(folder)
        paths = [folder] if folder.is_file() else sorted(folder.rglob("results.json"))
        for path in paths:
            try:
                data = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as err:
                raise EvaluationError(f"{path}: not a readable results.json ({err})") from None
            found.append(EvalResult(backbone_name(path.parent, data), path.parent, data))
    return found


def by_task(results: Sequence[EvalResult]) -> list[TaskView]:
    """Results grouped by task in first-seen order; a later duplicate backbone replaces one."""
    views: dict[str, TaskView] = {}
    for r in results:
        if not r.task or "protocols" not in r.data:
            continue
        view = views.setdefault(r.task, TaskView(r.task, list(r.data.get("classes", []))))
        view.results[r.backbone] = r
    for view in views.values():
        view.results = dict(sorted(view.results.items(), key=lambda kv: backbone_order(kv[0])))
    return list(views.values())


# Ours first, then the baselines (the demo's names); other backbones after them by name.
PREFERRED_ORDER = ("mammodino", "dinov2-recipe", "random-init", "handcrafted")


def backbone_order(name: str) -> tuple[int, str]:
    """Sort key: the demo's backbones in their fixed order, then any other by name."""
    return (PREFERRED_ORDER.index(name) if name in PREFERRED_ORDER else len(PREFERRED_ORDER), name)


def _cell(figure: dict | None) -> tuple[float | None, str]:
    if not figure or figure.get("value") is None:
        return None, "-"
    value = float(figure["value"])
    text = f"{value:.3f}"
    ci = figure.get("ci95")
    if ci and ci[0] is not None and ci[1] is not None:
        text += f" [{ci[0]:.3f}, {ci[1]:.3f}]"
    return value, text


def chance_level(metric: str, class_counts: Sequence[int]) -> float | None:
    """What a guess that ignores the image scores on `metric` (None: no single value, e.g.
    macro-F1, which depends on how the guess spreads over the classes)."""
    n_classes = len(class_counts)
    if metric in ("auroc", "auroc_ovr"):
        return 0.5
    if metric == "balanced_accuracy" and n_classes:
        return 1.0 / n_classes
    if metric == "kappa_quadratic":
        return 0.0
    if metric == "auprc" and n_classes == 2 and sum(class_counts):
        return class_counts[-1] / sum(class_counts)  # the positive class comes last
    return None


def comparison_rows(view: TaskView) -> tuple[list[str], list[dict]]:
    """Rows (protocol, labels share, metric) x columns (backbones) of pooled figures with 95%
    intervals; `best` names the backbone(s) with the highest point value of each row, `chance`
    the metric's chance level."""
    backbones = list(view.results)
    first = next(iter(view.results.values())).data
    counts = first.get("class_counts") or [0] * len(view.classes)
    keys: list[tuple[str, str]] = []
    for r in view.results.values():
        for protocol, by_fraction in r.data["protocols"].items():
            for fraction in by_fraction:
                if (protocol, fraction) not in keys:
                    keys.append((protocol, fraction))
    rows = []
    for protocol, fraction in keys:
        for metric, label in METRICS:
            cells, values = {}, {}
            for name, r in view.results.items():
                pooled = r.data["protocols"].get(protocol, {}).get(fraction, {}).get("pooled", {})
                values[name], cells[name] = _cell(pooled.get(metric))
            if all(v is None for v in values.values()):
                continue
            top = max(v for v in values.values() if v is not None)
            rows.append(
                {
                    "protocol": protocol,
                    "fraction": float(fraction),
                    "metric": label,
                    "chance": chance_level(metric, counts),
                    "cells": cells,
                    "best": [n for n, v in values.items() if v is not None and v >= top - 1e-12],
                }
            )
    return backbones, rows


def confusion(result: EvalResult, protocol: str, fraction: str = "1") -> list[list[int]] | None:
    """The pooled out-of-fold confusion matrix of one protocol, if stored."""
    figures = result.data["protocols"].get(protocol, {}).get(fraction, {})
    return figures.get("pooled", {}).get("confusion_matrix")


def roc_points(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive rates at every distinct threshold (ties handled as one step)."""
    y = np.asarray(y, dtype=bool)
    order = np.argsort(-np.asarray(score, dtype=float), kind="mergesort")
    s, t = np.asarray(score, dtype=float)[order], y[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tp, fp = np.cumsum(t)[last_of_tie], np.cumsum(~t)[last_of_tie]
    tpr = np.r_[0.0, tp / max(t.sum(), 1)]
    fpr = np.r_[0.0, fp / max((~t).sum(), 1)]
    return fpr, tpr


def oof_roc(
    result: EvalResult, protocol: str, fraction: str = "1"
) -> tuple[np.ndarray, np.ndarray] | None:
    """ROC points of a binary task from predictions.csv (out-of-fold probabilities)."""
    classes = result.data.get("classes", [])
    path = result.folder / "predictions.csv"
    if len(classes) != 2 or not path.is_file():
        return None
    positive = f"p_{classes[-1]}"  # binary tasks: the positive class comes last
    y, score = [], []
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            if row.get("protocol") != protocol or float(row.get("fraction", 1)) != float(fraction):
                continue
            if row.get(positive) in (None, "", "nan"):
                continue
            y.append(row["label"] == classes[-1])
            score.append(float(row[positive]))
    if not y or all(y) or not any(y):
        return None
    return roc_points(np.asarray(y), np.asarray(score))


def localization_rows(results: Sequence[EvalResult]) -> list[dict]:
    """Hit rate and patch AUROC (95% intervals) of every backbone that ran localization, and
    what the position prior scores on its grid."""
    rows = []
    for r in sorted(results, key=lambda r: backbone_order(r.backbone)):
        loc = r.data.get("localization")
        if not loc:
            continue
        rows.append(
            {
                "backbone": r.backbone,
                "images": loc.get("n_images_with_lesions"),
                "hit_rate": _cell(loc.get("hit_rate"))[1],
                "patch_auroc": _cell(loc.get("patch_auroc"))[1],
                "position_prior": position_prior_text(loc.get("position_prior")),
            }
        )
    return rows
