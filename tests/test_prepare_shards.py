"""`mammodino prepare SRC OUT --shards [DIR]`: the cache plus WebDataset tar shards of it, which the
streaming data set reads back pixel for pixel (issue 7)."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np

from helpers import synthetic_breast
from mammodino.cli import main
from mammodino.data.shard_pretrain import is_shard_source
from mammodino.data.shard_stream import StreamingShardDataset
from mammodino.data.shards import ShardIndex


def _sources(src: Path, count: int = 3) -> Path:
    src.mkdir(parents=True)
    for i in range(count):
        cv2.imwrite(str(src / f"b{i}.png"), synthetic_breast(chest_wall_left=i % 2 == 0, seed=i))
    return src


def test_prepare_writes_shards_that_stream_back_the_cache(tmp_path, capsys):
    src, out = _sources(tmp_path / "src"), tmp_path / "cache"
    argv = ["prepare", str(src), str(out), "--workers", "1", "--no-progress"]
    assert main([*argv, "--shards", "--shard-samples", "2"]) == 0
    assert "2 shards of 3 samples" in capsys.readouterr().out
    shards = out / "shards"
    assert is_shard_source(shards)
    index = ShardIndex.load(shards / "shards.json")
    assert [s.n_samples for s in index.shards] == [2, 1]
    with (out / "manifest.csv").open(newline="") as handle:
        rows = {row["id"]: row for row in csv.DictReader(handle)}
    samples = list(StreamingShardDataset(shards, epochs=1, shuffle_buffer=1))
    assert sorted(s["key"] for s in samples) == sorted(rows)
    for sample in samples:
        row = rows[sample["key"]]
        cached = cv2.imread(str(out / row["image"]), cv2.IMREAD_UNCHANGED)
        assert sample["image"].dtype == np.uint16 and np.array_equal(sample["image"], cached)
        mask = cv2.imread(str(out / row["mask"]), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(sample["mask"], mask)


def test_prepare_shards_into_a_given_folder(tmp_path):
    src, out, target = _sources(tmp_path / "src", 2), tmp_path / "cache", tmp_path / "elsewhere"
    argv = ["prepare", str(src), str(out), "--workers", "1", "--no-progress"]
    assert main([*argv, "--shards", str(target)]) == 0
    assert ShardIndex.load(target / "shards.json").n_samples == 2
    assert not (out / "shards").exists()
