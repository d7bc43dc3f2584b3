"""Pretraining data set and collate on tiny synthetic caches and folders made in tmp_path."""

from __future__ import annotations

import subprocess
import sys
from itertools import islice
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from helpers import disc_breast, write_cache
from mammodino.config import load_config
from mammodino.data.collate import collate_pretrain
from mammodino.data.dataset import build_pretrain_dataset
from mammodino.data.image_dataset import compute_breast_mask
from mammodino.data.resumable_sampler import ResumableSampler
from mammodino.errors import CacheError, ConfigError
from mammodino.settings import Settings
from mammodino.train.batches import sampled_batches

TINY = [
    "crops.global_size=32",
    "crops.local_size=16",
    "crops.n_local=3",
    "model.patch_size=8",
    "masking.probability=1.0",
    "masking.min_tissue_patches=2",
]


def synthetic_breast(height: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A uint16 image with a half-disc breast against the left edge, and its 0/255 mask."""
    return disc_breast(height, width, level=20000, noise=30000, seed=seed)


def tiny_config(source: Path, *overrides: str):
    return load_config(overrides=[f"data.source={source}", *TINY, *overrides])


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    """4 images of growing height; the manifest has id, image and mask only."""
    return write_cache(
        tmp_path / "cache",
        4,
        breast=lambda i: synthetic_breast(48 + 4 * i, 40, seed=i),
        columns=None,
        labels=None,
    )


def test_sample_matches_the_architecture_contract(cache):
    dataset = build_pretrain_dataset(tiny_config(cache))
    assert len(dataset) == 4
    sample = dataset[2]
    assert sample["global_crops"].shape == (2, 1, 32, 32)
    assert sample["local_crops"].shape == (3, 1, 16, 16)
    assert sample["global_patch_tissue"].shape == (2, 4, 4)
    assert sample["masks"].shape == (2, 16) and sample["masks"].dtype == torch.bool
    assert sample["index"] == 2
    for key in ("global_crops", "local_crops", "global_patch_tissue"):
        assert sample[key].dtype == torch.float32
        assert float(sample[key].min()) >= 0.0 and float(sample[key].max()) <= 1.0


def test_masks_only_on_tissue_patches(cache):
    dataset = build_pretrain_dataset(tiny_config(cache, "crops.sampler=random"))
    masked = masked_background = 0
    for key in range(40):
        sample = dataset[key]
        background = sample["global_patch_tissue"].flatten(1) < 0.5
        masked += int(sample["masks"].sum())
        masked_background += int((sample["masks"] & background).sum())
    assert masked > 0 and masked_background == 0


def test_samples_are_deterministic_per_key_and_differ_across_epochs(cache):
    a = build_pretrain_dataset(tiny_config(cache))
    b = build_pretrain_dataset(tiny_config(cache))
    for key in (1, 5, 13):
        first, again = a[key], b[key]
        assert torch.equal(first["global_crops"], again["global_crops"])
        assert torch.equal(first["masks"], again["masks"])
    assert a[1]["index"] == a[5]["index"] == 1
    assert not torch.equal(a[1]["global_crops"], a[5]["global_crops"])
    a.set_epoch(1)
    assert torch.equal(a[1]["global_crops"], b[5]["global_crops"])


def test_masking_mode_does_not_change_crops(cache):
    tissue = build_pretrain_dataset(tiny_config(cache))[3]
    plain = build_pretrain_dataset(tiny_config(cache, "masking.mode=random"))[3]
    assert torch.equal(tissue["global_crops"], plain["global_crops"])
    assert torch.equal(tissue["global_patch_tissue"], plain["global_patch_tissue"])


def test_collate_is_crop_major(cache):
    dataset = build_pretrain_dataset(tiny_config(cache))
    samples = [dataset[k] for k in (0, 1, 2)]
    batch = collate_pretrain(samples)
    assert batch["global_crops"].shape == (6, 1, 32, 32)
    assert batch["local_crops"].shape == (9, 1, 16, 16)
    assert batch["masks"].shape == (6, 16) and batch["global_patch_tissue"].shape == (6, 16)
    assert (batch["n_global"], batch["n_local"], batch["batch_size"]) == (2, 3, 3)
    for b, sample in enumerate(samples):
        for crop in range(2):
            assert torch.equal(batch["global_crops"][crop * 3 + b], sample["global_crops"][crop])
            assert torch.equal(batch["masks"][crop * 3 + b], sample["masks"][crop])
        for crop in range(3):
            assert torch.equal(batch["local_crops"][crop * 3 + b], sample["local_crops"][crop])
    assert batch["indices"].tolist() == [0, 1, 2]
    masks = batch["masks"]
    assert torch.equal(batch["mask_indices_list"], masks.flatten().nonzero().flatten())
    assert int(batch["n_masked_patches"]) == int(masks.sum())
    # each masked crop's weights sum to 1: the iBOT loss averages over its masked tokens
    per_crop = torch.zeros(6).index_add_(0, batch["mask_indices_list"] // 16, batch["masks_weight"])
    assert torch.allclose(per_crop[masks.any(1)], torch.ones(int(masks.any(1).sum())))


def test_loader_resume_reproduces_batches(cache):
    config = tiny_config(cache)

    def batches(start: int, count: int) -> list[dict]:
        dataset = build_pretrain_dataset(config)
        sampler = ResumableSampler(len(dataset), seed=0, start_index=start)
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=3, sampler=sampler, collate_fn=collate_pretrain
        )
        return list(islice(loader, count))

    straight = batches(0, 4)
    resumed = batches(2 * 3, 2)
    for a, b in zip(straight[2:], resumed, strict=True):
        assert torch.equal(a["global_crops"], b["global_crops"])
        assert torch.equal(a["masks"], b["masks"])
        assert torch.equal(a["indices"], b["indices"])


@pytest.mark.multiproc
def test_workers_give_the_same_batches_as_the_main_process(cache):
    result = []
    for workers in (0, 2):
        config = tiny_config(cache, "data.batch_size=2", f"data.num_workers={workers}")
        data = Settings.from_config(config).data
        batches = sampled_batches(build_pretrain_dataset(config), data, seed=0, position=0)
        result.append([b["global_crops"] for b in islice(batches, 4)])
    assert all(torch.equal(a, b) for a, b in zip(*result, strict=True))


# A process that has run multi-threaded OpenCV (as `prepare` or the kNN monitor do), then starts
# loader workers: they used to hang forever in their cv2.setNumThreads(1) (data/fork_safety.py).
AFTER_OPENCV_THREADS = """
import sys
from itertools import islice

import cv2
import numpy as np

from mammodino.config import load_config
from mammodino.data.dataset import build_pretrain_dataset
from mammodino.settings import Settings
from mammodino.train.batches import sampled_batches

cv2.setNumThreads(2)  # threads in OpenCV's pool even on a one-core machine
cv2.resize(np.ones((2000, 2000), np.float32), (500, 500), interpolation=cv2.INTER_AREA)
config = load_config(overrides=sys.argv[1:])
data = Settings.from_config(config).data
batches = sampled_batches(build_pretrain_dataset(config), data, seed=0, position=0)
print(len(list(islice(batches, 3))), cv2.getNumThreads())
"""


@pytest.mark.multiproc
def test_loader_workers_start_after_multithreaded_opencv(cache):
    overrides = [f"data.source={cache}", *TINY, "data.batch_size=2", "data.num_workers=2"]
    argv = [sys.executable, "-c", AFTER_OPENCV_THREADS, *overrides]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("loader workers hung after a multi-threaded OpenCV call in the parent")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["3", "2"]  # three batches; the parent's OpenCV threads restored


def test_folder_of_images_computes_masks(tmp_path):
    folder = tmp_path / "plain"
    folder.mkdir()
    for i in range(3):
        image, _ = synthetic_breast(64, 48, seed=i)
        cv2.imwrite(str(folder / f"case{i}.png"), image)
    dataset = build_pretrain_dataset(tiny_config(folder))
    assert len(dataset) == 3
    sample = dataset[1]
    assert sample["global_crops"].shape == (2, 1, 32, 32)
    assert float(sample["global_patch_tissue"].mean()) > 0.3


def test_computed_mask_finds_the_breast():
    image, mask = synthetic_breast(96, 80, seed=0)
    found = compute_breast_mask(image, 65535.0) > 0
    assert found.shape == mask.shape
    assert np.mean(found == (mask > 0)) > 0.97


def test_bad_sources_raise_typed_errors(tmp_path, cache):
    with pytest.raises(ConfigError, match="data.source"):
        build_pretrain_dataset(load_config())
    with pytest.raises(ConfigError, match="neither"):
        build_pretrain_dataset(tiny_config(tmp_path / "missing"))
    (cache / "images" / "im0.png").write_bytes(b"not a png")
    with pytest.raises(CacheError, match="im0.png"):
        build_pretrain_dataset(tiny_config(cache))[0]


@pytest.mark.realdata
def test_mini_mias_folder_samples(mini_mias_dir):
    config = load_config(
        overrides=[f"data.source={mini_mias_dir}", "masking.probability=1.0", "crops.n_local=2"]
    )
    dataset = build_pretrain_dataset(config)
    assert len(dataset) == 322
    reached = masked_background = 0
    for key in range(0, 322, 40):
        sample = dataset[key]
        tissue = sample["global_patch_tissue"].flatten(1)
        reached += int((tissue.mean(1) >= 0.45).sum())
        masked_background += int((sample["masks"] & (tissue < 0.5)).sum())
    assert masked_background == 0
    assert reached >= 15  # of 18 global crops; patch means approximate the box fraction


def test_one_crop_plan_cuts_aligned_crops_from_two_slices(cache):
    dataset = build_pretrain_dataset(tiny_config(cache, "augment.brightness_p=0"))
    transform = dataset.transform
    pixels, intensity_max, tissue = dataset.load(0)
    plan = transform.plan(np.random.default_rng(0), tissue)
    assert len(plan.global_boxes) == 2 and len(plan.local_boxes) == 3
    brighter = (pixels // 2).astype(np.uint16)  # another slice of the same volume
    rngs = [np.random.default_rng(s) for s in (1, 2, 1, 2)]
    a = transform.render(pixels, tissue, plan, rngs[0], rngs[1], intensity_max)
    b = transform.render(brighter, tissue, plan, rngs[2], rngs[3], intensity_max)
    assert torch.equal(a["global_patch_tissue"], b["global_patch_tissue"])
    assert torch.equal(a["masks"], b["masks"])
    # same boxes and flips: the darker slice's crop is the same picture at lower intensity
    correlation = np.corrcoef(a["global_crops"][0].flatten(), b["global_crops"][0].flatten())[0, 1]
    assert correlation > 0.8


def test_workers_get_an_empty_cache_and_bad_crop_counts_fail(cache):
    import pickle

    dataset = build_pretrain_dataset(tiny_config(cache))
    dataset[0]
    assert len(dataset._cache) == 1
    assert len(pickle.loads(pickle.dumps(dataset))._cache) == 0
    with pytest.raises(ConfigError, match="n_global"):
        build_pretrain_dataset(tiny_config(cache, "crops.n_global=0"))
    with pytest.raises(ConfigError, match="crops.sampler"):
        build_pretrain_dataset(tiny_config(cache, "crops.sampler=everywhere"))


def masked_brightness_excess(dataset, n: int = 40) -> float:
    """Mean crop brightness of masked tissue patches minus that of all tissue patches."""
    masked, tissue = [], []
    for key in range(n):
        sample = dataset[key]
        crops = sample["global_crops"][:, 0]  # [2, 32, 32] -> 4 x 4 patches of 8 px
        brightness = crops.unfold(1, 8, 8).unfold(2, 8, 8).mean((-1, -2)).flatten(1)
        is_tissue = sample["global_patch_tissue"].flatten(1) >= 0.5
        masked.append(brightness[sample["masks"]])
        tissue.append(brightness[is_tissue])
    return float(torch.cat(masked).mean() - torch.cat(tissue).mean())


def test_masking_dense_weight_reaches_the_masks_through_the_transform(cache):
    plain = build_pretrain_dataset(tiny_config(cache, "masking.ratio=[0.2, 0.2]"))
    dense = build_pretrain_dataset(
        tiny_config(cache, "masking.ratio=[0.2, 0.2]", "masking.dense_weight=9")
    )
    # Measured: -0.009 plain, +0.010 dense (noisy synthetic tissue, 8 px patches); unwired: equal.
    assert masked_brightness_excess(dense) > masked_brightness_excess(plain) + 0.01


def test_random_masking_ignores_dense_weight_and_skips_patch_brightness(cache, monkeypatch):
    from mammodino.data import transform

    random_mode = ("masking.mode=random", "masking.ratio=[0.2, 0.2]")
    plain = build_pretrain_dataset(tiny_config(cache, *random_mode))
    plain_masks = [plain[i]["masks"] for i in range(4)]

    def no_brightness(*args, **kwargs):
        raise AssertionError("patch brightness computed for random masks")

    monkeypatch.setattr(transform, "patch_means", no_brightness)
    dense = build_pretrain_dataset(tiny_config(cache, *random_mode, "masking.dense_weight=9"))
    for i, masks in enumerate(plain_masks):
        assert torch.equal(dense[i]["masks"], masks)
