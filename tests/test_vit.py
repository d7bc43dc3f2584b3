"""ViT family: shapes, DINOv2 names, position-embedding interpolation, mask token, 1-channel kernel."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mammodino.errors import ConfigError
from mammodino.models.layers import Attention, DropPath, swiglu_hidden_dim
from mammodino.models.vit import ARCHS, build_vit, resample_pos_embed, rgb_to_gray_patch_embed


def tiny(**kwargs):
    torch.manual_seed(0)
    params = {"img_size": 56, "patch_size": 14, "depth": 2, "num_register_tokens": 4}
    params.update(kwargs)
    return build_vit("vit_tiny", **params).eval()


def test_arch_table_matches_dinov2_sizes():
    expected = {
        "vit_tiny": (192, 12, 3),
        "vit_small": (384, 12, 6),
        "vit_base": (768, 12, 12),
        "vit_large": (1024, 24, 16),
        "vit_giant2": (1536, 40, 24),
    }
    assert {k: (v["embed_dim"], v["depth"], v["num_heads"]) for k, v in ARCHS.items()} == expected


def test_giant2_has_dinov2_swiglu_layout():
    with torch.device("meta"):
        model = build_vit("vit_giant2", patch_size=14, img_size=518, layerscale_init=1e-5)
    assert swiglu_hidden_dim(6144) == 4096
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["blocks.39.mlp.w12.weight"] == (8192, 1536)
    assert shapes["blocks.39.mlp.w3.weight"] == (1536, 4096)
    assert shapes["pos_embed"] == (1, 1370, 1536)


def test_vits14_reg_state_dict_names_and_shapes():
    with torch.device("meta"):
        model = build_vit(
            "vit_small", img_size=518, patch_size=14, num_register_tokens=4, in_chans=3
        )
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["cls_token"] == (1, 1, 384)
    assert shapes["pos_embed"] == (1, 1370, 384)
    assert shapes["register_tokens"] == (1, 4, 384)
    assert shapes["mask_token"] == (1, 384)
    assert shapes["patch_embed.proj.weight"] == (384, 3, 14, 14)
    block = {k.split(".", 2)[2] for k in shapes if k.startswith("blocks.11.")}
    assert block == {
        "norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight",
        "attn.proj.bias", "ls1.gamma", "norm2.weight", "norm2.bias", "mlp.fc1.weight",
        "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias", "ls2.gamma",
    }  # fmt: skip
    assert len(shapes) == 4 + 2 + 12 * 14 + 2
    n_params = sum(math.prod(s) for s in shapes.values())
    assert n_params == 22_056_576 + 4 * 384  # dinov2_vits14 has 22,056,576; + registers


def test_forward_features_shapes_square_and_non_square():
    model = tiny()
    out = model.forward_features(torch.rand(2, 1, 56, 84))
    assert out["x_norm_clstoken"].shape == (2, 192)
    assert out["x_norm_regtokens"].shape == (2, 4, 192)
    assert out["x_norm_patchtokens"].shape == (2, 4 * 6, 192)
    assert out["x_prenorm"].shape == (2, 1 + 4 + 24, 192)
    assert out["masks"] is None
    assert torch.equal(
        model(torch.zeros(1, 1, 56, 56)),
        model.forward_features(torch.zeros(1, 1, 56, 56))["x_norm_clstoken"],
    )


def test_forward_features_list_gives_one_dict_per_crop_size():
    model = tiny()
    outs = model.forward_features([torch.rand(2, 1, 56, 56), torch.rand(3, 1, 28, 28)])
    assert [o["x_norm_patchtokens"].shape[:2] for o in outs] == [(2, 16), (3, 4)]


def test_pos_embed_interpolation_is_bicubic_without_antialias():
    torch.manual_seed(0)
    pos = torch.randn(1, 1 + 16, 8)
    assert resample_pos_embed(pos, (4, 4)) is pos
    out = resample_pos_embed(pos, (3, 6))
    grid = pos[:, 1:].reshape(1, 4, 4, 8).permute(0, 3, 1, 2)
    ref = F.interpolate(grid, size=(3, 6), mode="bicubic", antialias=False, align_corners=False)
    assert torch.equal(out[:, 0], pos[:, 0])
    torch.testing.assert_close(out[:, 1:], ref.permute(0, 2, 3, 1).reshape(1, 18, 8))
    # A constant field stays constant: bicubic weights sum to one.
    flat = torch.ones(1, 17, 8)
    torch.testing.assert_close(resample_pos_embed(flat, (7, 5)), torch.ones(1, 36, 8))
    with pytest.raises(ConfigError):
        resample_pos_embed(torch.zeros(1, 1 + 15, 8), (3, 3))


def test_mask_token_replaces_masked_patch_embeddings_only():
    model = tiny(num_register_tokens=0)
    with torch.no_grad():
        model.mask_token.normal_()
    x = torch.rand(2, 1, 56, 56)
    masks = torch.zeros(2, 16, dtype=torch.bool)
    masks[0, [1, 5]] = True
    plain = model.prepare_tokens(x)
    masked = model.prepare_tokens(x, masks)
    expected_masked = model.mask_token + model.pos_embed[0, 1:][[1, 5]]
    torch.testing.assert_close(masked[0, 1:][[1, 5]], expected_masked)
    keep = torch.cat([torch.ones(2, 1, dtype=torch.bool), ~masks], dim=1)
    assert torch.equal(masked[keep], plain[keep])
    out = model.forward_features(x, masks)
    assert out["masks"] is masks
    assert torch.equal(out["x_norm_clstoken"][1], model.forward_features(x)["x_norm_clstoken"][1])


def test_registers_sit_between_cls_and_patches_without_position():
    model = tiny(num_register_tokens=2)
    with torch.no_grad():
        model.register_tokens.normal_()
    tokens = model.prepare_tokens(torch.rand(1, 1, 56, 56))
    torch.testing.assert_close(tokens[0, 1:3], model.register_tokens[0])
    torch.testing.assert_close(tokens[0, 0], (model.cls_token + model.pos_embed[:, 0])[0, 0])


def test_rgb_kernel_summed_to_gray_gives_same_tokens():
    torch.manual_seed(0)
    rgb = torch.nn.Conv2d(3, 8, 14, 14)
    gray = torch.nn.Conv2d(1, 8, 14, 14)
    with torch.no_grad():
        gray.weight.copy_(rgb_to_gray_patch_embed(rgb.weight))
        gray.bias.copy_(rgb.bias)
    image = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(gray(image), rgb(image.expand(-1, 3, -1, -1)))
    assert rgb_to_gray_patch_embed(rgb.weight).shape == (8, 1, 14, 14)


def test_attention_matches_explicit_softmax():
    torch.manual_seed(0)
    attn = Attention(12, 3)
    x = torch.randn(2, 5, 12)
    q, k, v = attn.qkv(x).reshape(2, 5, 3, 3, 4).permute(2, 0, 3, 1, 4)
    weights = torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1)
    ref = attn.proj((weights @ v).transpose(1, 2).reshape(2, 5, 12))
    torch.testing.assert_close(attn(x), ref)


def test_activation_checkpointing_gives_same_outputs_and_gradients():
    x = torch.rand(2, 1, 28, 28)
    grads = []
    for flag in (False, True):
        model = tiny(activation_checkpointing=flag, img_size=28).train()
        model.forward_features(x)["x_norm_clstoken"].square().sum().backward()
        grads.append(model.blocks[0].attn.qkv.weight.grad)
    torch.testing.assert_close(grads[0], grads[1])


def test_drop_path_rates_and_statistics():
    model = build_vit("vit_tiny", img_size=28, depth=3, drop_path_rate=0.2)
    assert [b.drop_path.p for b in model.blocks] == pytest.approx([0.0, 0.1, 0.2])
    torch.manual_seed(0)
    drop = DropPath(0.25).train()
    out = drop(torch.ones(4000, 3))
    kept = (out[:, 0] != 0).float().mean().item()
    assert abs(kept - 0.75) < 0.03
    assert out.unique().tolist() == pytest.approx([0.0, 1 / 0.75])
    assert torch.equal(drop.eval()(torch.ones(5, 3)), torch.ones(5, 3))


def test_layerscale_init_and_intermediate_layers():
    model = tiny(layerscale_init=1e-5)
    assert torch.all(model.blocks[0].ls1.gamma == 1e-5)
    feats = model.get_intermediate_layers(
        torch.rand(2, 1, 56, 56), n=2, reshape=True, return_class_token=True
    )
    assert len(feats) == 2 and feats[0][0].shape == (2, 192, 4, 4) and feats[0][1].shape == (2, 192)


def test_bad_arch_and_channels_raise_config_errors():
    with pytest.raises(ConfigError):
        build_vit("vit_huge")
    with pytest.raises(ConfigError):
        tiny()(torch.rand(1, 3, 56, 56))


def test_bf16_autocast_forward_backward_is_finite():
    model = tiny(img_size=28).train()
    masks = torch.zeros(2, 4, dtype=torch.bool)
    masks[:, 0] = True
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.forward_features(torch.rand(2, 1, 28, 28), masks)
        loss = (
            out["x_norm_clstoken"].float().square().mean()
            + out["x_norm_patchtokens"].float().mean()
        )
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert model.mask_token.grad is not None and model.mask_token.grad.abs().sum() > 0


def test_dinov2_interpolate_offset_uses_scale_factor():
    torch.manual_seed(0)
    pos = torch.randn(1, 1 + 16, 8)
    out = resample_pos_embed(pos, (6, 3), offset=0.1)
    grid = pos[:, 1:].reshape(1, 4, 4, 8).permute(0, 3, 1, 2)
    ref = F.interpolate(grid, scale_factor=(6.1 / 4, 3.1 / 4), mode="bicubic", antialias=False)
    torch.testing.assert_close(out[:, 1:], ref.permute(0, 2, 3, 1).reshape(1, 18, 8))
