"""Checkpoint files: atomic writes, keep-last-N, `last.pt` always loadable, safe loading."""

from __future__ import annotations

import datetime
import random

import numpy as np
import pytest
import torch

from mammodino.errors import CheckpointError
from mammodino.train import checkpoint as ckpt
from mammodino.train.checkpoint import (
    CheckpointManager,
    capture_rng_state,
    list_checkpoints,
    load_checkpoint,
    restore_rng_state,
)


def _payload(step: int) -> dict:
    return {"step": step, "student": {"w": torch.full((3,), float(step))}, "config": "a: 1\n"}


def test_keep_last_n_and_last_points_at_newest(tmp_path):
    manager = CheckpointManager(tmp_path / "checkpoints", keep=2)
    for step in (10, 20, 30, 40):
        manager.save(_payload(step))
    assert [s for s, _ in list_checkpoints(manager.folder)] == [30, 40]
    last = load_checkpoint(manager.folder)  # a folder means its last.pt
    assert last["step"] == 40
    assert torch.equal(last["student"]["w"], torch.full((3,), 40.0))
    assert sorted(p.name for p in manager.folder.iterdir()) == [
        "last.pt",
        "step_00000030.pt",
        "step_00000040.pt",
    ]


def test_crash_during_write_leaves_last_loadable(tmp_path, monkeypatch):
    manager = CheckpointManager(tmp_path, keep=3)
    manager.save(_payload(1))

    def crashing_save(obj, handle):
        handle.write(b"partial bytes of a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", crashing_save)
    with pytest.raises(CheckpointError, match="disk full"):  # issue 9: one clear error
        manager.save(_payload(2))
    assert load_checkpoint(manager.last_path)["step"] == 1
    assert [s for s, _ in list_checkpoints(tmp_path)] == [1]  # no half-written step file


def test_corrupt_or_foreign_files_raise_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
    truncated = tmp_path / "truncated.pt"
    CheckpointManager(tmp_path).save(_payload(5))
    truncated.write_bytes((tmp_path / "step_00000005.pt").read_bytes()[:100])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": torch.zeros(1)}, foreign)
    with pytest.raises(CheckpointError, match="not a mammodino training checkpoint"):
        load_checkpoint(foreign)


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    obj = datetime.date(2020, 1, 1)  # any class outside the weights_only allow-list
    torch.save({"format": "mammodino-checkpoint", "version": 1, "obj": obj}, path)
    with pytest.raises(CheckpointError, match="not a tensor-only checkpoint"):
        load_checkpoint(path)


def test_rng_state_round_trip_through_a_file(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    CheckpointManager(tmp_path).save({"step": 0, "rng": capture_rng_state()})
    expected = (random.random(), np.random.rand(), torch.rand(2))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    restore_rng_state(load_checkpoint(tmp_path)["rng"])
    got = (random.random(), np.random.rand(), torch.rand(2))
    assert got[0] == expected[0] and got[1] == expected[1]
    assert torch.equal(got[2], expected[2])
