"""Shard writer: WebDataset layout, exact 16-bit round trip, size limits, atomic writes, index."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import numpy as np
import pytest

from helpers import write_csv
from mammodino.data.shards import (
    INDEX_NAME,
    ShardError,
    ShardIndex,
    ShardWriter,
    decode_png,
    decode_sample,
    encode_png,
    iter_tar_samples,
    shard_prepared_cache,
)
from mammodino.errors import CacheError


def _sample(i: int, size: int = 12) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(i)
    image = rng.integers(0, 65536, (size, size + 3), dtype=np.uint16)
    mask = np.where(rng.random((size, size + 3)) > 0.5, 255, 0).astype(np.uint8)
    return image, mask


def test_round_trip_keeps_16_bits_and_webdataset_member_names(tmp_path):
    with ShardWriter(tmp_path, max_samples=10) as writer:
        for i in range(3):
            image, mask = _sample(i)
            writer.write(f"img_{i:03d}", image, mask, {"view": "CC", "index": i})
    with tarfile.open(tmp_path / "shard-000000.tar") as tar:
        names = tar.getnames()
    assert names[:3] == ["img_000.png", "img_000.mask.png", "img_000.json"]
    with open(tmp_path / "shard-000000.tar", "rb") as f:
        samples = [decode_sample(raw) for raw in iter_tar_samples(f)]
    assert [s["key"] for s in samples] == ["img_000", "img_001", "img_002"]
    for i, s in enumerate(samples):
        image, mask = _sample(i)
        assert s["image"].dtype == np.uint16 and np.array_equal(s["image"], image)
        assert s["mask"].dtype == np.uint8 and np.array_equal(s["mask"], mask)
        assert s["meta"] == {"view": "CC", "index": i}


def test_shards_split_by_count_and_index_lists_them(tmp_path):
    with ShardWriter(tmp_path, max_samples=4) as writer:
        for i in range(10):
            writer.write(f"k{i}", *_sample(i), {})
    index = ShardIndex.load(tmp_path)
    assert [s.n_samples for s in index.shards] == [4, 4, 2]
    assert index.n_samples == 10
    for shard in index.shards:
        data = (tmp_path / shard.name).read_bytes()
        assert shard.n_bytes == len(data)
        assert shard.sha256 == hashlib.sha256(data).hexdigest()
    assert not list(tmp_path.glob("*.tmp"))


def test_shards_split_by_bytes(tmp_path):
    image, mask = _sample(0, size=64)
    one = 3 * 512 + len(encode_png(image)) + len(encode_png(mask)) + 1536
    with ShardWriter(tmp_path, max_samples=100, max_bytes=3 * one) as writer:
        for i in range(7):
            writer.write(f"k{i}", image, mask, {"i": i})
    index = ShardIndex.load(tmp_path / INDEX_NAME)
    assert index.n_samples == 7 and len(index.shards) >= 3
    assert all(s.n_samples <= 3 for s in index.shards)


def test_writes_are_reproducible_byte_for_byte(tmp_path):
    for out in ("a", "b"):
        with ShardWriter(tmp_path / out) as writer:
            for i in range(3):
                writer.write(f"k{i}", *_sample(i), {"i": i})
    a, b = ShardIndex.load(tmp_path / "a"), ShardIndex.load(tmp_path / "b")
    assert a.shards[0].sha256 == b.shards[0].sha256


def test_failure_leaves_completed_shards_and_no_partial_file(tmp_path):
    with pytest.raises(RuntimeError), ShardWriter(tmp_path, max_samples=2) as writer:
        for i in range(3):
            writer.write(f"k{i}", *_sample(i), {})
        raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard-000000.tar", INDEX_NAME]
    assert ShardIndex.load(tmp_path).n_samples == 2


@pytest.mark.parametrize("key", ["a.b", "a/b", "", "é"])
def test_keys_webdataset_cannot_group_are_refused(tmp_path, key):
    with pytest.raises(ShardError, match="key"), ShardWriter(tmp_path) as writer:
        writer.write(key, *_sample(0), {})


def test_duplicate_key_and_wrong_dtype_are_refused(tmp_path):
    writer = ShardWriter(tmp_path)
    writer.write("k", *_sample(0), {})
    with pytest.raises(ShardError, match="twice"):
        writer.write("k", *_sample(1), {})
    image, mask = _sample(2)
    with pytest.raises(ShardError, match="uint16"):
        writer.write("k2", image.astype(np.uint8), mask, {})
    writer.close()


def test_truncated_shard_raises_shard_error(tmp_path):
    with ShardWriter(tmp_path) as writer:
        for i in range(3):
            writer.write(f"k{i}", *_sample(i), {})
    data = (tmp_path / "shard-000000.tar").read_bytes()
    for cut in (len(data) // 2 + 100, 3584, 4608 + 100):  # inside a member, at a header, mid-data
        with pytest.raises(ShardError, match="truncated|unreadable"):
            list(iter_tar_samples(io.BytesIO(data[:cut])))
    assert len(list(iter_tar_samples(io.BytesIO(data)))) == 3


def test_bad_index_is_a_shard_error(tmp_path):
    with pytest.raises(ShardError, match="not found"):
        ShardIndex.load(tmp_path)
    (tmp_path / INDEX_NAME).write_text("{}")
    with pytest.raises(ShardError, match="not a shard index"):
        ShardIndex.load(tmp_path)


def test_prepared_cache_becomes_shards_with_png_bytes_unchanged(tmp_path):
    cache = tmp_path / "cache"
    (cache / "images").mkdir(parents=True)
    rows = []
    for i in range(5):
        image, mask = _sample(i)
        (cache / "images" / f"c{i}.png").write_bytes(encode_png(image))
        (cache / "images" / f"c{i}.mask.png").write_bytes(encode_png(mask))
        rows.append(
            {"id": f"c{i}", "image": f"images/c{i}.png", "mask": f"images/c{i}.mask.png"}
            | {"view": "MLO", "height": 12, "scale_x": 0.5}
        )
    write_csv(cache / "manifest.csv", rows)
    index = shard_prepared_cache(cache, tmp_path / "shards", max_samples=2, shuffle_seed=1)
    assert [s.n_samples for s in index.shards] == [2, 2, 1]
    seen = {}
    for shard in index.shards:
        with open(tmp_path / "shards" / shard.name, "rb") as f:
            for raw in iter_tar_samples(f):
                seen[raw["__key__"]] = raw
    assert sorted(seen) == [f"c{i}" for i in range(5)]
    raw = seen["c3"]
    assert raw["png"] == (cache / "images" / "c3.png").read_bytes()
    assert np.array_equal(decode_png(raw["mask.png"]), _sample(3)[1])
    assert json.loads(raw["json"]) == {"id": "c3", "view": "MLO", "height": 12, "scale_x": 0.5}


def test_missing_manifest_is_a_cache_error(tmp_path):
    with pytest.raises(CacheError, match="manifest.csv"):
        shard_prepared_cache(tmp_path, tmp_path / "out")
