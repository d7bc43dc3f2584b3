"""KoLeo regulariser: spreads the student's CLS features uniformly over the sphere."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class KoLeoLoss(nn.Module):
    """Kozachenko-Leonenko entropy estimator on L2-normalised features x_1..x_n:

        L = -1/n * sum_i log(min_{j != i} ||x_i - x_j|| + eps)

    defined as 0 for n < 2 (no neighbour: a batch of 1 per rank must not give inf or NaN). The
    distance uses `pairwise_distance(..., eps=1e-8)` as DINOv2 does, so identical points still have
    a finite gradient. Computed in float32 whatever the autocast dtype.
    """

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Scalar loss of features [n, D]."""
        if features.shape[0] < 2:
            return features.sum() * 0.0
        with torch.autocast(features.device.type, enabled=False):
            x = F.normalize(features.float(), p=2, dim=-1, eps=self.eps)
            with torch.no_grad():
                dots = x @ x.t()
                dots.fill_diagonal_(-2.0)  # below any cosine: a point is never its own neighbour
                neighbour = dots.argmax(dim=1)
            distances = F.pairwise_distance(x, x[neighbour], p=2, eps=self.eps)
            return -torch.log(distances + self.eps).mean()
