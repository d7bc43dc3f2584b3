"""The demo's stages other than pretraining: library calls with the demo's settings, and the two
files the demo derives from the phantom (the FFDM-only cache view, the labels)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from mammodino.errors import EvaluationError
from mammodino.pipelines.demo_folder import Demo

TASKS = ("density", "lesion_present", "malignancy")
SKIPPED_NAME = "skipped.json"
WORKERS = 2  # processes of synth and prepare (the demo's 2-core budget)


def synthesize(demo: Demo) -> None:
    """The phantom set (what `mammodino synth` writes)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from mammodino.synth.dataset import SynthSettings, generate, plan

    s = demo.settings
    settings = SynthSettings(
        n_ffdm=s.n_ffdm,
        n_dbt=s.n_dbt,
        seed=s.seed,
        ffdm_shape=tuple(s.ffdm_shape),
        dbt_shape=tuple(s.dbt_shape),
    )
    columns = [
        TextColumn("synth"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, transient=True, disable=not s.progress) as progress:
        task = progress.add_task("synth", total=len(plan(settings)))
        _, lesions = generate(
            demo.phantom, settings, WORKERS, on_item=lambda _: progress.advance(task)
        )
    demo.log(f"{s.n_ffdm} FFDM + {s.n_dbt} DBT written to {demo.phantom} ({len(lesions)} lesions)")


def prepare(demo: Demo) -> None:
    """The cache of the phantom set, with its config.yaml (what `mammodino prepare` writes)."""
    from mammodino.config import load_config
    from mammodino.preprocess.pipeline import CacheOptions
    from mammodino.preprocess.prepare import run_prepare

    cfg = load_config()
    cfg.prepare["workers"], cfg.prepare["cache_size"] = WORKERS, demo.settings.cache_size
    settings = CacheOptions.from_config(cfg)
    salt = cfg.data.salt
    result = run_prepare(demo.phantom, demo.cache, settings, workers=WORKERS, salt=salt)
    if salt is not None:
        cfg.data.salt = "<set, not written>"  # the salt would let anyone re-derive the ids
    cfg.save(demo.cache / "config.yaml")
    if result.reused:
        demo.log(f"{result.reused} already prepared by an earlier run (kept)")
    demo.log(result.summary())


def embed(demo: Demo, name: str, weights: str) -> None:
    """Features of the FFDM cache with one backbone (what `mammodino embed --patch-grid` writes)."""
    from mammodino.eval.backbone import load_backbone
    from mammodino.eval.embedding_run import embed_rows, set_inference_threads
    from mammodino.preprocess.cache import read_cached_float, read_manifest

    set_inference_threads()
    cache = demo.eval_cache
    rows = read_manifest(cache, required=("id", "image"))
    backbone = load_backbone(weights, demo.settings.embed_size(), "cpu")
    path = embed_rows(
        backbone,
        rows,
        lambda i: read_cached_float(cache, rows[i]),
        demo.feats / name,
        patch_grid=True,
    )
    demo.log(f"{len(rows)} images embedded at {backbone.image_size} px -> {path}")


def finished(out: Path) -> bool:
    """Whether an evaluation folder holds its results (or the reason it was skipped)."""
    return (out / "results.json").is_file() or (out / SKIPPED_NAME).is_file()


def evaluate_all(demo: Demo, backbone: str) -> None:
    """Patient-level CV of every task (kNN + logreg) and localization for one backbone."""
    from mammodino.eval.evaluate import EvalSettings, evaluate, write_results

    s = demo.settings
    feats = demo.feats / backbone
    for task in (*TASKS, None):
        out = demo.runs / "mammodino" / "eval" / (task or "localization") / backbone
        if finished(out):
            continue
        settings = EvalSettings(
            task=task,
            protocols=["knn", "logreg"],
            folds=s.folds,
            seed=s.seed,
            n_boot=s.n_boot,
            knn_k=10,
            logreg_C=s.logreg_C,
            knn_standardise=backbone == "handcrafted",
            localization=task is None,
            positive="1" if task in ("lesion_present", "malignancy") else None,
        )
        try:
            results, predictions, arrays = evaluate(feats, demo.labels, settings)
        except (EvaluationError, ValueError) as err:
            # Too few cases of a class for the folds (tiny sets): say so, keep the other tasks.
            demo.log(f"[demo] {task or 'localization'} of {backbone} skipped: {err}")
            out.mkdir(parents=True, exist_ok=True)
            (out / SKIPPED_NAME).write_text(json.dumps({"reason": str(err)}))
            continue
        write_results(out, results, predictions, arrays)


def write_eval_cache(cache: Path, out: Path) -> None:
    """A view of the cache with the FFDM images only (DBT slices pretrain but are not cases to
    classify: 12 slices of one volume would outvote the 2-D images)."""
    from mammodino.preprocess.cache import MANIFEST_COLUMNS, read_manifest, write_manifest

    rows = read_manifest(cache, required=("id", "image"))
    columns = list(rows[0]) if rows else MANIFEST_COLUMNS  # the cache's own columns
    out.mkdir(parents=True, exist_ok=True)
    for sub in ("images", "masks"):
        link = out / sub
        if not link.exists():
            link.symlink_to(os.path.relpath(cache / sub, out), target_is_directory=True)
    write_manifest(out, [r for r in rows if not r.get("slice_index")], columns)


def write_labels(phantom_labels: Path, out: Path) -> None:
    """Phantom labels plus `malignancy`: malignant among breasts with a lesion, empty (left out)
    for lesion-free ones, so the task is benign vs malignant as in the clinic."""
    with phantom_labels.open(newline="") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        columns = [*(reader.fieldnames or []), "malignancy"]
    for r in rows:
        r["malignancy"] = r["malignant"] if r["lesion_present"] == "1" else ""
    with out.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
