"""Pretraining samples from shards: the architecture's sample dict, seeded per sample not per rank."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from mammodino.config import load_config
from mammodino.data.collate import collate_pretrain
from mammodino.data.shard_pretrain import (
    build_streaming_pretrain_dataset,
    is_shard_source,
    sample_index,
)
from mammodino.data.shard_stream import ResumableLoader
from mammodino.data.shards import ShardWriter

TINY = [
    "crops.global_size=32",
    "crops.local_size=16",
    "crops.n_local=2",
    "model.patch_size=8",
]


def _breast(i: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[:48, :40]
    mask = ((xx / 36.0) ** 2 + ((yy - 24) / 22.0) ** 2 <= 1).astype(np.uint8) * 255
    rng = np.random.default_rng(i)
    image = (mask > 0) * rng.integers(20000, 60000, mask.shape)
    return image.astype(np.uint16), mask


@pytest.fixture
def shard_dir(tmp_path):
    with ShardWriter(tmp_path / "shards", max_samples=3) as writer:
        for i in range(12):
            writer.write(f"img{i:02d}", *_breast(i), {"view": "CC"})
    return tmp_path / "shards"


def test_shard_sources_are_recognised(shard_dir, tmp_path):
    assert is_shard_source(shard_dir) and is_shard_source(shard_dir / "shards.json")
    assert is_shard_source("pipe:curl -s http://x/a.tar") and is_shard_source("s-{0..3}.tar")
    assert not is_shard_source(tmp_path)


def test_samples_follow_the_pretraining_contract_and_collate(shard_dir):
    cfg = load_config(overrides=TINY)
    ds = build_streaming_pretrain_dataset(cfg, shard_dir, epochs=1)
    batches = list(ResumableLoader(ds, batch_size=4, collate_fn=collate_pretrain))
    assert len(batches) == 3
    batch = batches[0]
    assert batch["global_crops"].shape == (2 * 4, 1, 32, 32)
    assert batch["local_crops"].shape == (2 * 4, 1, 16, 16)
    assert batch["masks"].shape == (8, 16) and batch["masks"].dtype == torch.bool
    assert float(batch["global_crops"].min()) >= 0.0 and float(batch["global_crops"].max()) <= 1.0
    indices = torch.cat([b["indices"] for b in batches]).tolist()
    assert sorted(indices) == sorted(sample_index(f"img{i:02d}") for i in range(12))


def test_crops_depend_on_the_sample_and_epoch_not_on_the_rank(shard_dir):
    cfg = load_config(overrides=TINY)
    single = build_streaming_pretrain_dataset(cfg, shard_dir, epochs=2)
    by_index = {}
    for n, sample in enumerate(single):
        by_index[(n >= 12, sample["index"])] = sample["global_crops"]
    for rank in (0, 1):
        ds = build_streaming_pretrain_dataset(cfg, shard_dir, epochs=1)
        ds.rank, ds.world_size = rank, 2
        for sample in itertools.islice(ds, 3):
            assert torch.equal(sample["global_crops"], by_index[(False, sample["index"])])
    epoch0 = by_index[(False, sample_index("img00"))]
    assert not torch.equal(epoch0, by_index[(True, sample_index("img00"))])
