"""The evaluation run behind `mammodino eval`: join, split, probe, measure, write, print."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mammodino.errors import EvaluationError
from mammodino.eval.crossval import cross_validate
from mammodino.eval.features import (
    KNN_MIN_SPREAD,
    Features,
    load_features,
    probe_representation,
    relative_spread,
)
from mammodino.eval.labels_join import (
    TaskLabels,
    encode_task,
    join_labels,
    read_labels_csv,
    resolve_patients,
)
from mammodino.eval.localization import evaluate_localization, position_prior_text
from mammodino.eval.probes import KNNProbe, LinearProbe, LogRegProbe
from mammodino.eval.splits import patient_folds

RESULTS_NAME = "results.json"
PREDICTIONS_NAME = "predictions.csv"
HEATMAPS_NAME = "heatmaps.npz"


@dataclass
class EvalSettings:
    """Everything `mammodino eval` can set; written into results.json."""

    task: str | None = None
    protocols: list[str] = field(default_factory=lambda: ["knn", "logreg"])
    patient_column: str = "patient_id"
    folds: int = 5
    fractions: list[float] = field(default_factory=lambda: [1.0])
    seed: int = 0
    representation: str = "auto"
    join: str = "auto"
    ordinal: str = "auto"
    positive: str | None = None
    n_boot: int = 1000
    knn_k: int = 20
    knn_temperature: float = 0.07
    knn_standardise: bool = False
    logreg_C: float | None = None
    linear_epochs: int = 100
    finetune_epochs: int = 10
    localization: bool = False
    lesion_column: str = "lesions"
    weights: str | None = None
    manifest: str | None = None


def _probe(protocol: str, settings: EvalSettings, ids: np.ndarray):
    """The fit_predict callable of one protocol."""
    if protocol == "knn":
        return KNNProbe(
            settings.knn_k, settings.knn_temperature, settings.knn_standardise
        ).fit_predict
    if protocol == "logreg":
        return LogRegProbe(C=settings.logreg_C).fit_predict
    if protocol == "linear":
        return LinearProbe(epochs=settings.linear_epochs).fit_predict
    if protocol == "finetune":
        from mammodino.eval.finetune import FinetuneSettings, finetune_protocol

        tune = FinetuneSettings(epochs=settings.finetune_epochs)
        return finetune_protocol(settings.weights, settings.manifest, ids, tune)
    raise EvaluationError(f"unknown protocol {protocol!r}")


def _prediction_rows(
    ids: np.ndarray, groups, fold, task: TaskLabels, protocol: str, oof: dict
) -> list[dict]:
    """predictions.csv rows: one per image, protocol and label fraction."""
    rows = []
    for fraction, proba in oof.items():
        for j, image_id in enumerate(ids):
            rows.append(
                {
                    "id": image_id,
                    "patient": groups[j],
                    "protocol": protocol,
                    "fraction": f"{fraction:g}",
                    "fold": int(fold[j]),
                    "label": task.classes[task.y[j]],
                    **{f"p_{c}": f"{p:.6f}" for c, p in zip(task.classes, proba[j], strict=True)},
                }
            )
    return rows


def evaluate_task(
    features: Features,
    joined: list,
    patients: np.ndarray,
    settings: EvalSettings,
    progress: Callable[[], None] | None = None,
) -> tuple[dict, list[dict]]:
    """Every protocol and label fraction of `settings.task` on one set of patient-level folds."""
    values = [None if r is None else r.get(settings.task) for r in joined]
    if all(v is None for v in values):
        raise EvaluationError(f"labels have no column {settings.task!r}")
    task = encode_task(values, settings.task, settings.ordinal, settings.positive)
    groups = patients[task.index]
    fold = patient_folds(groups, task.y, settings.folds, settings.seed)
    ids = features.ids[task.index]
    # Fine-tuning reads images, not features: it gets row positions instead.
    rows = np.arange(len(task.index), dtype=np.float64)[:, None]
    representations = {
        p: probe_representation(settings.representation, p, features)
        for p in settings.protocols
        if p != "finetune"
    }
    # One matrix per representation read (logreg and linear share CLS + mean patch token).
    matrices = {r: features.vectors(r)[task.index] for r in set(representations.values())}
    results: dict = {
        "task": settings.task,
        "classes": task.classes,
        "ordinal": task.ordinal,
        "class_counts": np.bincount(task.y, minlength=len(task.classes)).tolist(),
        "n_images_labelled": int(len(task.index)),  # joined images with a value for the task
        "n_patients": int(len(np.unique(groups))),
        "folds": settings.folds,
        "representations": representations,
        "protocols": {},
    }
    if "knn" in representations:
        spread = relative_spread(matrices[representations["knn"]])
        results["knn_relative_spread"] = spread
        if spread < KNN_MIN_SPREAD:
            results.setdefault("warnings", []).append(
                f"kNN: the images' {representations['knn']} features are nearly identical "
                f"(relative spread {spread:.1e} < {KNN_MIN_SPREAD:g}), so float rounding picks "
                "the neighbours; read logreg (a random-init or collapsed backbone does this)"
            )
    predictions: list[dict] = []
    for protocol in settings.protocols:
        inputs = rows if protocol == "finetune" else matrices[representations[protocol]]
        figures, oof = cross_validate(
            _probe(protocol, settings, ids),
            inputs,
            task.y,
            groups,
            fold,
            len(task.classes),
            ordinal=task.ordinal,
            fractions=settings.fractions,
            seed=settings.seed,
            n_boot=settings.n_boot,
            progress=progress,
        )
        results["protocols"][protocol] = figures
        predictions += _prediction_rows(ids, groups, fold, task, protocol, oof)
    return results, predictions


def evaluate(
    features_path: Path, labels_path: Path, settings: EvalSettings
) -> tuple[dict, list[dict], dict[str, np.ndarray]]:
    """Figures, out-of-fold predictions and heat maps of every protocol (same folds for all)."""
    from rich.console import Console
    from rich.progress import Progress

    features = load_features(features_path, with_grid=settings.localization)
    joined = join_labels(features, read_labels_csv(labels_path), settings.task, settings.join)
    n_joined = sum(r is not None for r in joined)
    if n_joined == 0:
        raise EvaluationError(
            f"no image of {features_path.name} matches a row of {labels_path.name} "
            "(check --join and the image/file column)"
        )
    patients = np.asarray(resolve_patients(features, joined, settings.patient_column))
    results: dict = {
        "features": str(features_path),
        "labels": str(labels_path),
        "settings": asdict(settings),
        "n_images": len(features),
        "n_images_joined": n_joined,  # images with a labels row (the task may still be empty)
        "n_images_labelled": n_joined,  # replaced by the task's count when there is a task
    }
    predictions: list[dict] = []
    arrays: dict[str, np.ndarray] = {}
    # Off when not on a terminal: a transient bar still leaves an empty line in a log file.
    with Progress(transient=True, disable=not Console().is_terminal) as bar:
        if settings.task:
            steps = len(settings.protocols) * len(settings.fractions) * settings.folds
            job = bar.add_task(f"eval {settings.task}", total=steps)
            figures, predictions = evaluate_task(
                features, joined, patients, settings, lambda: bar.advance(job)
            )
            results.update(figures)
        if settings.localization:
            job = bar.add_task("localization", total=settings.folds)
            results["localization"], arrays = evaluate_localization(
                features,
                joined,
                patients,
                settings.lesion_column,
                n_folds=settings.folds,
                seed=settings.seed,
                n_boot=settings.n_boot,
                progress=lambda: bar.advance(job),
            )
    return results, predictions, arrays


def _clean(value):
    """JSON without NaN/inf (they become null), numpy scalars as Python numbers."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_results(
    output: Path,
    results: dict,
    predictions: list[dict],
    arrays: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write results.json, predictions.csv and heatmaps.npz; return the results.json path."""
    output.mkdir(parents=True, exist_ok=True)
    path = output / RESULTS_NAME
    path.write_text(json.dumps(_clean(results), indent=2))
    if predictions:
        columns = list(dict.fromkeys(k for p in predictions for k in p))
        with (output / PREDICTIONS_NAME).open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns)
            writer.writeheader()
            writer.writerows(predictions)
    if arrays:
        np.savez_compressed(output / HEATMAPS_NAME, **arrays)
    return path


def _fmt(figure: dict | None) -> str:
    if not figure or figure.get("value") is None or not np.isfinite(figure["value"]):
        return "-"
    text = f"{figure['value']:.3f}"
    if "ci95" in figure:
        text += f" [{figure['ci95'][0]:.3f}, {figure['ci95'][1]:.3f}]"
    return text


def print_table(results: dict) -> None:
    """The pooled figures with 95% intervals and the fold means, one row per protocol/fraction."""
    from rich.console import Console
    from rich.table import Table

    # A wide console even when piped: the table carries intervals and would wrap badly at 80.
    console = Console(width=None if Console().is_terminal else 160)
    if "protocols" in results:
        keys = [
            k
            for k in (
                "auroc",
                "auprc",
                "auroc_ovr",
                "balanced_accuracy",
                "macro_f1",
                "kappa_quadratic",
            )
            if any(k in f["pooled"] for p in results["protocols"].values() for f in p.values())
        ]
        table = Table(
            title=f"{results['task']}: {results['n_patients']} patients, "
            f"{results['folds']}-fold patient-level CV (pooled, 95% CI; fold mean ± sd)"
        )
        for name in ("protocol", "labels", *keys):
            table.add_column(name)
        for protocol, by_fraction in results["protocols"].items():
            for fraction, figures in by_fraction.items():
                cells = []
                for k in keys:
                    mean = figures["mean"].get(k)
                    extra = f"\n{mean['mean']:.3f} ± {mean['std']:.3f}" if mean else ""
                    cells.append(_fmt(figures["pooled"].get(k)) + extra)
                table.add_row(protocol, f"{float(fraction):.0%}", *cells)
        console.print(table)
    if "localization" in results:
        loc = results["localization"]
        table = Table(title=f"lesion localization ({loc['n_images_with_lesions']} images)")
        table.add_column("hit rate (pointing game, ±1 patch)")
        table.add_column("random pointer")
        table.add_column("patch AUROC")
        table.add_column("position prior: hit rate / AUROC")
        chance = loc.get("hit_rate_chance")
        table.add_row(
            _fmt(loc["hit_rate"]),
            "-" if chance is None else f"{chance:.3f}",
            _fmt(loc["patch_auroc"]),
            position_prior_text(loc.get("position_prior")),
        )
        console.print(table)
