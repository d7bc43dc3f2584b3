"""The pretraining loop on a tiny synthetic cache: metrics, checkpoints, exact resume (issue 4,
acceptance 3), NaN skip and stop-after-3, kNN monitor."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import TINY_LOOP, write_cache
from mammodino.config import load_config
from mammodino.errors import CheckpointError, ConfigError, NonFiniteLossError
from mammodino.train.checkpoint import list_checkpoints, load_checkpoint
from mammodino.train.loop import Trainer, train
from mammodino.train.resume_keys import changed_keys


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return write_cache(tmp_path_factory.mktemp("cache"))


def tiny_cfg(cache: Path, *overrides: str):
    return load_config(overrides=[f"data.source={cache}", *TINY_LOOP, *overrides])


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def weights(run: Path) -> dict:
    return load_checkpoint(run / "checkpoints")


def test_run_writes_config_metrics_and_checkpoints(cache, tmp_path):
    run = tmp_path / "run"
    train(
        tiny_cfg(cache, "optim.max_steps=3", "train.checkpoint_every=2"), run, show_progress=False
    )
    assert load_config(defaults=run / "config.yaml").optim.max_steps == 3
    records = read_metrics(run)
    assert [r["step"] for r in records] == [1, 2, 3]
    for key in ("loss", "loss/dino", "loss/ibot", "loss/koleo", "lr", "wd", "momentum",
                "teacher_temp", "samples_per_s"):  # fmt: skip
        assert all(np.isfinite(r[key]) for r in records), key
    assert all(0.0 < r["dino/teacher_entropy"] <= 1.0 for r in records)
    assert records[0]["lr"] == 0.0  # warm-up starts at 0
    assert records[1]["teacher_temp"] > records[0]["teacher_temp"]
    assert [s for s, _ in list_checkpoints(run / "checkpoints")] == [2, 3]
    payload = weights(run)
    assert payload["step"] == 3
    assert payload["data"] == {"position": 9, "epoch": 1, "index": 1, "n_images": 8}
    assert {"student", "teacher", "optimizer", "rng", "config", "losses"} <= set(payload)
    assert any(k.startswith("dino_head.last_layer") for k in payload["teacher"])
    with pytest.raises(CheckpointError, match="--resume"):
        Trainer(tiny_cfg(cache), run, show_progress=False)


def test_six_steps_equal_three_plus_resume_plus_three(cache, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(tiny_cfg(cache, "optim.max_steps=6"), straight, show_progress=False)
    train(tiny_cfg(cache, "optim.max_steps=3"), resumed, show_progress=False)
    train(tiny_cfg(cache, "optim.max_steps=6"), resumed, resume=True, show_progress=False)
    a, b = weights(straight), weights(resumed)
    assert a["step"] == b["step"] == 6
    assert a["data"] == b["data"]
    for part in ("student", "teacher"):
        assert a[part].keys() == b[part].keys()
        for name in a[part]:
            assert torch.equal(a[part][name], b[part][name]), f"{part}.{name}"
    # the resumed metrics continue the same curve: identical losses at every step
    losses = [[r["loss"] for r in read_metrics(run)] for run in (straight, resumed)]
    assert losses[0] == losses[1]


def test_resume_refuses_a_changed_recipe(cache, tmp_path):
    run = tmp_path / "run"
    train(tiny_cfg(cache, "optim.max_steps=1"), run, show_progress=False)
    with pytest.raises(ConfigError, match="optim.base_lr"):
        Trainer(tiny_cfg(cache, "optim.base_lr=0.1"), run, resume=True, show_progress=False)


def test_resume_accepts_a_key_added_since_the_checkpoint_at_its_default():
    current = load_config(preset="tiny-cpu").to_dict()
    saved = copy.deepcopy(current)
    del saved["masking"]["dense_weight"]  # a checkpoint written before the key existed
    assert changed_keys(saved, current) == []
    current["masking"]["dense_weight"] = 3.0  # not the default: the trajectory would change
    assert changed_keys(saved, current) == ["masking.dense_weight"]
    current["masking"]["dense_weight"] = 0.0
    current["train"]["log_every"] = 7  # allowed on resume
    current["optim"]["base_lr"] = 0.1
    assert changed_keys(saved, current) == ["optim.base_lr"]


def _inject_nan(monkeypatch, bad_steps: set[int], term: str = "loss/ibot"):
    """Make `term` NaN at the given optimiser steps (0-based)."""
    original = Trainer.train_step

    def train_step(self, micro_batches, values):
        if self.step in bad_steps:
            forward = self.model.forward

            def nan_forward(batch, temp):
                losses = forward(batch, temp)
                losses[term] = losses[term] * float("nan")
                losses["loss"] = losses["loss"] + losses[term]
                return losses

            self.model.forward = nan_forward
            try:
                return original(self, micro_batches, values)
            finally:
                del self.model.forward
        return original(self, micro_batches, values)

    monkeypatch.setattr(Trainer, "train_step", train_step)


def test_a_nan_step_is_skipped_and_reported(cache, tmp_path, monkeypatch):
    _inject_nan(monkeypatch, {1})
    trainer = Trainer(tiny_cfg(cache, "optim.max_steps=3"), tmp_path / "run", show_progress=False)
    seen = {}
    original_step = trainer.optimizer.step

    def counting_step(*args, **kwargs):
        seen[trainer.step] = True
        return original_step(*args, **kwargs)

    trainer.optimizer.step = counting_step
    trainer.run()
    assert sorted(seen) == [0, 2]  # no optimiser update at the NaN step
    skipped = [r for r in read_metrics(tmp_path / "run") if r.get("skipped")]
    assert len(skipped) == 1 and skipped[0]["step"] == 2
    assert skipped[0]["nonfinite_terms"] == ["loss/ibot"]
    assert skipped[0]["nonfinite_param_count"] > 0
    assert any(n.startswith("backbone.blocks.") for n in skipped[0]["nonfinite_params"])
    assert weights(tmp_path / "run")["step"] == 3


def test_three_nan_steps_in_a_row_stop_with_a_kept_checkpoint(cache, tmp_path, monkeypatch):
    _inject_nan(monkeypatch, {2, 3, 4}, term="loss/dino")
    run = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match="3 steps in a row.*loss/dino"):
        train(tiny_cfg(cache, "optim.max_steps=8"), run, show_progress=False)
    kept = weights(run)
    assert kept["step"] == 5
    before = load_checkpoint(run / "checkpoints" / "step_00000005.pt")
    assert [r["step"] for r in read_metrics(run) if r.get("skipped")] == [3, 4, 5]
    # the kept weights are those of the last good step: train 2 clean steps and compare
    clean = tmp_path / "clean"
    train(tiny_cfg(cache, "optim.max_steps=2"), clean, show_progress=False)
    for name, value in weights(clean)["student"].items():
        assert torch.equal(before["student"][name], value), name


def test_gradient_accumulation_and_monitor(cache, tmp_path):
    run = tmp_path / "run"
    overrides = [
        "optim.max_steps=2",
        "optim.accumulate_steps=2",
        "data.batch_size=2",
        "monitor.every=2",
        f"monitor.source={cache}",
        f"monitor.labels={cache / 'labels.csv'}",
        "monitor.label_column=tissue_FGD",
        "monitor.image_size=32",
        "monitor.k=3",
    ]
    train(tiny_cfg(cache, *overrides), run, show_progress=False)
    records = read_metrics(run)
    assert records[0] == {"step": 0, "monitor/knn_acc": records[0]["monitor/knn_acc"]}
    assert 0.0 <= records[-1]["monitor/knn_acc"] <= 1.0
    assert weights(run)["data"]["position"] == 8  # 2 steps x 2 micro-batches x 2 images


def test_pretrain_command_writes_a_run_and_resumes(cache, tmp_path, capsys):
    from mammodino.cli import main

    preset = tmp_path / "tiny.yaml"
    preset.write_text("model:\n  arch: vit_tiny\n")
    run = tmp_path / "run"
    base = ["pretrain", "--output-dir", str(run), "--no-progress"]
    overrides = [f"data.source={cache}", *TINY_LOOP]
    assert main([*base, "--config", str(preset), *overrides, "optim.max_steps=1"]) == 0
    stopped = "pretrain: stopped at step 1 of 12 (optim.max_steps / optim.max_minutes)"
    assert stopped in capsys.readouterr().out  # the schedule (4 epochs x 3) is not done
    assert main([*base, "--resume", "optim.max_steps=2"]) == 0  # config read from RUN
    assert [r["step"] for r in read_metrics(run)] == [1, 2]
    assert "stopped at step 2 of 12" in capsys.readouterr().out
    assert main([*base, "--resume", "optim.max_steps=12"]) == 0  # to the end: nothing said
    assert "stopped at step" not in capsys.readouterr().out
    assert read_metrics(run)[-1]["step"] == 12
    assert main([*base, "--config", str(preset), *overrides]) == 1  # refuses to overwrite


def test_max_minutes_stops_early_with_a_checkpoint(cache, tmp_path):
    run = tmp_path / "run"
    record = train(tiny_cfg(cache, "optim.max_minutes=1e-6"), run, show_progress=False)
    assert record["step"] == 1  # the first step already exceeds the time budget
    assert record["schedule_steps"] == 12
    assert weights(run)["step"] == 1


def test_a_completed_run_is_judged_at_its_end_and_a_stopped_one_is_not(cache, tmp_path):
    # Tolerance 100% of ln K: every record counts as the plateau. 12 records: enough to judge
    # (patience 20 / 2), too few for a streak warning.
    judged = ("health.plateau_tolerance=1.0", "health.patience=20")
    train(tiny_cfg(cache, *judged), tmp_path / "done", show_progress=False)
    records = read_metrics(tmp_path / "done")
    warnings = [r for r in records if "warning" in r]
    assert [(r["step"], r["warning"]) for r in warnings] == [(12, "plateau")]
    assert "the run ended on the plateau" in warnings[0]["message"]
    assert records[-1] is warnings[0]  # after the last step's record
    # Stopped before its schedule ends (max_steps, max_minutes): its end is still to come.
    train(tiny_cfg(cache, *judged, "optim.max_steps=11"), tmp_path / "cut", show_progress=False)
    assert not any("warning" in r for r in read_metrics(tmp_path / "cut"))
