"""Print a Markdown table of `mammodino eval` results named `BACKBONE-TASK` in one folder.

    python benchmarks/summarize_eval.py EVAL_DIR
Columns: density balanced accuracy (kNN, logreg), normal/abnormal AUROC (kNN, logreg) and the
localization hit rate, each pooled over the folds with its bootstrap 95% interval.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

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
    return "\n".join(lines)


if __name__ == "__main__":
    print(summarize(Path(sys.argv[1])))
