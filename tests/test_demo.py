"""`mammodino demo`: its file plumbing (fast) and the whole pipeline at tiny sizes (slow)."""

from __future__ import annotations

import csv
import json

import pytest
from rich.console import Console

from mammodino.report.demo_pipeline import (
    BACKBONES,
    TASKS,
    DemoSettings,
    run_demo,
    write_eval_cache,
    write_labels,
)
from mammodino.report.demo_summary import summary_table


def test_eval_cache_keeps_ffdm_rows_and_links_the_images(tmp_path):
    cache = tmp_path / "cache"
    (cache / "images").mkdir(parents=True)
    (cache / "masks").mkdir()
    (cache / "images" / "a.png").write_bytes(b"x")
    rows = [
        {"id": "a", "image": "images/a.png", "slice_index": ""},
        {"id": "v-000", "image": "images/v-000.png", "slice_index": "0"},
        {"id": "v-001", "image": "images/v-001.png", "slice_index": "1"},
    ]
    with (cache / "manifest.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "cache-ffdm"
    write_eval_cache(cache, out)
    write_eval_cache(cache, out)  # a rerun keeps the links
    with (out / "manifest.csv").open() as fh:
        assert [r["id"] for r in csv.DictReader(fh)] == ["a"]
    assert (out / "images" / "a.png").read_bytes() == b"x"


def test_malignancy_is_left_out_for_lesion_free_breasts(tmp_path):
    src = tmp_path / "labels.csv"
    src.write_text("file,lesion_present,malignant\na,1,1\nb,1,0\nc,0,0\n")
    write_labels(src, tmp_path / "out.csv")
    with (tmp_path / "out.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["malignancy"] for r in rows] == ["1", "0", ""]


def test_summary_table_has_one_row_per_backbone(tmp_path):
    for backbone, value in (("random-init", 0.55), ("mammodino", 0.71)):
        out = tmp_path / "density" / backbone
        out.mkdir(parents=True)
        pooled = {"balanced_accuracy": {"value": value, "ci95": [0.5, 0.9]}}
        data = {"features": f"f/{backbone}", "task": "density"}
        data["protocols"] = {"logreg": {"1": {"pooled": pooled}}}
        (out / "results.json").write_text(json.dumps(data))
    console = Console(width=200, record=True)
    console.print(summary_table(tmp_path))
    lines = [ln for ln in console.export_text().splitlines() if "0." in ln]
    assert "mammodino" in lines[0] and "0.710 [0.500, 0.900]" in lines[0]
    assert "random-init" in lines[1] and "0.550" in lines[1]


@pytest.mark.slow
def test_tiny_demo_runs_every_stage_and_resumes(tmp_path):
    settings = DemoSettings(
        n_ffdm=32,
        n_dbt=2,
        ffdm_shape=(96, 80),
        dbt_shape=(4, 64, 56),
        cache_size=64,
        max_steps=1,
        image_size=32,
        folds=2,
        n_boot=10,
        progress=False,
        overrides=[
            "crops.global_size=32",
            "crops.local_size=16",
            "crops.n_local=2",
            "model.patch_size=8",
            "data.batch_size=4",
            "heads.dino_out_dim=64",
            "heads.ibot_out_dim=64",
            "monitor.every=0",
            "train.precision=fp32",
        ],
    )
    demo = run_demo(tmp_path / "demo", settings, log=lambda _: None)
    eval_dir = demo.runs / "mammodino" / "eval"
    classified = 0
    for task in (*TASKS, "localization"):
        for backbone in BACKBONES:
            out = eval_dir / task / backbone
            if task != "localization" and (out / "skipped.json").is_file():
                continue  # 8 women in 2 folds may leave a class out of a training fold
            data = json.loads((out / "results.json").read_text())
            assert ("localization" in data) == (task == "localization")
            classified += task != "localization"
    assert classified >= len(BACKBONES)  # at least one task per backbone on average
    steps = [
        json.loads(line)["step"]
        for name in ("mammodino", "dinov2-recipe")
        for line in (demo.runs / name / "metrics.jsonl").read_text().splitlines()
    ]
    assert max(steps) == 1
    baseline = (demo.runs / "dinov2-recipe" / "config.yaml").read_text()
    assert "sampler: random" in baseline and "slice_loss_weight: 0" in baseline
    again = run_demo(tmp_path / "demo", settings, log=lambda _: None)
    assert set(again.timings.values()) == {0.0}  # every stage skipped on a rerun
