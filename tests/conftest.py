"""Shared fixtures: where the real data lives, and deterministic torch settings."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

# The smallest MammoDINO that trains (ViT-Tiny/8 on 32/16 px crops, 64 prototypes, in-process
# data loading); each training test adds its schedule and the settings it is about.
TINY_TRAIN = [
    "model.arch=vit_tiny",
    "model.patch_size=8",
    "model.num_register_tokens=1",
    "crops.global_size=32",
    "crops.local_size=16",
    "crops.n_local=2",
    "masking.min_tissue_patches=2",
    "heads.dino_out_dim=64",
    "heads.ibot_out_dim=64",
    "heads.dino_hidden_dim=32",
    "heads.dino_bottleneck_dim=16",
    "data.num_workers=0",
    "train.log_every=1",
    "train.precision=fp32",  # the same numbers on every CPU (auto is bf16 where it is native)
]


def shared_data_dir(*parts: str) -> Path:
    """A folder under ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available at {path} (see ../shared/data/README.md)")
    return path


@pytest.fixture
def mini_mias_dir() -> Path:
    return shared_data_dir("mini-mias")


@pytest.fixture
def dicom_samples_dir() -> Path:
    return shared_data_dir("dicom-samples")


@pytest.fixture(autouse=True)
def _torch_single_thread():
    """Tests run with one intra-op thread: deterministic and fair on a 2-core machine."""
    try:
        import torch
    except ImportError:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
