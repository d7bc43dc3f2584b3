"""DINO/iBOT projection head (DINOv2's names) and the small projection head of the slice loss.

The prototype layer is weight-normalised with the gain fixed to 1, as in DINOv2. We write it as an
explicit module, `NormalizedLinear`, with a trainable `weight_v` and a fixed `weight_g` buffer of
ones instead of `torch.nn.utils.weight_norm`/`parametrizations.weight_norm`: the state dict holds
plain tensors under DINOv2's names (`last_layer.weight_g`, `last_layer.weight_v`), it saves and loads
through safetensors and deep-copies (EMA teacher) without hooks, and the gain cannot drift.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mammodino.errors import CheckpointError


class NormalizedLinear(nn.Module):
    """Bias-free linear layer y = x W^T with rows W_k = g_k * v_k / ||v_k|| (g fixed to 1)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.weight_v = nn.Parameter(torch.empty(out_dim, in_dim))
        self.register_buffer("weight_g", torch.ones(out_dim, 1))
        # nn.Linear's default initialisation, which DINOv2's weight-normed layer starts from.
        nn.init.kaiming_uniform_(self.weight_v, a=5**0.5)

    @property
    def weight(self) -> torch.Tensor:
        """The effective weight [out, in]: each row of `weight_v` scaled to norm `weight_g`."""
        return self.weight_g * F.normalize(self.weight_v, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x W^T."""
        return F.linear(x, self.weight.to(x.dtype))

    def extra_repr(self) -> str:
        return f"in_dim={self.weight_v.shape[1]}, out_dim={self.weight_v.shape[0]}"


class BatchStatNorm(nn.Module):
    """Batch normalisation that always uses the statistics of the batch it is given.

    DINO's `use_bn` head option, with one difference that matters here: our teacher runs in eval
    mode, where `nn.BatchNorm1d` would switch to running statistics that the EMA never updates.
    This layer keeps no running statistics, so student and teacher both standardise each feature
    over their own batch of rows. That removes the component all images share: at initialisation
    a ViT maps every mammogram to nearly the same CLS token (mean cosine 0.99), which leaves the
    Sinkhorn-Knopp targets uniform (docs/pretrain.md, "Learning health"). A batch of one row is
    only shifted and scaled by the affine parameters. The head is never used for features, so no
    embedding depends on its batch.
    """

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor, groups: Sequence[int] | None = None) -> torch.Tensor:
        """x [..., dim] standardised over all leading positions, then scaled and shifted.

        `groups`: sizes of consecutive row groups (of the flattened rows) that get statistics of
        their own, e.g. CLS rows and masked patch tokens in one call of a shared head.
        """
        flat = x.reshape(-1, x.shape[-1])
        parts = flat.split(list(groups)) if groups else [flat]
        flat = torch.cat(
            [
                F.batch_norm(part, None, None, training=True, eps=self.eps)
                if part.shape[0] > 1
                else part
                for part in parts
            ]
        )
        return (flat * self.weight.to(flat.dtype) + self.bias.to(flat.dtype)).reshape(x.shape)

    def extra_repr(self) -> str:
        return f"dim={self.weight.shape[0]}"


def _mlp(
    nlayers: int, in_dim: int, hidden_dim: int, out_dim: int, batch_norm: bool = False
) -> nn.Module:
    """DINOv2's `_build_mlp`: Linear(-[BN]-GELU-Linear)*; a single Linear when nlayers == 1.

    With `batch_norm`, each hidden Linear is followed by a `BatchStatNorm` (DINO's `use_bn`
    layout: Linear, BN, GELU), so the state-dict indices of the Linears shift as in DINO.
    """
    if nlayers == 1:
        return nn.Linear(in_dim, out_dim)

    def hidden(d_in: int) -> list[nn.Module]:
        norm = [BatchStatNorm(hidden_dim)] if batch_norm else []
        return [nn.Linear(d_in, hidden_dim), *norm, nn.GELU()]

    layers: list[nn.Module] = hidden(in_dim)
    for _ in range(nlayers - 2):
        layers += hidden(hidden_dim)
    layers.append(nn.Linear(hidden_dim, out_dim))
    return nn.Sequential(*layers)


def _init_linears(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class DINOHead(nn.Module):
    """MLP -> L2-normalised bottleneck -> weight-normalised prototypes (logits over out_dim).

    Parameter names follow DINOv2: `mlp.0`, `mlp.2`, `mlp.4` (for 3 layers) and `last_layer`;
    with `batch_norm` they follow DINO's `use_bn` head: `mlp.0`, `mlp.1` (norm), `mlp.3`, ...
    `config` holds the constructor arguments (saved with exported weights).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        nlayers: int = 3,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        self.config = {
            "in_dim": in_dim,
            "out_dim": out_dim,
            "hidden_dim": hidden_dim,
            "bottleneck_dim": bottleneck_dim,
            "nlayers": nlayers,
            "batch_norm": batch_norm,
        }
        self.mlp = _mlp(max(nlayers, 1), in_dim, hidden_dim, bottleneck_dim, batch_norm)
        _init_linears(self.mlp)
        self.last_layer = NormalizedLinear(bottleneck_dim, out_dim)

    def forward(self, x: torch.Tensor, groups: Sequence[int] | None = None) -> torch.Tensor:
        """Prototype logits [..., out_dim] of features [..., in_dim].

        `groups` (row-group sizes) only matters with `batch_norm`: each group is standardised
        over its own rows (see BatchStatNorm).
        """
        if isinstance(self.mlp, nn.Sequential):
            for layer in self.mlp:
                x = layer(x, groups) if isinstance(layer, BatchStatNorm) else layer(x)
        else:
            x = self.mlp(x)
        # fp16 cannot represent 1e-12; DINOv2 uses the same two epsilons.
        eps = 1e-6 if x.dtype == torch.float16 else 1e-12
        x = F.normalize(x, dim=-1, p=2, eps=eps)
        return self.last_layer(x)


class ProjectionHead(nn.Module):
    """Linear-GELU-Linear projection of CLS features for the cross-slice contrastive loss."""

    def __init__(self, in_dim: int, out_dim: int = 256, hidden_dim: int = 2048) -> None:
        super().__init__()
        self.config = {"in_dim": in_dim, "out_dim": out_dim, "hidden_dim": hidden_dim}
        self.mlp = _mlp(2, in_dim, hidden_dim, out_dim)
        _init_linears(self.mlp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Projected features [..., out_dim] (not normalised: the loss normalises)."""
        return self.mlp(x)


def dino_head_from_state_dict(state_dict: dict[str, torch.Tensor]) -> DINOHead:
    """A DINOHead shaped like `state_dict` (DINOv2 names), with those weights loaded."""
    batch_norm = False
    if "mlp.weight" in state_dict:
        first = last = state_dict["mlp.weight"]
        nlayers = 1
    else:
        weights = {
            int(k.split(".")[1]): v
            for k, v in state_dict.items()
            if k.startswith("mlp.") and k.endswith("weight")
        }
        linears = sorted(i for i, v in weights.items() if v.ndim == 2)
        batch_norm = any(v.ndim == 1 for v in weights.values())
        first, last = (
            state_dict[f"mlp.{linears[0]}.weight"],
            state_dict[f"mlp.{linears[-1]}.weight"],
        )
        nlayers = len(linears)
    out_dim, bottleneck = state_dict["last_layer.weight_v"].shape
    head = DINOHead(first.shape[1], out_dim, first.shape[0], bottleneck, nlayers, batch_norm)
    if last.shape[0] != bottleneck:
        raise CheckpointError("head weights: the MLP output does not match the prototype layer")
    head.load_state_dict(state_dict)
    return head
