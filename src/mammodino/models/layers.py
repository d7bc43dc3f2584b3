"""Building blocks of the vision transformer, named like DINOv2's `dinov2/layers` modules.

Parameter names (`attn.qkv`, `attn.proj`, `ls1.gamma`, `mlp.fc1`, `mlp.w12`, ...) match the official
DINOv2 backbone, so its public state dicts load into our model without renaming.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mammodino.errors import ConfigError

LAYER_NORM_EPS = 1e-6  # DINOv2 uses partial(nn.LayerNorm, eps=1e-6)


class PatchEmbed(nn.Module):
    """Image [B, C, H, W] -> patch tokens [B, (H//p)*(W//p), D] by a stride-p convolution."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens, row-major over the patch grid (borders that do not fill a patch are cut)."""
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention through `scaled_dot_product_attention` (flash/memory-efficient)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend over all tokens of each sequence."""
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    """Linear-GELU-Linear feed-forward network."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """fc2(gelu(fc1(x)))."""
        return self.fc2(self.act(self.fc1(x)))


def swiglu_hidden_dim(hidden_dim: int) -> int:
    """DINOv2's SwiGLUFFNFused width: 2/3 of the MLP width, rounded up to a multiple of 8."""
    return (int(hidden_dim * 2 / 3) + 7) // 8 * 8


class SwiGLUFFN(nn.Module):
    """SwiGLU feed-forward, w3(silu(x1) * x2) with [x1, x2] = w12(x), as DINOv2's ViT-g/14."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        hidden = swiglu_hidden_dim(hidden_dim)
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Gated feed-forward."""
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(x1) * x2)


class LayerScale(nn.Module):
    """Per-channel residual scale `gamma`, initialised small so deep ViTs start near identity."""

    def __init__(self, dim: int, init_value: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x * gamma."""
        return x * self.gamma


class DropPath(nn.Module):
    """Stochastic depth: drops a sample's whole residual branch with probability `p` in training."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p
        # The keep probability as a tensor too, for compiled blocks (`train.compile`): a float
        # attribute is a constant torch.compile specialises on, so every block's rate would be a
        # graph of its own; a buffer is an input of one shared graph. Not saved in state dicts.
        self.register_buffer("keep_prob", torch.tensor(1.0 - p), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Identity in eval mode; else keep each sample's branch with probability 1-p, scaled."""
        if torch.compiler.is_compiling():
            if not self.training:
                return x
            shape = (x.shape[0],) + (1,) * (x.ndim - 1)
            mask = torch.rand(shape, device=x.device) < self.keep_prob  # float32: exact at p = 0
            return x * (mask / self.keep_prob).to(x.dtype)
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Block(nn.Module):
    """Pre-norm transformer block: x + ls1(attn(norm1 x)), then x + ls2(mlp(norm2 x))."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        layerscale_init: float | None = 1e-5,
        drop_path: float = 0.0,
        ffn_layer: str = "mlp",
    ) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = Attention(dim, num_heads)
        self.ls1 = LayerScale(dim, layerscale_init) if layerscale_init else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        if ffn_layer == "mlp":
            self.mlp: nn.Module = Mlp(dim, hidden)
        elif ffn_layer == "swiglu":
            self.mlp = SwiGLUFFN(dim, hidden)
        else:
            raise ConfigError(f"ffn_layer {ffn_layer!r} is not 'mlp' or 'swiglu'")
        self.ls2 = LayerScale(dim, layerscale_init) if layerscale_init else nn.Identity()
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One residual attention step and one residual feed-forward step."""
        x = x + self.drop_path(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))
