"""Continued pretraining from a public backbone (issue 8, acceptance 3): `model.init` loads a
DINOv2-named RGB ViT at another resolution into student and teacher; for `model.init_warmup_steps`
steps the backbone stays exactly as loaded while the heads train, then it trains too."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from helpers import TINY_LOOP, write_cache
from mammodino.config import load_config
from mammodino.errors import CheckpointError
from mammodino.models.export import export_safetensors
from mammodino.models.vit import build_vit
from mammodino.train.loop import Trainer

WARMUP = 2


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return write_cache(tmp_path_factory.mktemp("init") / "cache")


@pytest.fixture(scope="module")
def hub_weights(tmp_path_factory) -> Path:
    """A DINOv2 hub-layout state dict of an RGB ViT-Tiny/8 at 64 px (the run trains 1 ch, 32 px)."""
    torch.manual_seed(123)
    source = build_vit(
        "vit_tiny",
        img_size=64,
        patch_size=8,
        in_chans=3,
        num_register_tokens=1,
        layerscale_init=1.0,
    )
    path = tmp_path_factory.mktemp("hub") / "dinov2_vitt8_reg.pth"
    torch.save(source.state_dict(), path)
    return path


def cfg(cache: Path, init: Path, *overrides: str):
    return load_config(
        overrides=[
            f"data.source={cache}",
            *TINY_LOOP,
            "model.layerscale_init=1.0",
            f"model.init={init}",
            f"model.init_warmup_steps={WARMUP}",
            *overrides,
        ]
    )


def backbone(trainer: Trainer, part: str = "student") -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in getattr(trainer.model, part)["backbone"].state_dict().items()}


def changed(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    return [k for k in a if not torch.equal(a[k], b[k])]


def test_backbone_is_frozen_for_the_warmup_then_trains(cache, hub_weights, tmp_path):
    run = tmp_path / "run"
    trainer = Trainer(
        cfg(cache, hub_weights, f"optim.max_steps={WARMUP}"), run, show_progress=False
    )
    hub = torch.load(hub_weights, weights_only=True)
    loaded = backbone(trainer)
    # loaded into both: same blocks as the file, RGB patch embedding summed to one channel
    assert torch.equal(loaded["blocks.0.attn.qkv.weight"], hub["blocks.0.attn.qkv.weight"])
    assert torch.allclose(
        loaded["patch_embed.proj.weight"], hub["patch_embed.proj.weight"].sum(1, keepdim=True)
    )
    assert loaded["pos_embed"].shape[1] == 1 + (32 // 8) ** 2
    assert not changed(loaded, backbone(trainer, "teacher"))
    head = {k: v.clone() for k, v in trainer.model.student["dino_head"].state_dict().items()}
    trainer.run()
    assert trainer.step == WARMUP
    assert not changed(loaded, backbone(trainer)), "student backbone moved during the warm-up"
    assert not changed(loaded, backbone(trainer, "teacher")), "teacher backbone moved"
    assert changed(head, trainer.model.student["dino_head"].state_dict()), "heads did not train"
    names = [n for g in trainer.optimizer.param_groups for n in g["names"]]
    params = [p for g in trainer.optimizer.param_groups for p in g["params"]]
    state = trainer.optimizer.state
    assert not any(
        n.startswith("backbone.") and p in state for n, p in zip(names, params, strict=True)
    )

    # resume past the warm-up: the whole model trains (the file is not read again on resume)
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    after = Trainer(
        cfg(cache, hub_weights, f"optim.max_steps={WARMUP + 2}"),
        resumed,
        resume=True,
        show_progress=False,
    )
    assert not changed(loaded, backbone(after))
    after.run()
    moved = changed(loaded, backbone(after))
    assert "blocks.0.attn.qkv.weight" in moved and "patch_embed.proj.weight" in moved
    assert changed(loaded, backbone(after, "teacher"))


def test_init_from_our_export_and_a_clear_error_for_a_misfit(cache, tmp_path):
    donor = Trainer(load_config(overrides=[f"data.source={cache}", *TINY_LOOP]), tmp_path / "donor",
                    show_progress=False)  # fmt: skip
    export = export_safetensors(donor.model.teacher["backbone"], {}, tmp_path / "export")
    trainer = Trainer(cfg(cache, export, "model.init_warmup_steps=0"), tmp_path / "run",
                      show_progress=False)  # fmt: skip
    assert not changed(backbone(donor, "teacher"), backbone(trainer))
    with pytest.raises(CheckpointError, match="do not fit"):
        Trainer(cfg(cache, export, "model.arch=vit_small"), tmp_path / "bad", show_progress=False)
