"""Print a Markdown table of `mammodino eval` results named `BACKBONE-TASK` in one folder.

    python benchmarks/summarize_eval.py EVAL_DIR
Columns: density balanced accuracy (kNN, logreg), normal/abnormal AUROC (kNN, logreg) and the
localization hit rate, each pooled over the folds with its bootstrap 95% interval. Backbones
named `RECIPE-seedN` are runs of one recipe with another seed: a second table gives each such
recipe's mean and standard deviation over its seeds (RECIPE itself is seed 0). With both
`mammodino` and `dinov2-recipe` run on two or more common seeds, a further table gives their
difference paired by seed (same seed: same initialisation and image order) with a 95% Student t
interval: the figure issue 13's "3 points above the DINOv2 recipe" is read from. Ablation runs of
mini_mias_compare.sh (`mammodino-random-crops`, `mammodino-random-masking`) get the same table
against `mammodino`: what each tissue-aware part adds, seed by seed; runs of phantom_mix.sh
(`mammodino+phantoms`) get `mammodino+phantoms - mammodino`: what the phantoms add.
"""

from __future__ import annotations

import argparse
import functools
import re
import statistics
import sys
from pathlib import Path

from scipy import stats

from mammodino.errors import EvaluationError
from mammodino.report.results import find_results

COLUMNS = [
    ("density", "knn", "balanced_accuracy", "density bal. acc. (kNN)"),
    ("density", "logreg", "balanced_accuracy", "density bal. acc. (logreg)"),
    ("abnormal", "knn", "auroc", "abnormal AUROC (kNN)"),
    ("abnormal", "logreg", "auroc", "abnormal AUROC (logreg)"),
]


def cell(metric: dict | None) -> str:
    """A pooled figure with its bootstrap interval, or '-'."""
    if not metric:
        return "-"
    low, high = metric.get("ci95", [float("nan")] * 2)
    return f"{metric['value']:.3f} [{low:.3f}, {high:.3f}]"


@functools.cache
def _results(path: Path) -> dict | None:
    """One results.json, read once however many tables use it (by the report's reader: an
    unreadable file is an EvaluationError that names it)."""
    return find_results([path])[0].data if path.is_file() else None


def pooled(folder: Path, task: str, protocol: str, metric: str) -> dict | None:
    """The pooled `metric` of `protocol` in FOLDER/TASK/results.json (None when absent)."""
    results = _results(folder / task / "results.json")
    if results is None:
        return None
    pooled = results["protocols"].get(protocol, {}).get("1", {})
    return pooled.get("pooled", {}).get(metric)


def table(header: list[str]) -> list[str]:
    """A Markdown table's header and separator lines."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]


def row(cells: list[str]) -> str:
    """One Markdown table row."""
    return "| " + " | ".join(cells) + " |"


def summarize(eval_dir: Path) -> str:
    names = sorted({p.name.rsplit("-", 1)[0] for p in eval_dir.iterdir() if p.is_dir()})
    lines = table(["backbone", *[c[3] for c in COLUMNS], "localization hit rate"])
    for name in names:
        cells = [cell(pooled(eval_dir, f"{name}-{t}", p, m)) for t, p, m, _ in COLUMNS]
        loc = _results(eval_dir / f"{name}-loc" / "results.json") or {}
        cells.append(cell(loc.get("localization", {}).get("hit_rate")))
        lines.append(row([name, *cells]))
    return "\n".join(lines + _over_seeds(eval_dir, names) + _paired(eval_dir, names))


def _over_seeds(eval_dir: Path, names: list[str]) -> list[str]:
    """Mean +- standard deviation over the seeds of each recipe that has more than one."""
    recipes: dict[str, list[str]] = {}
    for name in names:
        recipes.setdefault(recipe_and_seed(name)[0], []).append(name)
    recipes = {recipe: runs for recipe, runs in recipes.items() if len(runs) > 1}
    if not recipes:
        return []
    lines = ["", *table(["recipe (seeds)", *[c[3] for c in COLUMNS]])]
    for recipe, runs in sorted(recipes.items()):
        cells = []
        for task, protocol, metric, _ in COLUMNS:
            values = [pooled(eval_dir, f"{run}-{task}", protocol, metric) for run in runs]
            cells.append(mean_sd_cell([v["value"] for v in values if v]))
        lines.append(row([f"{recipe} ({len(runs)})", *cells]))
    return lines


# (recipe, baseline) pairs of mini_mias_compare.sh's recipes; the first is issue 13's comparison.
PAIRS = (
    ("mammodino", "dinov2-recipe"),
    ("mammodino", "mammodino-random-crops"),
    ("mammodino", "mammodino-random-masking"),
    ("mammodino+phantoms", "mammodino"),
)


def recipe_and_seed(name: str) -> tuple[str, int]:
    """`RECIPE-seedN` -> (RECIPE, N); any other name is seed 0 of its own recipe."""
    match = re.search(r"-seed(\d+)$", name)
    return (name[: match.start()], int(match.group(1))) if match else (name, 0)


def paired_difference(values: list[float]) -> tuple[float, float, float]:
    """Mean of per-seed differences and its 95% Student t interval (needs 2+ differences)."""
    mean = statistics.mean(values)
    half = stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5
    return mean, mean - half, mean + half


def mean_sd_cell(values: list[float]) -> str:
    """Mean +- standard deviation over seeds, or '-'."""
    if not values:
        return "-"
    spread = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.mean(values):.3f} +- {spread:.3f}"


def paired_cell(differences: list[float]) -> str:
    """Mean paired difference [95% t interval], or '-' with fewer than two differences."""
    if len(differences) < 2:
        return "-"
    mean, low, high = paired_difference(differences)
    return f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]"


def _paired(eval_dir: Path, names: list[str]) -> list[str]:
    """One table per pair in PAIRS run on two or more common seeds."""
    return [line for pair in PAIRS for line in _paired_table(eval_dir, names, *pair)]


def _paired_table(eval_dir: Path, names: list[str], recipe: str, baseline: str) -> list[str]:
    """RECIPE minus BASELINE, seed by seed: mean difference [95% t interval]."""
    runs: dict[str, dict[int, str]] = {recipe: {}, baseline: {}}
    for name in names:
        which, seed = recipe_and_seed(name)
        if which in runs:
            runs[which][seed] = name
    seeds = sorted(set(runs[recipe]) & set(runs[baseline]))
    if len(seeds) < 2:
        return []
    lines = ["", *table([f"{recipe} - {baseline} (seeds paired)", *[c[3] for c in COLUMNS]])]
    cells = []
    for task, protocol, metric, _ in COLUMNS:
        differences = []
        for seed in seeds:
            ours = pooled(eval_dir, f"{runs[recipe][seed]}-{task}", protocol, metric)
            theirs = pooled(eval_dir, f"{runs[baseline][seed]}-{task}", protocol, metric)
            if ours and theirs:
                differences.append(ours["value"] - theirs["value"])
        cells.append(paired_cell(differences))
    lines.append(row([f"{len(seeds)} seeds", *cells]))
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("eval_dir", type=Path, help="folder of `mammodino eval` outputs")
    args = parser.parse_args(argv)
    if not args.eval_dir.is_dir():
        sys.exit(f"{args.eval_dir}: not a folder")
    try:
        print(summarize(args.eval_dir))
    except EvaluationError as error:
        sys.exit(str(error))


if __name__ == "__main__":
    main()
