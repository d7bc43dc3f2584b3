"""Centering strategies that turn teacher logits into target probabilities (collapse prevention).

Both strategies share one interface, so the training step never branches on the kind:
`teacher_probs(teacher_logits, teacher_temp) -> probs` (rows sum to 1) and `update(teacher_logits)`
(called once per step after `teacher_probs`, with the same logits). When `torch.distributed` is
initialised with several ranks, statistics are all-reduced so every rank uses the global batch.
They are `nn.Module`s: EMA centering's `center` buffer is in the state dict and must be saved in
checkpoints for an exact resume.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from mammodino.errors import ConfigError

CENTERINGS = ("centering", "sinkhorn_knopp")


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    if _distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


class EMACentering(nn.Module):
    """p = softmax((t - c) / T_t); after each step c <- m c + (1 - m) mean_b(t_b) (DINO, m = 0.9).

    The mean runs over the rows of `teacher_logits` on all ranks (rows: crops, or masked tokens
    for iBOT). The center starts at zero, so the first step is a plain tempered softmax.
    """

    def __init__(self, out_dim: int, momentum: float = 0.9, all_reduce: bool = True) -> None:
        super().__init__()
        if not 0.0 <= momentum <= 1.0:
            raise ConfigError(f"dino.center_momentum {momentum} is not in [0, 1]")
        self.momentum = momentum
        self.all_reduce = all_reduce
        self.register_buffer("center", torch.zeros(1, out_dim))

    @torch.no_grad()
    def teacher_probs(self, teacher_logits: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """Centered, sharpened teacher probabilities [n, K]."""
        return F.softmax((teacher_logits.float() - self.center) / teacher_temp, dim=-1)

    @torch.no_grad()
    def update(self, teacher_logits: torch.Tensor) -> None:
        """Move the center toward the batch mean of the teacher logits (global over ranks)."""
        logits = teacher_logits.detach().float().reshape(-1, self.center.shape[-1])
        stats = torch.cat([logits.sum(dim=0), logits.new_tensor([logits.shape[0]])])
        if self.all_reduce:
            _all_reduce_sum_(stats)
        count = stats[-1]
        mean = (stats[:-1] / count.clamp_min(1)).unsqueeze(0)
        moved = self.center.mul(self.momentum).add_(mean, alpha=1.0 - self.momentum)
        # No rows anywhere: the center stays. A `where`, not an `if`: no host sync per step.
        self.center.copy_(torch.where(count > 0, moved, self.center))


class SinkhornKnoppCentering(nn.Module):
    """Teacher probabilities as a balanced assignment of the B rows to K prototypes (SwAV, DINOv2).

    Q = exp(t / T_t)^T (K x B); then `n_iterations` times: rows scaled to sum 1/K each, columns
    scaled to sum 1/B each; finally Q * B, so each sample's column sums to 1 and each prototype
    receives about B/K of the mass. B counts rows over all ranks. The scaling runs in the log
    domain (logsumexp), which gives DINOv2's numbers without its overflow/underflow to NaN at low
    teacher temperatures. Stateless: `update` does nothing.
    """

    def __init__(self, n_iterations: int = 3, all_reduce: bool = True) -> None:
        super().__init__()
        if n_iterations < 1:
            raise ConfigError(f"dino.sinkhorn_iterations {n_iterations} must be at least 1")
        self.n_iterations = n_iterations
        self.all_reduce = all_reduce

    def _global_row_logsumexp(self, log_q: torch.Tensor) -> torch.Tensor:
        """log sum_b exp(log_q[k, b]) over the samples of every rank, [K, 1]."""
        if not (self.all_reduce and _distributed()):
            return torch.logsumexp(log_q, dim=1, keepdim=True)
        peak = (
            log_q.amax(dim=1, keepdim=True)
            if log_q.shape[1]
            else log_q.new_full((log_q.shape[0], 1), float("-inf"))
        )
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
        total = torch.exp(log_q - peak).sum(dim=1, keepdim=True)
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return peak + torch.log(total)

    @torch.no_grad()
    def teacher_probs(self, teacher_logits: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """Balanced teacher probabilities [B, K]; each row sums to 1."""
        log_q = (teacher_logits.float() / teacher_temp).t()
        n_prototypes = log_q.shape[0]
        n_samples = log_q.new_tensor([log_q.shape[1]])
        if self.all_reduce:
            _all_reduce_sum_(n_samples)
        log_k, log_b = math.log(n_prototypes), torch.log(n_samples)
        for _ in range(self.n_iterations):
            log_q = log_q - self._global_row_logsumexp(log_q) - log_k
            log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True) - log_b
        return torch.exp(log_q + log_b).t()

    def update(self, teacher_logits: torch.Tensor) -> None:
        """Nothing to update: Sinkhorn-Knopp balances each batch on its own."""


def build_centering(
    kind: str, out_dim: int, momentum: float = 0.9, n_iterations: int = 3
) -> EMACentering | SinkhornKnoppCentering:
    """The centering named by config `dino.centering` (`centering` = EMA, or `sinkhorn_knopp`)."""
    if kind == "centering":
        return EMACentering(out_dim, momentum)
    if kind == "sinkhorn_knopp":
        return SinkhornKnoppCentering(n_iterations)
    raise ConfigError(f"dino.centering {kind!r} is not one of {CENTERINGS}")
