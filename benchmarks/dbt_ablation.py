"""Slice-loss ablation on the phantom (issue 5, acceptance 2): per-slice labels and the commands.

    .venv/bin/python benchmarks/dbt_ablation.py PHANTOM CACHE WORK [--run] [key=value ...]

Writes WORK/slice_labels.csv: one row per cached DBT slice with `id, source, patient_id,
slice_index, lesion_in_slice` (1 when a lesion of that volume spans the slice: `slice_start <=
slice_index <= slice_end` in the phantom's lesions.csv) and `density` (the volume's BI-RADS
density from labels.csv). Then prints, or with `--run` runs, the two pretraining runs at equal
compute (same preset, data, steps and seed; `dbt.slice_loss_weight` 1 vs 0), the embedding of
every DBT slice by each run's teacher and the two probes with patient-level folds and bootstrap
95% intervals. Needs the meta-architecture hook of docs/tomosynthesis.md for `loss/slice`.
"""

from __future__ import annotations

import argparse
import csv
import shlex
import subprocess
import sys
from pathlib import Path

from mammodino.preprocess.cache import read_manifest

TASKS = ("lesion_in_slice", "density")


def slice_labels(phantom: Path, cache: Path) -> list[dict[str, str]]:
    """One label row per DBT slice of the cache, joined to the phantom's labels and lesions."""
    with (phantom / "labels.csv").open(newline="") as handle:
        labels = {row["file"]: row for row in csv.DictReader(handle)}
    spans: dict[str, list[tuple[int, int]]] = {}
    with (phantom / "lesions.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            if row["slice_start"] and row["slice_end"]:
                span = (int(row["slice_start"]), int(row["slice_end"]))
                spans.setdefault(row["file"], []).append(span)
    rows = []
    for row in read_manifest(cache):
        source = row["source"]
        if not row.get("volume_id") or source not in labels:
            continue
        index = int(row["slice_index"])
        inside = any(a <= index <= b for a, b in spans.get(source, []))
        rows.append(
            {
                "id": row["id"],
                "source": source,
                "patient_id": row["patient_id"],
                "slice_index": str(index),
                "lesion_in_slice": str(int(inside)),
                "density": labels[source]["density"],
            }
        )
    return rows


def commands(cache: Path, work: Path, overrides: list[str]) -> list[list[str]]:
    """Pretrain with and without the slice loss, embed the DBT slices, probe both tasks."""
    mammodino = [sys.executable, "-m", "mammodino"]
    out = []
    for name, weight in (("slice", "1"), ("noslice", "0")):
        run, feats = work / f"run_{name}", work / f"feats_{name}"
        out.append(
            [
                *mammodino,
                "pretrain",
                "--config",
                "phantom-dbt",
                "--output-dir",
                str(run),
                f"data.source={cache}",
                f"dbt.slice_loss_weight={weight}",
                *overrides,
            ]
        )
        out.append(
            [
                *mammodino,
                "embed",
                "--weights",
                str(run),
                "--input",
                str(cache),
                "--output",
                str(feats),
            ]
        )
        for task in TASKS:
            out.append(
                [
                    *mammodino,
                    "eval",
                    "--features",
                    str(feats),
                    "--labels",
                    str(work / "slice_labels.csv"),
                    "--task",
                    task,
                    "--join",
                    "id",
                    "--protocol",
                    "knn",
                    "logreg",
                    "--output",
                    str(work / f"results_{name}_{task}"),
                ]
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("phantom", type=Path, help="output folder of `mammodino synth`")
    parser.add_argument("cache", type=Path, help="`mammodino prepare PHANTOM CACHE` output")
    parser.add_argument("work", type=Path, help="folder for labels, runs, features, results")
    parser.add_argument("--run", action="store_true", help="run the commands, not just print")
    parser.add_argument("overrides", nargs="*", help="key=value for both pretraining runs")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    rows = slice_labels(args.phantom, args.cache)
    with (args.work / "slice_labels.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["id"])
        writer.writeheader()
        writer.writerows(rows)
    positives = sum(r["lesion_in_slice"] == "1" for r in rows)
    print(f"{len(rows)} DBT slices, {positives} with a lesion -> {args.work / 'slice_labels.csv'}")
    for command in commands(args.cache, args.work, args.overrides):
        print(shlex.join(command))
        if args.run:
            subprocess.run(command, check=True)


if __name__ == "__main__":
    main()
