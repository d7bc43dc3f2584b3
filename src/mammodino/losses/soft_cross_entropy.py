"""Cross-entropy against soft targets, with its gradient written out (the DINO and iBOT core).

For student logits s, target weights w (teacher probabilities, or their sum over teacher crops)
and student temperature T, with z = s / T:

    loss = -sum_k w_k log softmax(z)_k = W * logsumexp(z) - <w, z>,      W = sum_k w_k
    d loss / d s = (W * softmax(z) - w) / T

Autograd of the textbook form (log_softmax, multiply, sum) keeps the K-wide log-probabilities and
the K-wide product for backward and runs a kernel for each step both ways; with 65,536 prototypes
those are the largest tensors of a step. This form keeps z and one number per row, computes the
dot product without materialising w * z, and its backward is one softmax and one fused update.
Results equal the textbook form to float rounding (tests/test_soft_cross_entropy.py).
"""

from __future__ import annotations

import torch


class _SoftCrossEntropy(torch.autograd.Function):
    """Per-row loss; `weights` must not need gradients (targets are fixed by the teacher)."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, weights: torch.Tensor, temperature: float):
        z = logits.float() / temperature
        lse = torch.logsumexp(z, dim=-1)
        weights = weights.float()
        total = weights.sum(dim=-1)
        loss = total * lse - torch.linalg.vecdot(weights, z)
        ctx.save_for_backward(z, lse, weights, total)
        ctx.temperature, ctx.logits_dtype = temperature, logits.dtype
        ctx.logits_shape = logits.shape
        return loss

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        z, lse, weights, total = ctx.saved_tensors
        scale = (grad_loss / ctx.temperature).unsqueeze(-1)
        probs = torch.exp(z - lse.unsqueeze(-1))
        grad = (probs * total.unsqueeze(-1) - weights) * scale
        # Logits broadcast against larger weights: their gradient sums over the broadcast rows.
        if grad.shape != ctx.logits_shape:
            grad = grad.sum_to_size(ctx.logits_shape)
        return grad.to(ctx.logits_dtype), None, None


def soft_cross_entropy(
    logits: torch.Tensor, weights: torch.Tensor, temperature: float
) -> torch.Tensor:
    """-sum_k weights_k log softmax(logits / temperature)_k over the last dimension, in float32.

    `weights` broadcasts against `logits` (e.g. [1, B, K] targets for [C, B, K] crops); the result
    has the broadcast shape without the last dimension. Rows need not sum to one.
    """
    return _SoftCrossEntropy.apply(logits, weights.detach(), temperature)
