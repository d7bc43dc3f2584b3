"""Load public ViT weights into our ViT: official DINOv2 (torch hub), Hugging Face Dinov2, timm.

Every layout is first renamed into ours (which is DINOv2's), then adapted to the target model:
an RGB patch-embedding kernel is summed to 1 channel and the position embeddings are resampled
(bicubic) to the model's grid. Keys that do not fit raise `CheckpointError` naming them.
Files are read without pickle (safetensors) or with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from mammodino.errors import CheckpointError
from mammodino.io.weights import HF_WEIGHTS, load_safetensors_file, load_torch_file
from mammodino.models.vit import (
    ARCHS,
    VisionTransformer,
    resample_pos_embed,
    rgb_to_gray_patch_embed,
)

LAYOUTS = ("auto", "dinov2", "hf", "timm")
# Prefixes of backbone keys in training checkpoints and wrapping models, teacher first; keys
# without the prefix (heads, classifiers) are left out.
_PREFIXES = ("teacher.backbone.", "backbone.", "student.backbone.", "dinov2.", "model.")
# Our keys a public file may lack: DINOv2 initialises the mask token to zeros, timm drops it.
_OPTIONAL = {"mask_token"}
_MAX_NAMED = 8

_HF_BLOCK = {
    "norm1": "norm1",
    "norm2": "norm2",
    "attention.output.dense": "attn.proj",
    "attention.o_proj": "attn.proj",
    "layer_scale1.lambda1": "ls1.gamma",
    "layer_scale2.lambda1": "ls2.gamma",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "mlp.weights_in": "mlp.w12",
    "mlp.weights_out": "mlp.w3",
    "mlp.down_proj": "mlp.w3",
}
_HF_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.mask_token": "mask_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.register_tokens": "register_tokens",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
_HF_LAYER = re.compile(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias|lambda1)$")
# q/k/v (legacy `attention.attention.query`, 5.x `attention.q_proj`) fuse into `attn.qkv`;
# SwiGLU gate/up (5.x) fuse into `mlp.w12`.
_HF_FUSED = {
    "attention.attention.query": ("attn.qkv", 0),
    "attention.attention.key": ("attn.qkv", 1),
    "attention.attention.value": ("attn.qkv", 2),
    "attention.q_proj": ("attn.qkv", 0),
    "attention.k_proj": ("attn.qkv", 1),
    "attention.v_proj": ("attn.qkv", 2),
    "mlp.gate_proj": ("mlp.w12", 0),
    "mlp.up_proj": ("mlp.w12", 1),
}


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors / .pt / .pth / .bin file, or of an HF folder's weights file."""
    path = Path(path)
    if path.is_dir():
        # HF folders: safetensors, else the older pytorch_model.bin.
        found = [path / name for name in HF_WEIGHTS if (path / name).is_file()]
        if not found:
            raise CheckpointError(
                f"{path}: no {' or '.join(HF_WEIGHTS)} in this folder (give a weights file or an "
                "HF folder)"
            )
        path = found[0]
    if not path.is_file():
        raise CheckpointError(f"{path}: no such weights file (give a file or an HF folder)")
    if path.suffix == ".safetensors":
        return load_safetensors_file(path)
    obj = load_torch_file(path)
    for key in ("teacher", "model", "state_dict"):  # common wrappers around the state dict
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path.name}: holds a {type(obj).__name__}, not a state dict")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _strip_prefixes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The backbone's tensors without wrapper prefixes (the teacher's when a file has both)."""
    out = dict(state_dict)
    if out and all(k.startswith("module.") for k in out):
        out = {k[len("module.") :]: v for k, v in out.items()}
    for prefix in _PREFIXES:
        picked = {k[len(prefix) :]: v for k, v in out.items() if k.startswith(prefix)}
        if picked:
            return picked
    return out


def _packed_swiglu(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """timm packs SwiGLU into mlp.fc1 (2 x hidden rows) and mlp.fc2 (hidden columns)."""
    fc1, fc2 = state_dict.get("blocks.0.mlp.fc1.weight"), state_dict.get("blocks.0.mlp.fc2.weight")
    return fc1 is not None and fc2 is not None and fc1.shape[0] == 2 * fc2.shape[1]


def _is_square(n: int) -> bool:
    return math.isqrt(n) ** 2 == n


def detect_layout(state_dict: Mapping[str, torch.Tensor]) -> str:
    """'hf' (transformers Dinov2), 'timm' or 'dinov2' (torch hub, also ours) from the key names."""
    if any(k.startswith(("embeddings.", "encoder.layer.")) for k in state_dict):
        return "hf"
    pos = state_dict.get("pos_embed")
    no_cls_position = pos is not None and _is_square(pos.shape[1])
    if "reg_token" in state_dict or no_cls_position or _packed_swiglu(state_dict):
        return "timm"
    return "dinov2"


def _from_hf(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[int, torch.Tensor]] = {}
    for key, value in state_dict.items():
        if key in _HF_TOP:
            out[_HF_TOP[key]] = value
            continue
        match = _HF_LAYER.match(key)
        if not match:
            out[key] = value  # reported as unexpected later
            continue
        index, name, kind = match.groups()
        if name in _HF_FUSED:
            target, part = _HF_FUSED[name]
            fused.setdefault(f"blocks.{index}.{target}.{kind}", {})[part] = value
        elif f"{name}.{kind}" in _HF_BLOCK:
            out[f"blocks.{index}.{_HF_BLOCK[f'{name}.{kind}']}"] = value
        elif name in _HF_BLOCK:
            out[f"blocks.{index}.{_HF_BLOCK[name]}.{kind}"] = value
        else:
            out[key] = value
    for key, parts in fused.items():
        out[key] = torch.cat([parts[i] for i in sorted(parts)], dim=0)
    return out


def _from_timm(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = dict(state_dict)
    if _packed_swiglu(state_dict):
        out = {re.sub(r"\.mlp\.fc1\.", ".mlp.w12.", k): v for k, v in out.items()}
        out = {re.sub(r"\.mlp\.fc2\.", ".mlp.w3.", k): v for k, v in out.items()}
    if "reg_token" in out:
        out["register_tokens"] = out.pop("reg_token")
    pos = out.get("pos_embed")
    if pos is not None and _is_square(pos.shape[1]):
        # timm's no_embed_class layout folded the CLS position into cls_token: a zero one is exact.
        out["pos_embed"] = torch.cat([torch.zeros_like(pos[:, :1]), pos], dim=1)
    return out


def to_dinov2_names(
    state_dict: Mapping[str, torch.Tensor], layout: str = "auto"
) -> dict[str, torch.Tensor]:
    """A state dict of any supported layout renamed into ours (shapes unchanged)."""
    if layout not in LAYOUTS:
        raise CheckpointError(f"weights layout {layout!r} is not one of {LAYOUTS}")
    state_dict = _strip_prefixes(state_dict)
    if layout == "auto":
        layout = detect_layout(state_dict)
    if layout == "hf":
        return _from_hf(state_dict)
    if layout == "timm":
        return _from_timm(state_dict)
    # DINOv2 training checkpoints chunk blocks for FSDP: blocks.<chunk>.<index>.* -> blocks.<index>.*
    return {re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", k): v for k, v in state_dict.items()}


def _adapt(
    model: VisionTransformer, state_dict: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Sum an RGB patch kernel to the model's channels and resample positions to its grid."""
    kernel = state_dict.get("patch_embed.proj.weight")
    if kernel is not None and kernel.shape[1] != model.in_chans:
        if model.in_chans != 1:
            raise CheckpointError(
                f"patch kernel has {kernel.shape[1]} channels; the model takes {model.in_chans} "
                "(only RGB -> 1 channel is converted)"
            )
        state_dict["patch_embed.proj.weight"] = rgb_to_gray_patch_embed(kernel)
    pos = state_dict.get("pos_embed")
    target = model.pos_embed.shape[1]
    if pos is not None and pos.shape[1] != target and pos.shape[-1] == model.embed_dim:
        side = math.isqrt(target - 1)
        state_dict["pos_embed"] = resample_pos_embed(pos, (side, side))
    return state_dict


def _name_keys(keys: list[str]) -> str:
    named = ", ".join(sorted(keys)[:_MAX_NAMED])
    return named + (f" (+{len(keys) - _MAX_NAMED} more)" if len(keys) > _MAX_NAMED else "")


def load_backbone_weights(
    model: VisionTransformer,
    source: str | Path | Mapping[str, torch.Tensor],
    layout: str = "auto",
) -> list[str]:
    """Load DINOv2/HF/timm/our weights into `model`; returns the optional keys that were absent.

    Raises `CheckpointError` naming missing, unexpected or mis-shaped keys.
    """
    raw = read_state_dict(source) if isinstance(source, str | Path) else source
    state_dict = _adapt(model, to_dinov2_names(raw, layout))
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict and k not in _OPTIONAL]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys: {_name_keys(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys: {_name_keys(unexpected)}")
        raise CheckpointError("weights do not fit the ViT: " + "; ".join(parts))
    wrong = [
        f"{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}"
        for k, v in state_dict.items()
        if v.shape != expected[k].shape
    ]
    if wrong:
        raise CheckpointError(f"weights do not fit the ViT: shapes differ: {_name_keys(wrong)}")
    model.load_state_dict(state_dict, strict=False)
    return [k for k in _OPTIONAL if k not in state_dict]


def infer_vit_kwargs(
    state_dict: Mapping[str, torch.Tensor], hints: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """`VisionTransformer` kwargs that fit a state dict in our names.

    The head count is not in the weights: it comes from `hints` (`num_heads`, or an HF config's
    `num_attention_heads`) or else from the size table by embed_dim.
    """
    try:
        embed_dim = state_dict["cls_token"].shape[-1]
        kernel = state_dict["patch_embed.proj.weight"]
        n_pos = state_dict["pos_embed"].shape[1] - 1
    except KeyError as exc:
        raise CheckpointError(f"weights lack {exc.args[0]}: not a ViT backbone") from None
    depth = 1 + max(int(m.group(1)) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.", k)))
    registers = state_dict.get("register_tokens")
    heads = {a["embed_dim"]: a["num_heads"] for a in ARCHS.values()}.get(embed_dim)
    hints = hints or {}
    heads = hints.get("num_heads", hints.get("num_attention_heads", heads))
    if heads is None:
        raise CheckpointError(f"embed_dim {embed_dim} is no known ViT size: give num_heads")
    swiglu = "blocks.0.mlp.w12.weight" in state_dict
    fc1 = state_dict["blocks.0.mlp.w12.weight" if swiglu else "blocks.0.mlp.fc1.weight"]
    return {
        "img_size": math.isqrt(n_pos) * kernel.shape[-1],
        "patch_size": kernel.shape[-1],
        "in_chans": kernel.shape[1],
        "embed_dim": embed_dim,
        "depth": depth,
        "num_heads": heads,
        "mlp_ratio": hints.get("mlp_ratio", 4.0 if swiglu else fc1.shape[0] / embed_dim),
        "num_register_tokens": 0 if registers is None else registers.shape[1],
        "ffn_layer": "swiglu" if swiglu else "mlp",
    }


def vit_from_weights(
    source: str | Path | Mapping[str, torch.Tensor], layout: str = "auto", **overrides: Any
) -> VisionTransformer:
    """A ViT built to fit a weights file (or HF folder) and loaded with it; kwargs override."""
    hf_config = None
    if (
        isinstance(source, str | Path)
        and Path(source).is_dir()
        and (Path(source) / "config.json").is_file()
    ):
        hf_config = json.loads((Path(source) / "config.json").read_text())
        # A timm export keeps the constructor arguments under model_args.
        hf_config = {**hf_config, **hf_config.get("model_args", {})}
    raw = read_state_dict(source) if isinstance(source, str | Path) else source
    named = to_dinov2_names(raw, layout)
    kwargs = infer_vit_kwargs(named, {**(hf_config or {}), **overrides})
    kwargs.update(overrides)
    model = VisionTransformer(**kwargs)
    load_backbone_weights(model, named, layout="dinov2")
    return model
