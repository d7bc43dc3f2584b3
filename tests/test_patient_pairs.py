"""Patient pairs (`dbt.patient_pairs`): partner crops, their batch keys, the loss, the wiring."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import (
    TINY_SLICE_MODEL,
    disc_breast,
    prepared_columns,
    write_cache,
    write_mixed_cache,
)
from mammodino.config import load_config
from mammodino.data.collate import collate_pretrain
from mammodino.data.dataset import build_pretrain_dataset
from mammodino.data.patient_pairs import patient_groups
from mammodino.data.shard_pretrain import build_streaming_pretrain_dataset
from mammodino.errors import ConfigError
from mammodino.losses.slice_contrast import SliceContrastLoss
from mammodino.settings import Settings
from mammodino.train.meta_arch import MammoDINO

# Intensity augmentations off: a crop's brightness then names the image it was cut from.
PLAIN = [
    "augment.brightness_p=0",
    "augment.contrast_p=0",
    "augment.gamma_p=0",
    "augment.window_p=0",
    "augment.noise_p=0",
    "augment.solarize_p=0",
]
TINY = [
    *TINY_SLICE_MODEL,
    "crops.global_size=32",
    "crops.local_size=16",
    "crops.n_local=2",
    "dbt.pair_size=16",
]
PAIRS = ["dbt.patient_pairs=true", "dbt.slice_loss_weight=1.0"]


def level(i: int) -> int:
    """Image i's breast intensity: each image of the cache has its own."""
    return 8000 * (i + 1)


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    """Six images, two a patient (p0: 0 and 1, p1: 2 and 3, p2: 4 and 5), image 6 alone."""

    def columns(i: int, image: np.ndarray) -> dict[str, object]:
        row = prepared_columns(i, image)
        row["patient_id"] = "" if i == 6 else row["patient_id"]
        return row

    return write_cache(
        tmp_path / "cache",
        7,
        breast=lambda i: disc_breast(48, level=level(i), noise=1, seed=i),
        columns=columns,
        labels=None,
    )


def config(cache: Path, *overrides: str):
    return load_config(overrides=[f"data.source={cache}", *TINY, *PLAIN, *overrides])


def test_patient_groups_pair_the_rows_of_one_patient():
    rows = [{"patient_id": "a"}, {"patient_id": "b"}, {"patient_id": "a"}, {"patient_id": ""}, {}]
    groups, partners = patient_groups(rows)
    assert groups[0] == groups[2] != groups[1]
    assert len(set(groups)) == 4  # rows without a patient id are groups of their own
    assert partners == [(2,), (), (0,), (), ()]


def test_partner_crop_is_another_image_of_the_same_patient(cache):
    dataset = build_pretrain_dataset(config(cache, *PAIRS))
    for index in range(6):
        sample = dataset[index]
        partner = index ^ 1  # the other image of its patient
        assert sample["partner_crop"].shape == (1, 16, 16)
        assert sample["partner_group"] == index // 2
        brightest = float(sample["partner_crop"].max()) * 65535
        assert brightest == pytest.approx(level(partner), abs=2)
        assert float(sample["global_crops"].max()) * 65535 == pytest.approx(level(index), abs=2)
    assert "partner_crop" not in dataset[6]  # no patient id: no partner


def test_own_crops_and_masks_are_the_same_draws_with_pairs_on_or_off(cache):
    on = build_pretrain_dataset(config(cache, *PAIRS))
    off = build_pretrain_dataset(config(cache))
    for key in (0, 3, 7 + 2, 3 * 7 + 5):  # sample keys of epochs 0, 1 and 3
        a, b = on[key], off[key]
        assert "partner_crop" not in b
        for name in ("global_crops", "local_crops", "masks", "global_patch_tissue"):
            assert torch.equal(a[name], b[name]), name


def test_partner_draws_are_deterministic_and_vary_with_the_epoch(cache):
    first = build_pretrain_dataset(config(cache, *PAIRS))
    again = build_pretrain_dataset(config(cache, *PAIRS))
    assert torch.equal(first[2]["partner_crop"], again[2]["partner_crop"])
    assert not torch.equal(first[2]["partner_crop"], first[7 + 2]["partner_crop"])


def test_no_partner_crops_without_the_slice_loss(cache):
    dataset = build_pretrain_dataset(config(cache, *PAIRS, "dbt.slice_loss_weight=0"))
    assert "partner_crop" not in dataset[0]
    model = MammoDINO(Settings.from_config(config(cache, *PAIRS, "dbt.slice_loss_weight=0")))
    assert model.slice_objective is None


def test_pairs_are_refused_where_they_cannot_be_drawn(cache, tmp_path):
    lonely = write_cache(tmp_path / "lonely", 3, columns=None, labels=None)
    with pytest.raises(ConfigError, match="share a patient id"):
        build_pretrain_dataset(config(lonely, *PAIRS))
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.png").write_bytes((cache / "images" / "im0.png").read_bytes())
    with pytest.raises(ConfigError, match="needs a prepared cache"):
        build_pretrain_dataset(config(folder, *PAIRS))
    mixed = write_mixed_cache(tmp_path / "mixed")
    with pytest.raises(ConfigError, match="FFDM-only"):
        build_pretrain_dataset(config(mixed, *PAIRS, "data.dbt_fraction=0.5"))
    with pytest.raises(ConfigError, match="not shards"):
        build_streaming_pretrain_dataset(config(cache, *PAIRS), tmp_path / "shards")
    with pytest.raises(ConfigError, match="patch_level"):
        MammoDINO(Settings.from_config(config(cache, *PAIRS, "dbt.patch_level=true")))


def test_collate_lists_the_partner_crops_with_their_rows_and_groups(cache):
    dataset = build_pretrain_dataset(config(cache, *PAIRS))
    batch = collate_pretrain([dataset[i] for i in (6, 1, 4)])
    assert batch["partner_crops"].shape == (2, 1, 16, 16)
    assert batch["partner_rows"].tolist() == [1, 2]
    assert batch["partner_groups"].tolist() == [0, 2]
    assert torch.equal(batch["partner_crops"][0], dataset[1]["partner_crop"])
    plain = collate_pretrain([dataset[6]])
    assert plain["partner_crops"].shape == (0, 1, 32, 32)
    assert plain["partner_rows"].numel() == 0 and plain["partner_groups"].numel() == 0


def test_partner_loss_by_hand():
    # Two views of three samples (view-major anchors) against three targets; samples 1 and 2 are
    # of one patient, so neither is the other's negative.
    generator = torch.Generator().manual_seed(3)
    anchors = torch.randn(6, 4, generator=generator)
    targets = torch.randn(3, 4, generator=generator)
    groups = torch.tensor([7, 9, 9])
    tau = 0.2
    loss = SliceContrastLoss(tau).forward_partners(anchors, targets, groups)
    u, w = F.normalize(anchors, dim=-1), F.normalize(targets, dim=-1)
    expected = 0.0
    for k in range(6):
        positive = k % 3
        allowed = [j for j in range(3) if j == positive or groups[j] != groups[positive]]
        scores = [float(u[k] @ w[j]) / tau for j in allowed]
        expected -= float(u[k] @ w[positive]) / tau - math.log(sum(math.exp(s) for s in scores))
    assert loss.item() == pytest.approx(expected / 6, rel=1e-5)


def test_partner_loss_on_orthogonal_matches_and_on_identical_features():
    # Unit anchors equal to their targets, orthogonal to the others: ln(1 + 3 exp(-1 / tau)).
    eye = torch.eye(4) * 100.0
    loss = SliceContrastLoss(0.1).forward_partners(torch.cat([eye, eye]), eye, torch.arange(4))
    assert loss.item() == pytest.approx(math.log1p(3 * math.exp(-10.0)), abs=1e-6)
    same = torch.ones(8, 4)
    flat = SliceContrastLoss(0.1).forward_partners(same, torch.ones(4, 4), torch.arange(4))
    assert flat.item() == pytest.approx(math.log(4), rel=1e-6)
    with pytest.raises(ConfigError):
        SliceContrastLoss(0.1).forward_partners(torch.ones(5, 4), torch.ones(4, 4), torch.arange(4))


def test_training_step_logs_the_pair_loss_and_trains_the_slice_head(cache):
    settings = Settings.from_config(config(cache, *PAIRS))
    torch.manual_seed(0)
    model = MammoDINO(settings)
    assert model.weights["pair"] == 1.0 and "slice" not in model.weights
    dataset = build_pretrain_dataset(settings)
    batch = collate_pretrain([dataset[i] for i in range(7)])
    out = model(batch, teacher_temp=0.04)
    assert "loss/slice" not in out
    # Six partner crops of three patients: each anchor has one positive and four negatives, so a
    # fresh init sits near ln 5.
    assert 0.5 * math.log(2) < out["loss/pair"].item() < 2 * math.log(6)
    out["loss"].backward()
    head = model.student["slice_head"]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    assert all(p.grad is None for p in model.teacher.parameters())
    one = collate_pretrain([dataset[0], dataset[6]])  # a single pair has no negative: 0
    assert model(one, teacher_temp=0.04)["loss/pair"].item() == 0.0
