"""Slice-loss ablation on the phantom (issue 5, acceptance 2): labels, commands, runs and a summary.

    .venv/bin/python benchmarks/dbt_ablation.py [--seeds 0,1,2] [--run] PHANTOM CACHE WORK [key=value ...]

Writes WORK/slice_labels.csv: one row per cached DBT slice with `id, source, patient_id,
slice_index, lesion_in_slice` (1 when a lesion of that volume spans the slice: `slice_start <=
slice_index <= slice_end` in the phantom's lesions.csv) and `density` (the volume's BI-RADS
density from labels.csv), and WORK/ffdm_labels.csv: one row per cached FFDM image with `id,
source, patient_id, density`. For each seed, two `phantom-dbt` pretrainings at equal steps (same
data, steps and seed; `dbt.slice_loss_weight` 1 vs 0, key=value overrides for both), the embedding
of the whole cache by each run's teacher and by random init, and three probes with patient-level
5-fold CV and bootstrap 95% intervals: lesion in DBT slice (AUROC), density of DBT slices and
density of FFDM images (balanced accuracy), each with kNN and logreg.

Without --run the commands are printed. With --run they run: stages whose output exists are
skipped, so a rerun resumes (a pretraining cut short resumes from its last checkpoint); with 2 or
more cores the two pretrainings of a seed run side by side, each pinned to its own core with one
thread (small ViTs do not scale past one thread). Then Markdown tables: every backbone, and with
two or more seeds each recipe's mean +- sd and slice minus noslice paired by seed (95% t interval).
Seed 0's runs are WORK/run_slice and WORK/run_noslice, seed N's WORK/run_slice-seedN and so on.
"""

from __future__ import annotations

import argparse
import csv
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mammodino.config import load_config  # noqa: E402
from mammodino.preprocess.cache import read_manifest, write_csv_atomic  # noqa: E402
from summarize_eval import cell, mean_sd_cell, paired_cell, pooled, row, table  # noqa: E402

# (results name, labels file in WORK, label column, metric)
TASKS = (
    ("lesion_in_slice", "slice_labels.csv", "lesion_in_slice", "auroc"),
    ("density", "slice_labels.csv", "density", "balanced_accuracy"),
    ("ffdm_density", "ffdm_labels.csv", "density", "balanced_accuracy"),
)
RECIPES = (("slice", "1"), ("noslice", "0"))
PROTOCOLS = ("knn", "logreg")
RANDOM = "random-init"


def slice_labels(phantom: Path, cache: Path) -> list[dict[str, str]]:
    """One label row per DBT slice of the cache, joined to the phantom's labels and lesions."""
    labels = _phantom_labels(phantom)
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


def ffdm_labels(phantom: Path, cache: Path) -> list[dict[str, str]]:
    """One density row per FFDM image of the cache (rows without a volume)."""
    labels = _phantom_labels(phantom)
    return [
        {
            "id": row["id"],
            "source": row["source"],
            "patient_id": row["patient_id"],
            "density": labels[row["source"]]["density"],
        }
        for row in read_manifest(cache)
        if not row.get("volume_id") and row["source"] in labels
    ]


def _phantom_labels(phantom: Path) -> dict[str, dict[str, str]]:
    with (phantom / "labels.csv").open(newline="") as handle:
        return {row["file"]: row for row in csv.DictReader(handle)}


@dataclass
class Stage:
    """One command, the file whose presence means it is done, and its side-by-side group."""

    command: list[str]
    done: Path
    parallel: str | None = None  # stages of one group run side by side, each on its own core
    touch: bool = False  # create `done` after success (a pretraining run has no final file)


def run_name(recipe: str, seed: int) -> str:
    """`slice`, `noslice` for seed 0; `slice-seed2` and so on (summarize_eval's convention)."""
    return recipe if seed == 0 else f"{recipe}-seed{seed}"


def stages(
    cache: Path,
    work: Path,
    seeds: list[int],
    overrides: list[str],
    tasks: tuple[tuple[str, str, str, str], ...] = TASKS,
) -> list[Stage]:
    """Pretrain with and without the slice loss per seed, embed the cache, probe each task."""
    mammodino = [sys.executable, "-m", "mammodino"]
    cfg = load_config(preset="phantom-dbt", overrides=overrides).to_dict()
    size = str(cfg["crops"]["global_size"])
    out: list[Stage] = []
    backbones = [(RANDOM, f"random:{cfg['model']['arch']}/{cfg['model']['patch_size']}")]
    for seed in seeds:
        for recipe, weight in RECIPES:
            name = run_name(recipe, seed)
            run = work / f"run_{name}"
            pretrain = [*mammodino, "pretrain", "--config", "phantom-dbt", "--output-dir", str(run)]
            pretrain += ["--no-progress", f"data.source={cache}", f"dbt.slice_loss_weight={weight}"]
            pretrain += [*overrides, f"train.seed={seed}"]  # --seeds wins over an override
            out.append(Stage(pretrain, run / "done", parallel=f"seed{seed}", touch=True))
            backbones.append((name, str(run)))
    for name, weights in backbones:
        feats = work / f"feats_{name}"
        embed = [*mammodino, "embed", "--weights", weights, "--image-size", size]
        embed += ["--input", str(cache), "--output", str(feats), "--no-progress"]
        out.append(Stage(embed, feats / "features.npz"))
        for task, labels, column, _ in tasks:
            results = work / f"results_{name}_{task}"
            probe = [*mammodino, "eval", "--features", str(feats), "--labels", str(work / labels)]
            probe += ["--task", column, "--join", "id", "--protocol", *PROTOCOLS]
            out.append(Stage([*probe, "--output", str(results)], results / "results.json"))
    return out


def groups(todo: list[Stage]) -> list[list[Stage]]:
    """Consecutive stages of one `parallel` group together; every other stage alone."""
    out: list[list[Stage]] = []
    for stage in todo:
        if out and stage.parallel and out[-1][0].parallel == stage.parallel:
            out[-1].append(stage)
        else:
            out.append([stage])
    return out


def run_stages(todo: list[Stage]) -> None:
    """Run what is not done yet, groups side by side (pinned) when there are cores for it."""
    for group in groups(todo):
        group = [stage for stage in group if not stage.done.exists()]
        cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        pinned = len(group) > 1 and len(cores) >= len(group)
        slots = cores[: len(group)] if pinned else [None] * len(group)
        processes = []
        for core, stage in zip(slots, group, strict=True):
            command = _resumed(stage)
            print(shlex.join(command), flush=True)
            env = dict(os.environ, OMP_NUM_THREADS="1") if pinned else None
            pin = (lambda c=core: os.sched_setaffinity(0, {c})) if pinned else None
            processes.append(subprocess.Popen(command, env=env, preexec_fn=pin))
            if not pinned:
                processes[-1].wait()
        for stage, process in zip(group, processes, strict=True):
            if process.wait() != 0:
                raise SystemExit(f"failed ({process.returncode}): {shlex.join(stage.command)}")
            if stage.touch:
                stage.done.touch()


def _resumed(stage: Stage) -> list[str]:
    """A pretraining that left a checkpoint continues from it."""
    if stage.touch and (stage.done.parent / "checkpoints" / "last.pt").exists():
        at = stage.command.index("pretrain") + 1
        return [*stage.command[:at], "--resume", *stage.command[at:]]
    return stage.command


def summary(work: Path, seeds: list[int]) -> str:
    """Markdown: every backbone pooled; over seeds mean +- sd; slice - noslice paired by seed."""
    columns = [(t, p, m) for t, _, _, m in TASKS for p in PROTOCOLS]
    head = [f"{t} {m} ({p})" for t, p, m in columns]

    def figure(name: str, task: str, protocol: str, metric: str) -> dict | None:
        return pooled(work, f"results_{name}_{task}", protocol, metric)

    names = [RANDOM] + [run_name(r, s) for s in seeds for r, _ in RECIPES]
    lines = table(["backbone", *head])
    lines += [row([name, *[cell(figure(name, *column)) for column in columns]]) for name in names]
    if len(seeds) < 2:
        return "\n".join(lines)
    values = {
        (recipe, column): [figure(run_name(recipe, s), *column) for s in seeds]
        for recipe, _ in RECIPES
        for column in columns
    }
    lines += ["", *table([f"recipe ({len(seeds)} seeds)", *head])]
    for recipe, _ in RECIPES:
        found = [[v["value"] for v in values[recipe, column] if v] for column in columns]
        lines.append(row([recipe, *map(mean_sd_cell, found)]))
    cells = []
    for column in columns:
        pairs = zip(values["slice", column], values["noslice", column], strict=True)
        cells.append(paired_cell([a["value"] - b["value"] for a, b in pairs if a and b]))
    lines.append(row(["slice - noslice (paired, 95% t)", *cells]))
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; --run and --seeds may stand anywhere, before or after key=value."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("phantom", type=Path, help="output folder of `mammodino synth`")
    parser.add_argument("cache", type=Path, help="`mammodino prepare PHANTOM CACHE` output")
    parser.add_argument("work", type=Path, help="folder for labels, runs, features, results")
    parser.add_argument("--run", action="store_true", help="run the commands, not just print")
    parser.add_argument("--seeds", default="0", help="train.seed of each pair, e.g. 0,1,2")
    parser.add_argument("overrides", nargs="*", help="key=value for both pretraining runs")
    return parser.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    args.work.mkdir(parents=True, exist_ok=True)
    rows = slice_labels(args.phantom, args.cache)
    ffdm = ffdm_labels(args.phantom, args.cache)
    write_csv_atomic(args.work / "slice_labels.csv", list(rows[0]) if rows else ["id"], rows)
    write_csv_atomic(args.work / "ffdm_labels.csv", list(ffdm[0]) if ffdm else ["id"], ffdm)
    positives = sum(r["lesion_in_slice"] == "1" for r in rows)
    print(f"{len(rows)} DBT slices, {positives} with a lesion -> {args.work / 'slice_labels.csv'}")
    print(f"{len(ffdm)} FFDM images -> {args.work / 'ffdm_labels.csv'}")
    counts = {"slice_labels.csv": len(rows), "ffdm_labels.csv": len(ffdm)}
    # A phantom without FFDM: no FFDM probe.
    tasks = tuple(task for task in TASKS if counts[task[1]])
    todo = stages(args.cache, args.work, seeds, args.overrides, tasks)
    if not args.run:
        for stage in todo:
            print(shlex.join(stage.command))
        return
    run_stages(todo)
    print(summary(args.work, seeds))


if __name__ == "__main__":
    main()
