"""benchmarks/dbt_ablation.py: label files, which stages run side by side, the resumed command and
the summary tables, on a constructed cache and constructed `eval` results. (The whole script runs
on a tiny phantom in tests/test_readme_commands.py.)"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from helpers import TINY_TRAIN, load_benchmark


@pytest.fixture
def ablation():
    return load_benchmark("dbt_ablation")


def _csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_labels_join_slices_to_lesion_spans_and_ffdm_images_to_density(ablation, tmp_path):
    phantom, cache = tmp_path / "phantom", tmp_path / "cache"
    phantom.mkdir()
    cache.mkdir()
    _csv(
        phantom / "labels.csv",
        [
            {"file": "dbt/v.dcm", "density": "c"},
            {"file": "ffdm/a.dcm", "density": "a"},
        ],
    )
    _csv(
        phantom / "lesions.csv",
        [
            {"file": "dbt/v.dcm", "slice_start": "1", "slice_end": "2"},
            {"file": "ffdm/a.dcm", "slice_start": "", "slice_end": ""},
        ],
    )
    slices = [
        {"id": f"v-{i}", "source": "dbt/v.dcm", "patient_id": "p1", "volume_id": "v"}
        for i in range(4)
    ]
    manifest = [{**row, "slice_index": str(i), "slice_count": "4"} for i, row in enumerate(slices)]
    ffdm = {"id": "a", "source": "ffdm/a.dcm", "patient_id": "p2"}
    manifest.append({**ffdm, "volume_id": "", "slice_index": "", "slice_count": ""})
    columns = ["image", "mask", "laterality", "view", "height", "width", "flipped"]
    _csv(cache / "manifest.csv", [{**row, **dict.fromkeys(columns, "0")} for row in manifest])

    rows = ablation.slice_labels(phantom, cache)
    assert [r["lesion_in_slice"] for r in rows] == ["0", "1", "1", "0"]
    assert {r["density"] for r in rows} == {"c"}
    assert ablation.ffdm_labels(phantom, cache) == [
        {"id": "a", "source": "ffdm/a.dcm", "patient_id": "p2", "density": "a"}
    ]


def test_the_two_pretrainings_of_a_seed_run_side_by_side_and_resume(ablation, tmp_path):
    overrides = [*TINY_TRAIN, "optim.max_steps=2"]
    stages = ablation.stages(tmp_path / "cache", tmp_path, [0, 3], overrides, ablation.TASKS[:1])
    groups = ablation.groups(stages)
    runs = [[s.done.parent.name for s in g] for g in groups if g[0].touch]
    assert runs == [["run_slice", "run_noslice"], ["run_slice-seed3", "run_noslice-seed3"]]
    assert all(len(g) == 1 for g in groups if not g[0].touch)  # embeddings and probes one by one
    random_embed = next(s for s in stages if s.done.parent.name == "feats_random-init")
    assert "random:vit_tiny/8" in random_embed.command  # TINY_TRAIN's model, not the preset's
    slice_seed3 = groups[1][0]
    assert (
        "train.seed=3" in slice_seed3.command and "dbt.slice_loss_weight=1" in slice_seed3.command
    )

    (slice_seed3.done.parent / "checkpoints").mkdir(parents=True)
    assert ablation._resumed(slice_seed3) == slice_seed3.command
    (slice_seed3.done.parent / "checkpoints" / "last.pt").touch()
    resumed = ablation._resumed(slice_seed3)
    assert resumed[resumed.index("pretrain") + 1] == "--resume"


def _results(work: Path, name: str, task: str, knn: float, logreg: float) -> None:
    metric = "auroc" if task == "lesion_in_slice" else "balanced_accuracy"
    protocols = {
        protocol: {"1": {"pooled": {metric: {"value": value, "ci95": [value - 0.1, value + 0.1]}}}}
        for protocol, value in (("knn", knn), ("logreg", logreg))
    }
    folder = work / f"results_{name}_{task}"
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"protocols": protocols}))


def test_summary_gives_every_backbone_the_mean_over_seeds_and_the_paired_difference(
    ablation, tmp_path
):
    lesion = {  # backbone: (kNN, logreg) AUROC of lesion in slice
        "random-init": (0.50, 0.55),
        "slice": (0.60, 0.62),
        "noslice": (0.50, 0.60),
        "slice-seed1": (0.64, 0.66),
        "noslice-seed1": (0.52, 0.60),
    }
    for name, (knn, logreg) in lesion.items():
        _results(tmp_path, name, "lesion_in_slice", knn, logreg)
    lines = ablation.summary(tmp_path, [0, 1]).splitlines()

    assert lines[2] == "| random-init | 0.500 [0.400, 0.600] | 0.550 [0.450, 0.650] |" + (
        " - |" * 4
    )
    assert lines[10].startswith("| slice | 0.620 +- 0.028 | 0.640 +- 0.028 | - |")
    assert lines[11].startswith("| noslice | 0.510 +- 0.014 | 0.600 +- 0.000 | - |")
    # kNN differences +0.10 and +0.12; logreg +0.02 and +0.06.
    _, low, high = load_benchmark("summarize_eval").paired_difference([0.10, 0.12])
    assert lines[12].startswith(
        f"| slice - noslice (paired, 95% t) | +0.110 [{low:+.3f}, {high:+.3f}]"
    )
    assert lines[12].endswith("| - | - | - | - |")
    assert len(ablation.summary(tmp_path, [0]).splitlines()) == 5  # one seed: no seed tables


@pytest.mark.parametrize(
    "argv",
    [
        ["--run", "--seeds", "0,1", "P", "C", "W", "data.dbt_fraction=0.5", "dbt.pair_size=48"],
        ["P", "C", "W", "data.dbt_fraction=0.5", "dbt.pair_size=48", "--run", "--seeds", "0,1"],
        ["--seeds", "0,1", "P", "C", "W", "--run", "data.dbt_fraction=0.5", "dbt.pair_size=48"],
    ],
)
def test_flags_may_stand_before_or_after_the_overrides(ablation, argv):
    args = ablation.parse_args(argv)
    assert (args.phantom, args.cache, args.work) == (Path("P"), Path("C"), Path("W"))
    assert args.run and args.seeds == "0,1"
    assert args.overrides == ["data.dbt_fraction=0.5", "dbt.pair_size=48"]
