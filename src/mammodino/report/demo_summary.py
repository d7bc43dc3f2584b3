"""The summary table `mammodino demo` prints: one row per backbone, one column per task."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from mammodino.report.results import backbone_order, find_results

# The headline figure of each task (pooled out-of-fold, logistic regression probe).
HEADLINE = {
    "density": "balanced_accuracy",
    "lesion_present": "auroc",
    "malignancy": "auroc",
}


HEADER = ("density bal. acc.", "lesion AUROC", "malignancy AUROC")


def summary_table(eval_dir: Path, protocol: str = "logreg") -> Table:
    """Backbones x tasks: the headline figure with its 95% interval, and localization hit rate."""
    results = find_results([eval_dir]) if eval_dir.exists() else []
    cells: dict[str, dict[str, str]] = {}
    for r in sorted(results, key=lambda r: backbone_order(r.backbone)):
        row = cells.setdefault(r.backbone, {})
        if r.task in HEADLINE and "protocols" in r.data:
            fig = r.data["protocols"].get(protocol, {}).get("1", {}).get("pooled", {})
            row[r.task] = _text(fig.get(HEADLINE[r.task]))
        if "localization" in r.data:
            row["localization"] = _text(r.data["localization"].get("hit_rate"))
    table = Table(title=f"demo: patient-level 5-fold CV ({protocol} probe; pooled, 95% CI)")
    columns = [*HEADER, "lesion loc. hit rate"]
    table.add_column("backbone")
    for c in columns:
        table.add_column(c, justify="right")
    for backbone, row in cells.items():
        keys = [*HEADLINE, "localization"]
        table.add_row(backbone, *(row.get(k, "-") for k in keys))
    return table


def _text(figure: dict | None) -> str:
    if not figure or figure.get("value") is None:
        return "-"
    ci = figure.get("ci95") or [None, None]
    if ci[0] is None:
        return f"{figure['value']:.3f}"
    return f"{figure['value']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"
