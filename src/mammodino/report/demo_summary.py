"""The summary table `mammodino demo` prints: one row per backbone, one column per task."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rich.table import Table

from mammodino.eval.localization import position_prior_text
from mammodino.report.results import backbone_order, chance_level, find_results
from mammodino.report.runs import SHORT_RUN_STEPS, format_minutes, run_facts

# The columns: (task, probe, figure, header). Density gets both probes: kNN reads the CLS token,
# logreg CLS + mean patch token (eval's `auto` representation, DINOv2's protocol).
COLUMNS = (
    ("density", "logreg", "balanced_accuracy", "density bal. acc. (logreg)"),
    ("density", "knn", "balanced_accuracy", "density bal. acc. (kNN)"),
    ("lesion_present", "logreg", "auroc", "lesion AUROC"),
    ("malignancy", "logreg", "auroc", "malignancy AUROC"),
)


def summary_table(eval_dir: Path) -> Table:
    """Backbones x tasks: the headline figure with its 95% interval, and localization hit rate."""
    results = find_results([eval_dir]) if eval_dir.exists() else []
    cells: dict[str, dict[str, str]] = {}
    chance: dict[str, str] = {}
    prior: str | None = None  # the position prior's hit rate (same grid and folds for all)
    flagged = False
    for r in sorted(results, key=lambda r: backbone_order(r.backbone)):
        row = cells.setdefault(r.backbone, {})
        for task, probe, figure, header in COLUMNS:
            if r.task != task or "protocols" not in r.data:
                continue
            pooled = r.data["protocols"].get(probe, {}).get("1", {}).get("pooled", {})
            row[header] = _text(pooled.get(figure))
            if probe == "knn" and _knn_warned(r.data):
                row[header] += " *"
                flagged = True
            level = chance_level(figure, r.data.get("class_counts") or [])
            chance[header] = "-" if level is None else f"{level:.3f}"
        if "localization" in r.data:
            row["localization"] = _text(r.data["localization"].get("hit_rate"))
            level = r.data["localization"].get("hit_rate_chance")
            chance["localization"] = "-" if level is None else f"{level:.3f}"
            if "position_prior" in r.data["localization"]:
                prior = position_prior_text(r.data["localization"]["position_prior"], ["hit_rate"])
    table = Table(title="demo: patient-level 5-fold CV (pooled, 95% CI)")
    headers = [header for *_, header in COLUMNS]
    table.add_column("backbone")
    for header in [*headers, "lesion loc. hit rate"]:
        table.add_column(header, justify="right")
    keys = [*headers, "localization"]
    for backbone, row in cells.items():
        table.add_row(backbone, *(row.get(k, "-") for k in keys))
    if cells:
        # Balanced accuracy 1/classes, AUROC 0.5, a random pointer's hit rate.
        table.add_row("chance level", *(chance.get(k, "-") for k in keys), style="dim")
    if prior is not None:
        # Where lesions usually are, no features: what a probe must beat to show it sees them.
        table.add_row("position prior", *(["-"] * len(headers)), prior, style="dim")
    if flagged:
        table.caption = (
            "* kNN on nearly identical features (a random-init ViT): float rounding picks the "
            "neighbours, read logreg (docs/evaluation.md, Protocols)"
        )
    return table


def _knn_warned(data: dict) -> bool:
    """Whether eval warned that this backbone's kNN features are nearly identical."""
    return any(w.startswith("kNN:") for w in data.get("warnings", []))


def runs_table(runs: Sequence[Path]) -> Table:
    """Steps, images seen and time of each pretraining run; short runs flagged in red."""
    table = Table(title="pretraining runs (equal steps: equal compute)")
    table.add_column("run")
    for name in ("steps", "images seen", "wall time of the steps", "logged points"):
        table.add_column(name, justify="right")
    table.add_column("flag")
    for run in runs:
        facts = run_facts(run)
        if facts is None:
            continue
        flag = (
            f"[bold red]too short to compare (< {SHORT_RUN_STEPS} steps)" if facts.too_short else ""
        )
        table.add_row(
            facts.name,
            str(facts.steps),
            f"{facts.images_seen:,}",
            format_minutes(facts.step_seconds),
            str(facts.curve_points),
            flag,
        )
    return table


def _text(figure: dict | None) -> str:
    if not figure or figure.get("value") is None:
        return "-"
    ci = figure.get("ci95") or [None, None]
    if ci[0] is None:
        return f"{figure['value']:.3f}"
    return f"{figure['value']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"
