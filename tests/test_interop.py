"""Weight loaders (DINOv2 hub, Hugging Face, timm) and exporters (HF, timm, our safetensors)."""

from __future__ import annotations

import re

import pytest
import torch

from helpers import fake_run, tiny_vit
from mammodino.errors import CheckpointError
from mammodino.models.convert import (
    detect_layout,
    load_backbone_weights,
    read_state_dict,
    vit_from_weights,
)
from mammodino.models.export import (
    export_hf,
    export_safetensors,
    export_timm,
    load_exported,
    timm_state_dict,
)
from mammodino.models.heads import DINOHead, ProjectionHead
from mammodino.models.vit import build_vit

HF_SMALL = {
    "hidden_size": 48,
    "num_hidden_layers": 2,
    "num_attention_heads": 3,
    "image_size": 56,
    "patch_size": 14,
    "num_channels": 1,
    "layerscale_value": 0.5,
}


def _hf_model(registers: int, swiglu: bool = False):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(registers)
    config = dict(HF_SMALL, use_swiglu_ffn=swiglu)
    if registers:
        cfg = transformers.Dinov2WithRegistersConfig(num_register_tokens=registers, **config)
        model = transformers.Dinov2WithRegistersModel(cfg)
    else:
        model = transformers.Dinov2Model(transformers.Dinov2Config(**config))
    with torch.no_grad():  # non-trivial tokens (HF initialises some of them to zero)
        for name, param in model.named_parameters():
            if "token" in name or "lambda1" in name:
                param.normal_(0, 0.5)
    return model.eval()


@pytest.mark.parametrize("registers", [0, 4])
def test_hf_dinov2_converts_to_same_tokens(registers):
    hf = _hf_model(registers)
    ours = vit_from_weights(hf.state_dict(), num_heads=3).eval()
    x = torch.rand(2, 1, 56, 56)
    with torch.no_grad():
        ref = hf(pixel_values=x).last_hidden_state
        out = ours.forward_features(x)
    torch.testing.assert_close(out["x_norm_clstoken"], ref[:, 0], atol=1e-5, rtol=0)
    torch.testing.assert_close(
        out["x_norm_patchtokens"], ref[:, 1 + registers :], atol=1e-5, rtol=0
    )
    assert ours.num_register_tokens == registers


@pytest.mark.parametrize("registers", [0, 4])
def test_hf_export_loads_in_automodel_and_matches(tmp_path, registers):
    transformers = pytest.importorskip("transformers")
    ours = tiny_vit(num_register_tokens=registers)
    export_hf(ours, tmp_path)
    hf, info = transformers.AutoModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    expected = "Dinov2WithRegistersModel" if registers else "Dinov2Model"
    assert type(hf).__name__ == expected
    x = torch.rand(2, 1, 56, 56)
    with torch.no_grad():
        ref = hf.eval()(pixel_values=x).last_hidden_state
        out = ours.forward_features(x)
    torch.testing.assert_close(ref[:, 0], out["x_norm_clstoken"], atol=1e-5, rtol=0)
    torch.testing.assert_close(
        ref[:, 1 + registers :], out["x_norm_patchtokens"], atol=1e-5, rtol=0
    )


def test_hf_swiglu_round_trip_and_saved_folder(tmp_path):
    hf = _hf_model(0, swiglu=True)
    hf.save_pretrained(tmp_path)  # on-disk names differ from the in-memory ones in transformers 5
    ours = vit_from_weights(tmp_path).eval()
    assert ours.ffn_layer == "swiglu" and ours.num_heads == 3
    x = torch.rand(1, 1, 56, 56)
    with torch.no_grad():
        ref = hf(pixel_values=x).last_hidden_state
    torch.testing.assert_close(
        ours.forward_features(x)["x_norm_clstoken"], ref[:, 0], atol=1e-5, rtol=0
    )


def _official_vits14(registers: bool) -> dict[str, torch.Tensor]:
    """Key names and shapes of the torch hub dinov2_vits14(_reg) checkpoints (518 px, RGB)."""
    d, hidden = 384, 1536
    sd = {
        "cls_token": torch.randn(1, 1, d),
        "pos_embed": torch.randn(1, 1370, d),
        "mask_token": torch.zeros(1, d),
        "patch_embed.proj.weight": torch.randn(d, 3, 14, 14),
        "patch_embed.proj.bias": torch.randn(d),
        "norm.weight": torch.ones(d),
        "norm.bias": torch.zeros(d),
    }
    if registers:
        sd["register_tokens"] = torch.randn(1, 4, d)
    for i in range(12):
        p = f"blocks.{i}."
        sd.update({
            p + "norm1.weight": torch.ones(d), p + "norm1.bias": torch.zeros(d),
            p + "attn.qkv.weight": torch.randn(3 * d, d), p + "attn.qkv.bias": torch.randn(3 * d),
            p + "attn.proj.weight": torch.randn(d, d), p + "attn.proj.bias": torch.randn(d),
            p + "ls1.gamma": torch.full((d,), 1e-5),
            p + "norm2.weight": torch.ones(d), p + "norm2.bias": torch.zeros(d),
            p + "mlp.fc1.weight": torch.randn(hidden, d), p + "mlp.fc1.bias": torch.randn(hidden),
            p + "mlp.fc2.weight": torch.randn(d, hidden), p + "mlp.fc2.bias": torch.randn(d),
            p + "ls2.gamma": torch.full((d,), 1e-5),
        })  # fmt: skip
    return sd


@pytest.mark.parametrize("registers", [False, True])
def test_official_vits14_state_dict_loads_without_missing_or_unexpected_keys(registers):
    sd = _official_vits14(registers)
    assert len(sd) == 7 + int(registers) + 12 * 14
    assert detect_layout(sd) == "dinov2"
    regs = 4 if registers else 0
    exact = build_vit("vit_small", img_size=518, in_chans=3, num_register_tokens=regs)
    assert load_backbone_weights(exact, sd) == []
    assert torch.equal(exact.pos_embed, sd["pos_embed"])
    # Our 1-channel model at the training size: kernel summed, positions resampled.
    gray = build_vit("vit_small", img_size=224, num_register_tokens=regs)
    load_backbone_weights(gray, sd)
    torch.testing.assert_close(
        gray.patch_embed.proj.weight, sd["patch_embed.proj.weight"].sum(1, keepdim=True)
    )
    assert gray.pos_embed.shape == (1, 257, 384)
    torch.testing.assert_close(gray.pos_embed[:, 0], sd["pos_embed"][:, 0])


def test_mismatched_weights_name_the_keys():
    sd = _official_vits14(False)
    sd.pop("blocks.3.ls1.gamma")
    sd["head.weight"] = torch.zeros(10, 384)
    with pytest.raises(
        CheckpointError,
        match=r"missing 1 keys: blocks\.3\.ls1\.gamma.*unexpected 1 keys: head\.weight",
    ):
        load_backbone_weights(build_vit("vit_small", img_size=518), sd)
    with pytest.raises(CheckpointError, match="shapes differ: blocks"):
        load_backbone_weights(
            build_vit("vit_small", img_size=518, depth=12, mlp_ratio=2.0), _official_vits14(False)
        )


@pytest.mark.parametrize("kwargs", [{}, {"num_register_tokens": 4}, {"ffn_layer": "swiglu"}])
def test_timm_layout_round_trip(kwargs):
    ours = tiny_vit(**kwargs)
    timm_sd = timm_state_dict(ours)
    assert "mask_token" not in timm_sd
    if kwargs.get("num_register_tokens"):
        assert timm_sd["reg_token"].shape == (1, 4, 48) and timm_sd["pos_embed"].shape == (
            1,
            16,
            48,
        )
    assert detect_layout(timm_sd) == ("dinov2" if not kwargs else "timm")
    back = tiny_vit(**kwargs)
    with torch.no_grad():
        for p in back.parameters():
            p.zero_()
    assert load_backbone_weights(back, timm_sd) == ["mask_token"]
    x = torch.rand(2, 1, 56, 56)
    a, b = ours.forward_features(x), back.forward_features(x)
    for key in ("x_norm_clstoken", "x_norm_regtokens", "x_norm_patchtokens"):
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=0)


def test_timm_export_writes_config(tmp_path):
    export_timm(tiny_vit(num_register_tokens=4), tmp_path)
    import json

    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architecture"] == "vit_small_patch14_reg4_dinov2"
    assert config["model_args"]["in_chans"] == 1 and config["model_args"]["no_embed_class"]
    assert "reg_token" in read_state_dict(tmp_path / "model.safetensors")


def test_own_safetensors_round_trip_with_heads(tmp_path):
    ours = tiny_vit(num_register_tokens=2)
    heads = {"dino_head": DINOHead(48, 32, 16, 8), "slice_head": ProjectionHead(48, 8, 16)}
    export_safetensors(ours, heads, tmp_path, extra={"step": 7})
    backbone, loaded = load_exported(tmp_path)
    x = torch.rand(1, 1, 56, 56)
    torch.testing.assert_close(backbone.eval()(x), ours(x))
    feats = torch.randn(3, 48)
    for name, head in heads.items():
        torch.testing.assert_close(loaded[name](feats), head(feats))
    with pytest.raises(CheckpointError):
        load_exported(tmp_path / "nowhere")


def test_training_checkpoint_prefixes_chunks_and_pth(tmp_path):
    ours = tiny_vit()
    # DINOv2 FSDP training checkpoints: blocks.<chunk>.<global index>.*, under teacher.backbone.
    chunked = {
        "teacher.backbone." + re.sub(r"^blocks\.(\d+)\.", r"blocks.\1.\1.", k): v
        for k, v in ours.state_dict().items()
    }
    torch.save({"teacher": chunked}, tmp_path / "teacher_checkpoint.pth")
    back = vit_from_weights(tmp_path / "teacher_checkpoint.pth", num_heads=3)
    x = torch.rand(1, 1, 56, 56)
    torch.testing.assert_close(back.eval()(x), ours(x))
    torch.save({"x": object()}, tmp_path / "pickled.pth")
    with pytest.raises(CheckpointError, match="not a tensor-only checkpoint"):
        read_state_dict(tmp_path / "pickled.pth")


@pytest.mark.parametrize("fmt", ["hf", "timm", "safetensors"])
def test_export_command_writes_each_format(tmp_path, fmt):
    from mammodino.cli import main

    run, parts = fake_run(tmp_path)
    out = tmp_path / fmt
    assert main(["export", str(run), "--format", fmt, "--output", str(out)]) == 0
    x = torch.rand(1, 1, 56, 56)
    expected = parts["backbone"](x)
    if fmt == "safetensors":
        backbone, heads = load_exported(out)
        assert set(heads) == {"dino_head", "slice_head"}
        feats = torch.randn(2, 48)
        torch.testing.assert_close(heads["dino_head"](feats), parts["dino_head"](feats))
    else:
        layout = {"hf": "hf", "timm": "timm"}[fmt]
        backbone = vit_from_weights(
            out if fmt == "hf" else out / "model.safetensors", layout, num_heads=3
        )
    torch.testing.assert_close(backbone.eval()(x), expected, atol=1e-5, rtol=0)


def test_export_command_reports_missing_run(tmp_path, capsys):
    from mammodino.cli import main

    assert (
        main(["export", str(tmp_path / "none"), "--format", "hf", "--output", str(tmp_path / "o")])
        == 1
    )
    assert "no checkpoint" in capsys.readouterr().err


def test_hf_folder_with_pytorch_model_bin(tmp_path):
    ours = tiny_vit()
    export_hf(ours, tmp_path)
    tensors = read_state_dict(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save(tensors, tmp_path / "pytorch_model.bin")
    back = vit_from_weights(tmp_path)
    x = torch.rand(1, 1, 56, 56)
    torch.testing.assert_close(back.eval()(x), ours(x))
