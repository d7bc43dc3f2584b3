"""Vision transformer family (tiny ... giant2) with DINOv2's parameter names, for 1-channel images.

`VisionTransformer` follows DINOv2's `dinov2/models/vision_transformer.py`: CLS token, learned
position embeddings (interpolated bicubically, antialias off, to any and non-square input sizes),
register tokens inserted after CLS, a mask token that replaces the patch embeddings of iBOT-masked
patches, LayerScale and drop path. Attention runs through `scaled_dot_product_attention`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from mammodino.errors import ConfigError
from mammodino.models.layers import Block, PatchEmbed

# embed_dim, depth, num_heads of each size (DINOv2's vit_small ... vit_giant2).
ARCHS: dict[str, dict[str, int]] = {
    "vit_tiny": {"embed_dim": 192, "depth": 12, "num_heads": 3},
    "vit_small": {"embed_dim": 384, "depth": 12, "num_heads": 6},
    "vit_base": {"embed_dim": 768, "depth": 12, "num_heads": 12},
    "vit_large": {"embed_dim": 1024, "depth": 24, "num_heads": 16},
    "vit_giant2": {"embed_dim": 1536, "depth": 40, "num_heads": 24},
}


def resample_pos_embed(
    pos_embed: torch.Tensor, grid_hw: tuple[int, int], offset: float = 0.0
) -> torch.Tensor:
    """Position embeddings [1, 1+M*M, D] of a square grid resampled to [1, 1+h*w, D] (bicubic).

    `offset` > 0 reproduces DINOv2's `interpolate_offset` kludge (scale factor (h+offset)/M instead
    of an output size); 0 gives the output size directly, as Hugging Face's Dinov2 does.
    """
    n_patches = pos_embed.shape[1] - 1
    side = math.isqrt(n_patches)
    if side * side != n_patches:
        raise ConfigError(f"pos_embed has {n_patches} patch positions, not a square grid")
    h, w = grid_hw
    if (h, w) == (side, side):
        return pos_embed
    dim = pos_embed.shape[-1]
    grid = pos_embed[:, 1:].float().reshape(1, side, side, dim).permute(0, 3, 1, 2)
    if offset:
        scale = ((h + offset) / side, (w + offset) / side)
        grid = F.interpolate(grid, scale_factor=scale, mode="bicubic", antialias=False)
    else:
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", antialias=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, h * w, dim).to(pos_embed.dtype)
    return torch.cat((pos_embed[:, :1], grid), dim=1)


def rgb_to_gray_patch_embed(weight: torch.Tensor) -> torch.Tensor:
    """Patch-embedding kernel [D, 3, p, p] -> [D, 1, p, p] by summing the colour channels.

    A gray image copied into R, G and B gives the same tokens through either kernel, so an RGB
    backbone sees our 1-channel input as it saw gray RGB images.
    """
    if weight.ndim != 4:
        raise ConfigError(
            f"patch-embedding kernel has shape {tuple(weight.shape)}, not [D, C, p, p]"
        )
    return weight.sum(dim=1, keepdim=True)


class VisionTransformer(nn.Module):
    """ViT backbone; `forward_features` gives normalised CLS, register and patch tokens."""

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 14,
        in_chans: int = 1,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        num_register_tokens: int = 0,
        layerscale_init: float | None = 1e-5,
        drop_path_rate: float = 0.0,
        drop_path_uniform: bool = False,
        ffn_layer: str = "mlp",
        interpolate_offset: float = 0.0,
        activation_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if patch_size < 1 or img_size < patch_size:
            raise ConfigError(f"img_size {img_size} and patch_size {patch_size} do not fit")
        self.img_size = img_size
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.embed_dim = self.num_features = embed_dim
        self.depth = depth
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.num_register_tokens = num_register_tokens
        self.layerscale_init = layerscale_init
        self.ffn_layer = ffn_layer
        self.interpolate_offset = interpolate_offset
        self.activation_checkpointing = activation_checkpointing
        grid = img_size // patch_size

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, embed_dim))
        self.register_tokens = (
            nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim))
            if num_register_tokens
            else None
        )
        if drop_path_uniform:
            rates = [drop_path_rate] * depth
        else:  # linearly deeper blocks drop more, as DINOv2 and timm do
            rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, layerscale_init, rate, ffn_layer)
            for rate in rates
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))
        self.init_weights()

    def init_weights(self) -> None:
        """DINOv2's initialisation: truncated normal 0.02 for linears and pos_embed, 1e-6 tokens."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=1e-6)
        nn.init.zeros_(self.mask_token)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def arch_dict(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this architecture (saved next to exported weights)."""
        return {
            "img_size": self.img_size,
            "patch_size": self.patch_size,
            "in_chans": self.in_chans,
            "embed_dim": self.embed_dim,
            "depth": self.depth,
            "num_heads": self.num_heads,
            "mlp_ratio": self.mlp_ratio,
            "num_register_tokens": self.num_register_tokens,
            "layerscale_init": self.layerscale_init,
            "ffn_layer": self.ffn_layer,
            "interpolate_offset": self.interpolate_offset,
        }

    def prepare_tokens(self, x: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        """Image [B, C, H, W] -> tokens [B, 1+R+N, D]: CLS, registers, (masked) patches + positions."""
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ConfigError(
                f"input of shape {tuple(x.shape)} does not fit a ViT with in_chans={self.in_chans}"
            )
        b, _, h, w = x.shape
        tokens = self.patch_embed(x)
        if masks is not None:
            # iBOT: masked patches enter the network as the learned mask token.
            tokens = torch.where(masks.unsqueeze(-1), self.mask_token.to(tokens.dtype), tokens)
        tokens = torch.cat((self.cls_token.expand(b, -1, -1).to(tokens.dtype), tokens), dim=1)
        grid = (h // self.patch_size, w // self.patch_size)
        pos = resample_pos_embed(self.pos_embed, grid, self.interpolate_offset)
        tokens = tokens + pos.to(tokens.dtype)
        if self.register_tokens is not None:
            # Registers carry no position: DINOv2 inserts them after the position embedding.
            regs = self.register_tokens.expand(b, -1, -1).to(tokens.dtype)
            tokens = torch.cat((tokens[:, :1], regs, tokens[:, 1:]), dim=1)
        return tokens

    def _run_block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.activation_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, x, use_reentrant=False)
        return block(x)

    def _features(self, x: torch.Tensor, masks: torch.Tensor | None) -> dict[str, torch.Tensor]:
        tokens = self.prepare_tokens(x, masks)
        for block in self.blocks:
            tokens = self._run_block(block, tokens)
        normed = self.norm(tokens)
        r = self.num_register_tokens
        return {
            "x_norm_clstoken": normed[:, 0],
            "x_norm_regtokens": normed[:, 1 : r + 1],
            "x_norm_patchtokens": normed[:, r + 1 :],
            "x_prenorm": tokens,
            "masks": masks,
        }

    def forward_features(
        self,
        x: torch.Tensor | list[torch.Tensor],
        masks: torch.Tensor | list[torch.Tensor | None] | None = None,
    ) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
        """Token features of a batch, or a list of dicts for a list of batches (crop sizes).

        `masks` (bool [B, N], True = masked) replaces those patch embeddings by `mask_token`.
        """
        if isinstance(x, list | tuple):
            mask_list = masks if masks is not None else [None] * len(x)
            return [self._features(xi, mi) for xi, mi in zip(x, mask_list, strict=True)]
        return self._features(x, masks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised CLS embedding [B, D] (what DINOv2's backbone returns at inference)."""
        return self._features(x, None)["x_norm_clstoken"]

    def get_intermediate_layers(
        self,
        x: torch.Tensor,
        n: int | list[int] = 1,
        reshape: bool = False,
        return_class_token: bool = False,
        norm: bool = True,
    ) -> tuple:
        """Patch tokens of the last `n` blocks (or of the block indices in `n`), as DINOv2."""
        tokens = self.prepare_tokens(x)
        wanted = set(range(len(self.blocks) - n, len(self.blocks)) if isinstance(n, int) else n)
        outputs = []
        for i, block in enumerate(self.blocks):
            tokens = block(tokens)
            if i in wanted:
                outputs.append(self.norm(tokens) if norm else tokens)
        if len(outputs) != len(wanted):
            raise ConfigError(
                f"asked for blocks {sorted(wanted)} of a {len(self.blocks)}-block ViT"
            )
        r = self.num_register_tokens
        cls = [out[:, 0] for out in outputs]
        patches = [out[:, r + 1 :] for out in outputs]
        if reshape:
            b, _, h, w = x.shape
            gh, gw = h // self.patch_size, w // self.patch_size
            patches = [p.reshape(b, gh, gw, -1).permute(0, 3, 1, 2).contiguous() for p in patches]
        if return_class_token:
            return tuple(zip(patches, cls, strict=True))
        return tuple(patches)


def compile_blocks(*vits: VisionTransformer) -> int:
    """`torch.compile` every transformer block of `vits` in place; returns the blocks compiled.

    Blocks are where the elementwise work of a step lives (layer norms, LayerScale, residual
    adds, GELU around the matmuls); compiled, each runs as a few fused kernels. Module-level
    compilation keeps parameter names, so checkpoints and EMA are unchanged.
    """
    import torch._dynamo

    # A block that cannot be compiled here (no C++ compiler, unsupported op) runs eagerly.
    torch._dynamo.config.suppress_errors = True
    # All blocks share one code object, so their graphs share one cache: student with grads
    # at two token counts, teacher without, each again while the backbone is frozen (model.
    # init warm-up) and the monitor's batch sizes. Past the limit blocks would run eagerly.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 16)
    blocks = [block for vit in vits for block in vit.blocks]
    for block in blocks:
        block.compile()
    return len(blocks)


def build_vit(arch: str, **kwargs: Any) -> VisionTransformer:
    """A ViT of a named size (`vit_tiny|vit_small|vit_base|vit_large|vit_giant2`); kwargs override.

    vit_giant2 uses the SwiGLU feed-forward of DINOv2's ViT-g/14 unless `ffn_layer="mlp"`.
    """
    if arch not in ARCHS:
        raise ConfigError(f"model.arch {arch!r} is not one of {sorted(ARCHS)}")
    params: dict[str, Any] = dict(ARCHS[arch])
    if arch == "vit_giant2":
        params["ffn_layer"] = "swiglu"
    params.update(kwargs)
    return VisionTransformer(**params)
