"""Export our ViT (and heads) to the formats users load: Hugging Face, timm, our safetensors.

- `export_hf`: `config.json` + `model.safetensors` in the names `save_pretrained` writes, so
  `transformers.AutoModel.from_pretrained(DIR)` loads a `Dinov2Model` (or
  `Dinov2WithRegistersModel` when the ViT has register tokens) offline, without transformers here.
- `export_timm`: `model.safetensors` in timm's `vit_*_dinov2` layout + a timm-style `config.json`.
- `export_safetensors` / `load_exported`: backbone and heads in one file + `architecture.json`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mammodino.errors import CheckpointError
from mammodino.models.heads import DINOHead, ProjectionHead
from mammodino.models.vit import VisionTransformer

_HEAD_CLASSES: dict[str, type[nn.Module]] = {"DINOHead": DINOHead, "ProjectionHead": ProjectionHead}
_OUR_TO_HF_BLOCK = {
    "norm1": "norm1",
    "norm2": "norm2",
    "attn.proj": "attention.output.dense",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "mlp.w12": "mlp.weights_in",
    "mlp.w3": "mlp.weights_out",
}
_TIMM_SIZES = {384: "small", 768: "base", 1024: "large", 1536: "giant"}


def _save(tensors: Mapping[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, path, metadata)
    # safetensors creates its files 0600 whatever the umask; give the user's default mode, as
    # every other output file (and config.json next to it) has.
    os.chmod(path, default_file_mode())


def default_file_mode() -> int:
    """The mode a new file gets from open(): 0666 less the process umask."""
    umask = os.umask(0)
    os.umask(umask)  # reading the umask means setting it: put it back at once
    return 0o666 & ~umask


def _layerscale(backbone: VisionTransformer, block: nn.Module, name: str) -> torch.Tensor:
    scale = getattr(block, name)
    gamma = getattr(scale, "gamma", None)
    # Without LayerScale our block is the identity scale, which HF/timm express as ones.
    return gamma if gamma is not None else torch.ones(backbone.embed_dim)


def hf_state_dict(backbone: VisionTransformer) -> dict[str, torch.Tensor]:
    """Our backbone in the tensor names of transformers' Dinov2Model checkpoints."""
    sd = backbone.state_dict()
    out = {
        "embeddings.cls_token": sd["cls_token"],
        "embeddings.mask_token": sd["mask_token"],
        "embeddings.position_embeddings": sd["pos_embed"],
        "embeddings.patch_embeddings.projection.weight": sd["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": sd["patch_embed.proj.bias"],
        "layernorm.weight": sd["norm.weight"],
        "layernorm.bias": sd["norm.bias"],
    }
    if backbone.register_tokens is not None:
        out["embeddings.register_tokens"] = sd["register_tokens"]
    for i, block in enumerate(backbone.blocks):
        ours, hf = f"blocks.{i}.", f"encoder.layer.{i}."
        for kind in ("weight", "bias"):
            q, k, v = sd[f"{ours}attn.qkv.{kind}"].chunk(3, dim=0)
            for name, part in (("query", q), ("key", k), ("value", v)):
                out[f"{hf}attention.attention.{name}.{kind}"] = part
            for src, dst in _OUR_TO_HF_BLOCK.items():
                if f"{ours}{src}.{kind}" in sd:
                    out[f"{hf}{dst}.{kind}"] = sd[f"{ours}{src}.{kind}"]
        out[f"{hf}layer_scale1.lambda1"] = _layerscale(backbone, block, "ls1")
        out[f"{hf}layer_scale2.lambda1"] = _layerscale(backbone, block, "ls2")
    return out


def hf_config(backbone: VisionTransformer) -> dict[str, Any]:
    """transformers Dinov2Config / Dinov2WithRegistersConfig of our backbone (num_channels too)."""
    registers = backbone.num_register_tokens > 0
    if float(backbone.mlp_ratio) != int(backbone.mlp_ratio):
        raise CheckpointError(f"mlp_ratio {backbone.mlp_ratio}: HF Dinov2 takes whole numbers only")
    config: dict[str, Any] = {
        "architectures": ["Dinov2WithRegistersModel" if registers else "Dinov2Model"],
        "model_type": "dinov2_with_registers" if registers else "dinov2",
        "hidden_size": backbone.embed_dim,
        "num_hidden_layers": backbone.depth,
        "num_attention_heads": backbone.num_heads,
        "mlp_ratio": int(backbone.mlp_ratio),
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-6,
        "image_size": backbone.img_size,
        "patch_size": backbone.patch_size,
        "num_channels": backbone.in_chans,
        "qkv_bias": True,
        "layerscale_value": float(backbone.layerscale_init or 1.0),
        "drop_path_rate": 0.0,
        "use_swiglu_ffn": backbone.ffn_layer == "swiglu",
        "apply_layernorm": True,
        "reshape_hidden_states": True,
        "dtype": "float32",
    }
    if registers:
        config["num_register_tokens"] = backbone.num_register_tokens
    else:
        config["use_mask_token"] = True
    return config


def export_hf(backbone: VisionTransformer, out_dir: str | Path) -> Path:
    """Write `config.json` + `model.safetensors` that `AutoModel.from_pretrained(out_dir)` loads."""
    out_dir = Path(out_dir)
    _save(hf_state_dict(backbone), out_dir / "model.safetensors", {"format": "pt"})
    (out_dir / "config.json").write_text(json.dumps(hf_config(backbone), indent=2) + "\n")
    return out_dir


def timm_state_dict(backbone: VisionTransformer) -> dict[str, torch.Tensor]:
    """Our backbone in timm's `vit_*_dinov2` names (what timm's `_convert_dinov2` produces)."""
    sd = {k: v for k, v in backbone.state_dict().items() if k != "mask_token"}
    out = {}
    for key, value in sd.items():
        key = key.replace(".mlp.w12.", ".mlp.fc1.").replace(".mlp.w3.", ".mlp.fc2.")
        out[key] = value
    if "register_tokens" in out:
        # timm's register models add no position to CLS/registers: fold CLS's into cls_token.
        out["reg_token"] = out.pop("register_tokens")
        out["cls_token"] = out["cls_token"] + out["pos_embed"][:, :1]
        out["pos_embed"] = out["pos_embed"][:, 1:]
    return out


def timm_config(backbone: VisionTransformer) -> dict[str, Any]:
    """timm hub-style config: a `vit_*_dinov2` architecture and the arguments that make it fit."""
    size = _TIMM_SIZES.get(backbone.embed_dim, "small")
    reg = f"reg{backbone.num_register_tokens}_" if backbone.num_register_tokens else ""
    model_args: dict[str, Any] = {
        "img_size": backbone.img_size,
        "patch_size": backbone.patch_size,
        "in_chans": backbone.in_chans,
        "embed_dim": backbone.embed_dim,
        "depth": backbone.depth,
        "num_heads": backbone.num_heads,
        "mlp_ratio": backbone.mlp_ratio,
        "init_values": backbone.layerscale_init,
        "reg_tokens": backbone.num_register_tokens,
        "no_embed_class": backbone.num_register_tokens > 0,
    }
    return {
        "architecture": f"vit_{size}_patch14_{reg}dinov2",
        "num_classes": 0,
        "num_features": backbone.embed_dim,
        "model_args": model_args,
        "pretrained_cfg": {
            "input_size": [backbone.in_chans, backbone.img_size, backbone.img_size],
            "num_classes": 0,
        },
    }


def export_timm(backbone: VisionTransformer, out_dir: str | Path) -> Path:
    """Write timm's layout as `model.safetensors` and its `config.json`."""
    out_dir = Path(out_dir)
    _save(timm_state_dict(backbone), out_dir / "model.safetensors", {"format": "pt"})
    (out_dir / "config.json").write_text(json.dumps(timm_config(backbone), indent=2) + "\n")
    return out_dir


def export_safetensors(
    backbone: VisionTransformer,
    heads: Mapping[str, nn.Module],
    out_dir: str | Path,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Backbone and named heads in `model.safetensors` (`backbone.*`, `<head>.*`) + `architecture.json`."""
    out_dir = Path(out_dir)
    tensors = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    arch: dict[str, Any] = {"backbone": backbone.arch_dict(), "heads": {}}
    for name, head in heads.items():
        if type(head).__name__ not in _HEAD_CLASSES:
            raise CheckpointError(
                f"head {name!r} is a {type(head).__name__}, which cannot be exported"
            )
        tensors.update({f"{name}.{k}": v for k, v in head.state_dict().items()})
        arch["heads"][name] = {"class": type(head).__name__, "config": dict(head.config)}
    if extra:
        arch["extra"] = dict(extra)
    _save(tensors, out_dir / "model.safetensors", {"format": "mammodino"})
    (out_dir / "architecture.json").write_text(json.dumps(arch, indent=2) + "\n")
    return out_dir


def load_exported(out_dir: str | Path) -> tuple[VisionTransformer, dict[str, nn.Module]]:
    """Rebuild (backbone, heads) written by `export_safetensors`."""
    from safetensors.torch import load_file

    out_dir = Path(out_dir)
    try:
        arch = json.loads((out_dir / "architecture.json").read_text())
        tensors = load_file(out_dir / "model.safetensors")
    except (OSError, ValueError) as exc:
        raise CheckpointError(
            f"{out_dir.name}: not a mammodino export ({type(exc).__name__})"
        ) from None
    backbone = VisionTransformer(**arch["backbone"])
    backbone.load_state_dict(_section(tensors, "backbone"))
    heads: dict[str, nn.Module] = {}
    for name, spec in arch["heads"].items():
        head = _HEAD_CLASSES[spec["class"]](**spec["config"])
        head.load_state_dict(_section(tensors, name))
        heads[name] = head
    return backbone, heads


def _section(tensors: Mapping[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    prefix = f"{name}."
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
