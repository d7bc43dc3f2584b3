"""benchmarks/summarize_eval.py: the per-run table, the mean over seeds and the seed-paired
difference between MammoDINO and the DINOv2 recipe, on constructed `eval` results."""

from __future__ import annotations

import json
import math

import pytest

from helpers import load_benchmark


def _write(eval_dir, name, task, protocol_values):
    """A results.json as `mammodino eval` writes it, with only the pooled values read here."""
    metric = "balanced_accuracy" if task == "density" else "auroc"
    protocols = {
        protocol: {
            "1": {"pooled": {metric: {"value": value, "ci95": [value - 0.05, value + 0.05]}}}
        }
        for protocol, value in protocol_values.items()
    }
    folder = eval_dir / f"{name}-{task}"
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"protocols": protocols}))


@pytest.fixture
def summarize_eval():
    return load_benchmark("summarize_eval")


def test_paired_difference_is_the_mean_with_a_student_t_interval(summarize_eval):
    mean, low, high = summarize_eval.paired_difference([0.02, 0.04])
    half = 12.7062 * math.sqrt(0.0002) / math.sqrt(2)  # t(0.975, 1 dof) * sd / sqrt(n)
    assert mean == pytest.approx(0.03)
    assert (low, high) == pytest.approx((0.03 - half, 0.03 + half), abs=1e-4)


def test_tables_over_seeds_and_paired_by_seed(summarize_eval, tmp_path):
    density = {  # run: (kNN, logreg)
        "mammodino": (0.70, 0.72),
        "mammodino-seed1": (0.74, 0.73),
        "mammodino-seed2": (0.71, 0.70),  # no DINOv2-recipe run of seed 2: not paired
        "dinov2-recipe": (0.68, 0.71),
        "dinov2-recipe-seed1": (0.70, 0.75),
        "random-init": (0.33, 0.50),
    }
    for name, (knn, logreg) in density.items():
        _write(tmp_path, name, "density", {"knn": knn, "logreg": logreg})
    text = summarize_eval.summarize(tmp_path)
    lines = text.splitlines()

    assert "| random-init | 0.330 [0.280, 0.380] | 0.500 [0.450, 0.550] | - | - | - |" in lines
    assert "| mammodino (3) | 0.717 +- 0.021 | 0.717 +- 0.015 | - | - |" in lines
    assert "| dinov2-recipe (2) | 0.690 +- 0.014 | 0.730 +- 0.028 | - | - |" in lines
    # Seeds 0 and 1: kNN differences +0.02, +0.04; logreg +0.01, -0.02.
    _, knn_low, knn_high = summarize_eval.paired_difference([0.02, 0.04])
    _, lr_low, lr_high = summarize_eval.paired_difference([0.01, -0.02])
    paired = lines[-1]
    assert paired.startswith("| 2 seeds | +0.030 ")
    assert f"[{knn_low:+.3f}, {knn_high:+.3f}]" in paired
    assert f"-0.005 [{lr_low:+.3f}, {lr_high:+.3f}]" in paired
    assert paired.endswith("| - | - |")  # no abnormal results


def test_ablation_runs_are_paired_against_mammodino(summarize_eval, tmp_path):
    density = {  # run: (kNN, logreg)
        "mammodino": (0.70, 0.72),
        "mammodino-seed1": (0.74, 0.73),
        "mammodino-random-masking": (0.66, 0.70),
        "mammodino-random-masking-seed1": (0.71, 0.70),
        "mammodino-random-crops-seed1": (0.70, 0.70),  # one common seed: no table
    }
    for name, (knn, logreg) in density.items():
        _write(tmp_path, name, "density", {"knn": knn, "logreg": logreg})
    lines = summarize_eval.summarize(tmp_path).splitlines()

    assert "| mammodino-random-masking (2) | 0.685 +- 0.035 | 0.700 +- 0.000 | - | - |" in lines
    assert lines[-3].startswith("| mammodino - mammodino-random-masking (seeds paired) |")
    # kNN differences +0.04, +0.03; logreg +0.02, +0.03.
    _, knn_low, knn_high = summarize_eval.paired_difference([0.04, 0.03])
    assert lines[-1].startswith(f"| 2 seeds | +0.035 [{knn_low:+.3f}, {knn_high:+.3f}] | +0.025 ")
    assert not any("mammodino-random-crops (seeds paired)" in line for line in lines)
    assert not any("dinov2-recipe" in line for line in lines)


def test_phantom_mix_runs_are_paired_with_mammodino(summarize_eval, tmp_path):
    density = {  # run: (kNN, logreg); phantom_mix.sh's names for seeds 9 and 10
        "mammodino-seed9": (0.69, 0.71),
        "mammodino-seed10": (0.67, 0.69),
        "mammodino+phantoms-seed9": (0.60, 0.66),
        "mammodino+phantoms-seed10": (0.65, 0.70),
    }
    for name, (knn, logreg) in density.items():
        _write(tmp_path, name, "density", {"knn": knn, "logreg": logreg})
    lines = summarize_eval.summarize(tmp_path).splitlines()

    assert lines[-3].startswith("| mammodino+phantoms - mammodino (seeds paired) |")
    # kNN differences -0.09, -0.02; logreg -0.05, +0.01: what the phantoms add.
    _, knn_low, knn_high = summarize_eval.paired_difference([-0.09, -0.02])
    assert lines[-1].startswith(f"| 2 seeds | -0.055 [{knn_low:+.3f}, {knn_high:+.3f}] | -0.020 ")


def test_no_paired_table_with_one_common_seed(summarize_eval, tmp_path):
    for name in ("mammodino", "mammodino-seed1", "dinov2-recipe"):
        _write(tmp_path, name, "density", {"knn": 0.7, "logreg": 0.7})
    text = summarize_eval.summarize(tmp_path)
    assert "mammodino (2)" in text
    assert "seeds paired" not in text


def test_an_unreadable_results_file_is_named(summarize_eval, tmp_path):
    from mammodino.errors import EvaluationError

    _write(tmp_path, "mammodino", "density", {"knn": 0.7, "logreg": 0.7})
    broken = tmp_path / "dinov2-recipe-density" / "results.json"
    broken.parent.mkdir()
    broken.write_text('{"protocols": ')  # cut short, as by a killed run
    with pytest.raises(
        EvaluationError, match=r"dinov2-recipe-density/results.json: not a readable"
    ):
        summarize_eval.summarize(tmp_path)
