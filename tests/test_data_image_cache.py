"""The pretraining data set's per-worker LRU cache of decoded images (`data.cache_mb`)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from helpers import disc_breast, write_cache
from mammodino.config import load_config
from mammodino.data import image_dataset
from mammodino.data.dataset import build_pretrain_dataset
from mammodino.data.tissue_crops import TissueMap
from mammodino.settings import Settings

TINY = [
    "model.arch=vit_tiny",
    "model.patch_size=8",
    "crops.global_size=32",
    "crops.local_size=16",
    "crops.n_local=2",
]


def write_images(folder, size: tuple[int, int]):
    """Four uint16 images of one size with their masks, as prepare writes them."""
    return write_cache(
        folder,
        4,
        breast=lambda i: disc_breast(*size, level=20000, noise=30000, seed=i),
        columns=None,
        labels=None,
    )


@pytest.fixture
def cache(tmp_path):
    return write_images(tmp_path / "cache", (48, 40))


def dataset(cache, cache_mb: int):
    cfg = load_config(overrides=[f"data.source={cache}", f"data.cache_mb={cache_mb}", *TINY])
    return build_pretrain_dataset(cfg)


@pytest.fixture
def reads(monkeypatch):
    """Image indices decoded from disk, in order."""
    seen: list[str] = []
    original = image_dataset.read_cached_pixels

    def counting(path):
        seen.append(path.stem)
        return original(path)

    monkeypatch.setattr(image_dataset, "read_cached_pixels", counting)
    return seen


def entry_bytes(ds, index: int) -> int:
    pixels, _, tissue = ds.load(index)
    return image_dataset.entry_nbytes(pixels, tissue)


def test_an_image_seen_again_is_not_decoded_again(cache, reads):
    ds = dataset(cache, cache_mb=64)
    first = ds.load(2)
    again = ds.load(2)
    assert reads == ["im2"]
    assert again[0] is first[0]


def test_least_recently_used_image_is_evicted_within_the_budget(tmp_path, reads):
    cache = write_images(tmp_path / "cache", (256, 256))
    one = entry_bytes(dataset(cache, cache_mb=64), 0)  # every image here has the same size
    assert 2**20 / 3 < one <= 2**20 / 2  # 1 MiB holds two entries, not three
    reads.clear()
    ds = dataset(cache, cache_mb=1)
    for index in (0, 1, 0, 2):  # 2 evicts 1, the least recently used
        ds.load(index)
    assert list(ds._cache) == [0, 2]
    assert ds._cached_bytes == 2 * one <= ds.cache_bytes
    ds.load(0)
    ds.load(1)
    assert reads == ["im0", "im1", "im2", "im1"]


def test_zero_budget_caches_nothing(cache, reads):
    ds = dataset(cache, cache_mb=0)
    ds.load(1)
    ds.load(1)
    assert reads == ["im1", "im1"] and not ds._cache and ds._cached_bytes == 0


def test_the_cache_does_not_change_samples(cache):
    cached, uncached = dataset(cache, cache_mb=64), dataset(cache, cache_mb=0)
    for key in (0, 3, 5, 2, 0):  # keys >= 4 are the next epoch's
        a, b = cached[key], uncached[key]
        assert a.keys() == b.keys()
        for name in ("global_crops", "local_crops", "global_patch_tissue", "masks"):
            assert torch.equal(a[name], b[name]), name


def test_loader_workers_start_with_an_empty_cache(cache):
    ds = dataset(cache, cache_mb=64)
    ds.load(0)
    copy = pickle.loads(pickle.dumps(ds))
    assert ds._cache and not copy._cache and copy._cached_bytes == 0


def test_tiny_cpu_holds_mini_mias_whole_images():
    """tiny-cpu's cache holds all 322 mini-MIAS images prepared whole (1024 x 1024, uint16):
    each step then decodes nothing after the first pass (13% of the step time on one AVX2 core)."""
    pixels = np.zeros((1024, 1024), np.uint16)
    tissue = TissueMap.from_mask(np.ones((1024, 1024), np.uint8), pixels, 65535.0)
    per_image = image_dataset.entry_nbytes(pixels, tissue)
    budget = Settings.from_config(load_config(preset="tiny-cpu")).data.cache_mb * 2**20
    assert 322 * per_image <= budget
