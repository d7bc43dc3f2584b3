"""Mixed FFDM + DBT data: volumes from the manifest, tissue range, aligned pairs, batch quota."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import CONTRAST, SPACING_MM, write_mixed_cache
from mammodino.config import load_config
from mammodino.data.collate import collate_pretrain
from mammodino.data.dataset import build_pretrain_dataset, build_sampler
from mammodino.data.dbt_dataset import MixedPretrainDataset, split_manifest
from mammodino.data.dbt_pairs import tissue_slice_range
from mammodino.data.image_dataset import PretrainDataset
from mammodino.data.mixed_sampler import DBT, FFDM, MixedSampler, decode_key
from mammodino.data.resumable_sampler import ResumableSampler
from mammodino.errors import ConfigError

TINY = [
    "crops.global_size=32",
    "crops.local_size=16",
    "crops.n_local=2",
    "model.patch_size=8",
    "masking.min_tissue_patches=2",
]
NO_INTENSITY = [
    f"augment.{key}=0.0"
    for key in ("brightness_p", "contrast_p", "gamma_p", "window_p", "blur_p_local", "noise_p")
] + ["augment.blur_p_global=[0.0]", "augment.solarize_p=0.0"]


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return write_mixed_cache(tmp_path / "cache")


def mixed(cache: Path, *overrides: str) -> MixedPretrainDataset:
    cfg = load_config(
        overrides=[f"data.source={cache}", "data.dbt_fraction=0.5", *TINY, *overrides]
    )
    dataset = build_pretrain_dataset(cfg)
    assert isinstance(dataset, MixedPretrainDataset)
    return dataset


def test_manifest_rows_group_into_ordered_volumes(cache):
    images, volumes = split_manifest(cache)
    assert [r.id for r in images] == ["f0", "f1", "f2"]
    assert [v.id for v in volumes] == ["v0", "v1"]
    assert [p.name for p in volumes[0].slices] == [f"v0-{z:03d}.png" for z in range(11)]
    assert volumes[0].spacing_mm == SPACING_MM


def test_tissue_slice_range():
    assert tissue_slice_range(CONTRAST, 0.5) == (2, 8)
    assert tissue_slice_range(CONTRAST, 0.95) == (4, 5)
    assert tissue_slice_range([0.0, 0.0, 0.0], 0.5) == (0, 2)  # unknown: every slice
    # Only the run around the peak counts, not a second bright island.
    assert tissue_slice_range([1.0, 0.1, 0.9, 0.8], 0.5) == (0, 0)


def test_dataset_finds_the_tissue_bearing_slices(cache):
    dataset = mixed(cache)
    assert dataset.slice_range(0) == (2, 8)
    assert mixed(cache, "dbt.tissue_threshold=0.99").slice_range(1) == (4, 5)


def test_pair_offsets_within_d_max_in_mm_and_inside_the_range(cache):
    dataset = mixed(cache, "dbt.d_max_mm=1.5")  # 3 slices at 0.5 mm
    offsets = set()
    for epoch in range(60):
        sample = dataset.volume_item(epoch % 2, epoch)
        offset, position = sample["slice_offset_mm"], sample["slice_position_mm"]
        assert 1 <= abs(offset) / SPACING_MM <= 3 and abs(offset) <= 1.5 + 1e-9
        for z in (position / SPACING_MM, (position + offset) / SPACING_MM):
            assert 2 <= round(z) <= 8
        offsets.add(round(offset / SPACING_MM))
    assert offsets == {-3, -2, -1, 1, 2, 3}


def test_pair_crops_share_one_box_and_get_their_own_intensities(cache):
    plain = mixed(cache, *NO_INTENSITY).volume_item(0, 0)
    first, second = plain["slice_pair"][0, 0], plain["slice_pair"][1, 0]
    assert plain["slice_pair"].shape == (2, 1, 32, 32)
    k = round(plain["slice_position_mm"] / SPACING_MM)
    other = k + round(plain["slice_offset_mm"] / SPACING_MM)
    # Same texture under the same box: inside the breast the two crops differ by the constant
    # step between the two slices' levels (a different box or flip would add texture).
    expected = 50000 * (CONTRAST[other] - CONTRAST[k]) / 65535
    inside = first >= (2000 + 50000 * CONTRAST[k]) / 65535
    deviation = ((second - first)[inside] - expected).abs()
    assert inside.sum() > 100
    assert torch.quantile(deviation, 0.9).item() < 1e-3
    augmented = mixed(cache).volume_item(0, 0)
    assert augmented["slice_offset_mm"] == plain["slice_offset_mm"]
    assert not torch.allclose(augmented["slice_pair"][0], plain["slice_pair"][0])
    # The multi-crop sample of slice k is the usual one: DBT takes part in DINO, iBOT and KoLeo.
    assert plain["global_crops"].shape == (2, 1, 32, 32)
    assert plain["local_crops"].shape == (2, 1, 16, 16)


def test_pair_size_and_items_are_deterministic(cache):
    dataset = mixed(cache, "dbt.pair_size=16")
    a, b = dataset.volume_item(1, 3), dataset.volume_item(1, 3)
    assert a["slice_pair"].shape == (2, 1, 16, 16)
    assert torch.equal(a["slice_pair"], b["slice_pair"])
    assert torch.equal(a["global_crops"], b["global_crops"])
    assert a["index"] == 3 + 1 and a["slice_volume"] == 1
    with pytest.raises(ConfigError, match="pair_size"):
        mixed(cache, "dbt.pair_size=20")


def test_sampler_gives_every_batch_its_dbt_quota_and_resumes(cache):
    dataset = mixed(cache)
    sampler = dataset.mixed_sampler(batch_size=4, seed=0)
    keys = [sampler.key_at(p) for p in range(40)]
    for batch in range(10):
        kinds = [decode_key(k)[0] for k in keys[4 * batch : 4 * batch + 4]]
        assert kinds == [FFDM, FFDM, DBT, DBT]
    stream = iter(dataset.mixed_sampler(batch_size=4, seed=0, start_index=16))
    assert [next(stream) for _ in range(8)] == keys[16:24]
    # Each kind visits all its items once per epoch of its own.
    ffdm = [decode_key(k)[1] for k in keys if decode_key(k)[0] == FFDM][:6]
    assert sorted(k % 3 for k in ffdm[:3]) == [0, 1, 2] and sorted(ffdm[3:6]) == [3, 4, 5]


def test_sampler_quota_holds_on_every_rank():
    ranks = [MixedSampler(10, 4, 4, 1, seed=2, rank=r, world_size=2) for r in range(2)]
    streams = [iter(s) for s in ranks]
    for _ in range(5):
        batches = [[next(s) for _ in range(4)] for s in streams]
        for batch in batches:
            assert [decode_key(k)[0] for k in batch] == [FFDM, FFDM, FFDM, DBT]
        assert len(set(batches[0]) & set(batches[1])) == 0


def test_collate_adds_slice_pairs_and_handles_none(cache):
    dataset = mixed(cache)
    sampler = dataset.mixed_sampler(batch_size=4, seed=0)
    batch = collate_pretrain([dataset[sampler.key_at(p)] for p in range(4)])
    assert batch["slice_pairs"].shape == (2, 2, 1, 32, 32)
    assert batch["slice_pairs"].dtype == torch.float32
    assert batch["slice_volume"].dtype == torch.int64 and batch["slice_volume"].shape == (2,)
    assert batch["slice_offset_mm"].shape == (2,) and batch["global_crops"].shape == (8, 1, 32, 32)
    ffdm_only = collate_pretrain([dataset[0], dataset[2]])
    assert ffdm_only["slice_pairs"].shape == (2, 0, 1, 32, 32)
    assert ffdm_only["slice_volume"].numel() == 0


def test_fraction_zero_keeps_slices_as_plain_images_and_bad_fractions_fail(cache, tmp_path):
    cfg = load_config(overrides=[f"data.source={cache}", *TINY])
    plain = build_pretrain_dataset(cfg)
    assert isinstance(plain, PretrainDataset) and len(plain) == 3 + 2 * 11
    dbt_only = write_mixed_cache(tmp_path / "dbt_only", n_ffdm=0)
    with pytest.raises(ConfigError, match="dbt_fraction=1"):
        mixed(dbt_only)
    assert len(mixed(dbt_only, "data.dbt_fraction=1.0")) == 2
    with pytest.raises(ConfigError, match="dbt_fraction"):
        mixed(cache, "data.dbt_fraction=1.5")


def test_build_sampler_gives_mixed_sets_their_quota_and_others_resumable(cache):
    dataset = mixed(cache)
    sampler = build_sampler(dataset, seed=0, start_index=8, batch_size=4)
    assert isinstance(sampler, MixedSampler) and sampler.quota == 2 and sampler.start_index == 8
    plain = build_pretrain_dataset(load_config(overrides=[f"data.source={cache}", *TINY]))
    assert isinstance(build_sampler(plain, seed=0, batch_size=4), ResumableSampler)
