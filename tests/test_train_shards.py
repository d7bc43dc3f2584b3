"""Pretraining from tar shards (issue 7): the loop streams `prepare --shards` output through
`ResumableLoader`, keeps the stream position in the checkpoint and resumes exactly from it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import TINY_LOOP, write_cache
from mammodino.config import load_config
from mammodino.data.shards import shard_prepared_cache
from mammodino.train.checkpoint import load_checkpoint
from mammodino.train.loop import train

STREAM = ["data.shuffle_buffer=4", "data.mix_shards=2", "dbt.slice_loss_weight=0"]


@pytest.fixture(scope="module")
def caches(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("shards")
    cache = write_cache(root / "cache")
    index = shard_prepared_cache(cache, root / "shards", max_samples=3)
    assert len(index.shards) == 3 and index.n_samples == 8
    return cache, root / "shards"


def cfg(source: Path, *overrides: str):
    return load_config(overrides=[f"data.source={source}", *TINY_LOOP, *STREAM, *overrides])


def losses(run: Path) -> list[float]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]


def test_pretrain_from_shards_runs_and_resumes_exactly(caches, tmp_path):
    _, shards = caches
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    record = train(cfg(shards, "optim.max_steps=5"), straight, show_progress=False)
    assert record["step"] == 5 and np.isfinite(record["loss"])
    assert record["epoch"] == 5 * 3 // 8  # 15 samples of 8 streamed so far
    train(cfg(shards, "optim.max_steps=2"), resumed, show_progress=False)
    stream = load_checkpoint(resumed / "checkpoints")["data"]["stream"]
    assert stream["n_workers"] == 1 and stream["positions"]["0"]["samples_consumed"] > 0
    train(cfg(shards, "optim.max_steps=5"), resumed, resume=True, show_progress=False)
    a, b = (load_checkpoint(run / "checkpoints") for run in (straight, resumed))
    assert a["data"] == b["data"] and a["data"]["position"] == 15
    for part in ("student", "teacher"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    assert losses(straight) == losses(resumed)
