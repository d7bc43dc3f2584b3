"""Print a Markdown table of `mammodino eval` results named `BACKBONE-TASK` in one folder.

    python benchmarks/summarize_eval.py EVAL_DIR
Columns: density balanced accuracy (kNN, logreg), normal/abnormal AUROC (kNN, logreg) and the
localization hit rate, each pooled over the folds with its bootstrap 95% interval. Backbones
named `RECIPE-seedN` are runs of one recipe with another seed: a second table gives each such
recipe's mean and standard deviation over its seeds (RECIPE itself is seed 0). With both
`mammodino` and `dinov2-recipe` run on two or more common seeds, a last table gives their
difference paired by seed (same seed: same initialisation and image order) with a 95% Student t
interval: the figure issue 13's "3 points above the DINOv2 recipe" is read from.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

from scipy import stats

COLUMNS = [
    ("density", "knn", "balanced_accuracy", "density bal. acc. (kNN)"),
    ("density", "logreg", "balanced_accuracy", "density bal. acc. (logreg)"),
    ("abnormal", "knn", "auroc", "abnormal AUROC (kNN)"),
    ("abnormal", "logreg", "auroc", "abnormal AUROC (logreg)"),
]


def _cell(metric: dict | None) -> str:
    if not metric:
        return "-"
    low, high = metric.get("ci95", [float("nan")] * 2)
    return f"{metric['value']:.3f} [{low:.3f}, {high:.3f}]"


def _pooled(folder: Path, task: str, protocol: str, metric: str) -> dict | None:
    path = folder / task / "results.json"
    if not path.is_file():
        return None
    pooled = json.loads(path.read_text())["protocols"].get(protocol, {}).get("1", {})
    return pooled.get("pooled", {}).get(metric)


def summarize(eval_dir: Path) -> str:
    names = sorted({p.name.rsplit("-", 1)[0] for p in eval_dir.iterdir() if p.is_dir()})
    header = ["backbone", *[c[3] for c in COLUMNS], "localization hit rate"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in names:
        cells = [_cell(_pooled(eval_dir, f"{name}-{t}", p, m)) for t, p, m, _ in COLUMNS]
        loc_path = eval_dir / f"{name}-loc" / "results.json"
        loc = json.loads(loc_path.read_text())["localization"] if loc_path.is_file() else {}
        cells.append(_cell(loc.get("hit_rate")))
        lines.append("| " + " | ".join([name, *cells]) + " |")
    return "\n".join(lines + _over_seeds(eval_dir, names) + _paired(eval_dir, names))


def _over_seeds(eval_dir: Path, names: list[str]) -> list[str]:
    """Mean +- standard deviation over the seeds of each recipe that has more than one."""
    recipes: dict[str, list[str]] = {}
    for name in names:
        recipes.setdefault(re.sub(r"-seed\d+$", "", name), []).append(name)
    recipes = {recipe: runs for recipe, runs in recipes.items() if len(runs) > 1}
    if not recipes:
        return []
    header = ["recipe (seeds)", *[c[3] for c in COLUMNS]]
    lines = ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for recipe, runs in sorted(recipes.items()):
        cells = []
        for task, protocol, metric, _ in COLUMNS:
            values = [_pooled(eval_dir, f"{run}-{task}", protocol, metric) for run in runs]
            values = [v["value"] for v in values if v]
            spread = statistics.stdev(values) if len(values) > 1 else float("nan")
            cells.append(f"{statistics.mean(values):.3f} +- {spread:.3f}" if values else "-")
        lines.append("| " + " | ".join([f"{recipe} ({len(runs)})", *cells]) + " |")
    return lines


PAIR = ("mammodino", "dinov2-recipe")  # (recipe, baseline) of mini_mias_compare.sh


def _seed_of(name: str, recipe: str) -> int | None:
    """N for `RECIPE-seedN`, 0 for `RECIPE` itself, None for another recipe's run."""
    if name == recipe:
        return 0
    match = re.fullmatch(re.escape(recipe) + r"-seed(\d+)", name)
    return int(match.group(1)) if match else None


def paired_difference(values: list[float]) -> tuple[float, float, float]:
    """Mean of per-seed differences and its 95% Student t interval (needs 2+ differences)."""
    mean = statistics.mean(values)
    half = stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5
    return mean, mean - half, mean + half


def _paired(eval_dir: Path, names: list[str]) -> list[str]:
    """MammoDINO minus the DINOv2 recipe, seed by seed: mean difference [95% t interval]."""
    recipe, baseline = PAIR
    runs = {
        which: {seed: n for n in names if (seed := _seed_of(n, which)) is not None}
        for which in PAIR
    }
    seeds = sorted(set(runs[recipe]) & set(runs[baseline]))
    if len(seeds) < 2:
        return []
    header = [f"{recipe} - {baseline} (seeds paired)", *[c[3] for c in COLUMNS]]
    lines = ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    cells = []
    for task, protocol, metric, _ in COLUMNS:
        differences = []
        for seed in seeds:
            ours = _pooled(eval_dir, f"{runs[recipe][seed]}-{task}", protocol, metric)
            theirs = _pooled(eval_dir, f"{runs[baseline][seed]}-{task}", protocol, metric)
            if ours and theirs:
                differences.append(ours["value"] - theirs["value"])
        if len(differences) < 2:
            cells.append("-")
            continue
        mean, low, high = paired_difference(differences)
        cells.append(f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]")
    lines.append("| " + " | ".join([f"{len(seeds)} seeds", *cells]) + " |")
    return lines


if __name__ == "__main__":
    print(summarize(Path(sys.argv[1])))
