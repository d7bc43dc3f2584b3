"""The fused soft cross-entropy equals the textbook log_softmax form, values and gradients, and the
DINO / iBOT losses built on it equal their earlier autograd formulation (issue 14)."""

import pytest
import torch
import torch.nn.functional as F

from mammodino.losses import DINOLoss, IBOTPatchLoss
from mammodino.losses.soft_cross_entropy import soft_cross_entropy


def textbook(logits, weights, temperature):
    return -(weights.float() * F.log_softmax(logits.float() / temperature, dim=-1)).sum(dim=-1)


def textbook_dino(global_logits, probs, n_global, local_logits, temp):
    """The DINO loss as it was written before the fused form (mean over pairs of view CE)."""
    batch = probs.shape[0] // n_global
    teacher = probs.float().reshape(n_global, batch, -1)
    total, pairs = 0.0, 0
    student = [global_logits.reshape(n_global, batch, -1)]
    if local_logits is not None:
        student.append(local_logits.reshape(-1, batch, global_logits.shape[-1]))
    for group, crops in enumerate(student):
        for i in range(crops.shape[0]):
            log_q = F.log_softmax(crops[i].float() / temp, dim=-1)
            for j in range(n_global):
                if group == 0 and i == j:
                    continue
                total = total - (teacher[j] * log_q).sum(dim=-1).mean()
                pairs += 1
    return total / pairs


def random_probs(rows, k, gen, sharp=5.0):
    return F.softmax(torch.randn(rows, k, generator=gen) * sharp, dim=-1)


@pytest.mark.parametrize("temperature", [0.1, 1.0])
def test_values_and_gradients_match_log_softmax(temperature):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 50, generator=gen, dtype=torch.float64) * 3
    weights = random_probs(6, 50, gen).double() * torch.tensor([[1.0], [2.0], [0.5]] * 2).double()
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    fused, reference = (
        soft_cross_entropy(a, weights, temperature),
        textbook(b, weights, temperature),
    )
    upstream = torch.randn(6, generator=gen, dtype=torch.float64)
    (fused * upstream.float()).sum().backward()
    (reference * upstream.float()).sum().backward()
    assert fused.dtype == torch.float32 and fused.shape == (6,)
    torch.testing.assert_close(fused, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)


def test_uniform_target_and_one_hot_target_by_hand():
    # Equal logits: loss = W * ln K for any weights summing to W.
    logits = torch.zeros(2, 8, requires_grad=True)
    weights = torch.tensor([[1 / 8] * 8, [0.0] * 7 + [2.0]])
    loss = soft_cross_entropy(logits, weights, 0.1)
    torch.testing.assert_close(loss, torch.tensor([1.0, 2.0]) * torch.log(torch.tensor(8.0)))
    loss.sum().backward()
    # d/ds = (W softmax - w) / T: zero for the uniform row, (2/8 - 2) / 0.1 at the one-hot column.
    torch.testing.assert_close(logits.grad[0], torch.zeros(8))
    assert logits.grad[1, 7].item() == pytest.approx((2 / 8 - 2.0) / 0.1)
    assert logits.grad[1, 0].item() == pytest.approx((2 / 8) / 0.1)


def test_broadcast_targets_and_bf16_logits():
    gen = torch.Generator().manual_seed(1)
    logits = (torch.randn(3, 4, 32, generator=gen) * 2).bfloat16().requires_grad_()
    targets = random_probs(4, 32, gen).unsqueeze(0)  # one target row for 3 crops
    expanded = logits.detach().clone().requires_grad_()
    fused = soft_cross_entropy(logits, targets, 0.1)
    reference = textbook(expanded, targets.expand(3, 4, 32), 0.1)
    fused.sum().backward()
    reference.sum().backward()
    assert logits.grad.dtype == torch.bfloat16 and fused.shape == (3, 4)
    torch.testing.assert_close(fused, reference, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(logits.grad.float(), expanded.grad.float(), rtol=1e-2, atol=1e-3)
    # Logits smaller than the targets: the gradient sums over the broadcast rows.
    small = logits.detach().float()[0].requires_grad_()
    soft_cross_entropy(small, targets.expand(3, 4, 32), 0.1).sum().backward()
    single = small.detach().clone().requires_grad_()
    (3 * soft_cross_entropy(single, targets[0], 0.1)).sum().backward()
    torch.testing.assert_close(small.grad, single.grad)


@pytest.mark.parametrize("n_local", [0, 3])
def test_dino_loss_equals_pairwise_formulation(n_local):
    gen = torch.Generator().manual_seed(2)
    batch, k, n_global = 4, 64, 2
    probs = random_probs(n_global * batch, k, gen)
    global_logits = torch.randn(n_global * batch, k, generator=gen, requires_grad=True)
    local_logits = (
        torch.randn(n_local * batch, k, generator=gen, requires_grad=True) if n_local else None
    )
    loss = DINOLoss(0.1)(global_logits, probs, n_global, local_logits)
    leaves = [global_logits] + ([local_logits] if n_local else [])
    grads = torch.autograd.grad(loss, leaves)
    reference = textbook_dino(global_logits, probs, n_global, local_logits, 0.1)
    expected = torch.autograd.grad(reference, leaves)
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_ibot_loss_equals_masked_mean_formulation():
    gen = torch.Generator().manual_seed(3)
    masks = torch.rand(4, 9, generator=gen) < 0.4
    masks[2] = False  # an image without a mask takes no part
    n, k = int(masks.sum()), 40
    student = torch.randn(n, k, generator=gen, requires_grad=True)
    teacher = random_probs(n, k, gen)
    loss = IBOTPatchLoss(0.1)(student, teacher, masks)
    (grad,) = torch.autograd.grad(loss, student)
    per_token = -(teacher * F.log_softmax(student / 0.1, dim=-1)).sum(dim=-1)
    image_of_row = torch.arange(4).unsqueeze(1).expand(4, 9)[masks]
    per_image = [per_token[image_of_row == b].mean() for b in range(4) if masks[b].any()]
    reference = torch.stack(per_image).mean()
    (expected,) = torch.autograd.grad(reference, student)
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-6)
