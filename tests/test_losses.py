"""Losses and centering strategies against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mammodino.errors import ConfigError
from mammodino.losses import (
    DINOLoss,
    EMACentering,
    IBOTPatchLoss,
    KoLeoLoss,
    SinkhornKnoppCentering,
    SliceContrastLoss,
    build_centering,
    slice_negative_mask,
)

LN = math.log


def test_dino_loss_hand_computed_two_globals_one_local():
    # Student temperature 1: softmax([0, ln 3]) = [1/4, 3/4].
    s1 = torch.tensor([[0.0, LN(3)]])
    s2 = torch.tensor([[0.0, 0.0]])
    s3 = torch.tensor([[LN(3), 0.0]])
    p1 = torch.tensor([[1.0, 0.0]])
    p2 = torch.tensor([[0.5, 0.5]])
    loss = DINOLoss(student_temp=1.0)(
        torch.cat([s1, s2]), torch.cat([p1, p2]), n_global=2, student_local_logits=s3
    )
    pairs = [
        -(0.5 * LN(0.25) + 0.5 * LN(0.75)),  # student global 1 vs teacher global 2
        -LN(0.5),  # student global 2 vs teacher global 1
        -LN(0.75),  # local vs teacher global 1
        -(0.5 * LN(0.75) + 0.5 * LN(0.25)),  # local vs teacher global 2
    ]
    assert loss.item() == pytest.approx(sum(pairs) / 4, rel=1e-6)


def test_dino_loss_equals_pairwise_loop_and_skips_same_view():
    torch.manual_seed(0)
    b, k, n_g, n_l = 3, 7, 2, 3
    sg, sl = torch.randn(n_g * b, k), torch.randn(n_l * b, k)
    tp = torch.softmax(torch.randn(n_g * b, k), dim=-1)
    loss = DINOLoss(0.1)(sg, tp, n_g, sl)
    terms = []
    student = list(sg.chunk(n_g)) + list(sl.chunk(n_l))
    for i, s in enumerate(student):
        for j, t in enumerate(tp.chunk(n_g)):
            if i != j:
                terms.append(-(t * F.log_softmax(s / 0.1, dim=-1)).sum(-1).mean())
    assert len(terms) == n_g * (n_g - 1) + n_l * n_g
    torch.testing.assert_close(loss, torch.stack(terms).mean())


def test_dino_loss_rejects_single_global_without_locals():
    with pytest.raises(ConfigError):
        DINOLoss()(torch.zeros(2, 3), torch.zeros(2, 3), n_global=1)


def test_ema_centering_exact_update():
    centering = EMACentering(out_dim=2, momentum=0.9)
    logits = torch.tensor([[1.0, 3.0], [3.0, 5.0]])
    probs = centering.teacher_probs(logits, teacher_temp=0.5)
    torch.testing.assert_close(probs, torch.softmax(logits / 0.5, dim=-1))
    centering.update(logits)
    torch.testing.assert_close(centering.center, torch.tensor([[0.2, 0.4]]))
    centering.update(torch.tensor([[0.0, 10.0]]))
    torch.testing.assert_close(centering.center, torch.tensor([[0.18, 1.36]]))
    centered = centering.teacher_probs(logits, 1.0)
    torch.testing.assert_close(centered, torch.softmax(logits - torch.tensor([0.18, 1.36]), -1))
    assert "center" in centering.state_dict()


def test_sinkhorn_knopp_marginals():
    torch.manual_seed(0)
    b, k = 64, 16
    logits = torch.randn(b, k)
    probs = SinkhornKnoppCentering(n_iterations=3).teacher_probs(logits, teacher_temp=1.0)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(b))
    plain_spread = torch.softmax(logits, -1).sum(0).std()
    assert probs.sum(dim=0).std() < 0.1 * plain_spread
    many = SinkhornKnoppCentering(n_iterations=100).teacher_probs(logits, teacher_temp=1.0)
    torch.testing.assert_close(many.sum(dim=0), torch.full((k,), b / k), atol=1e-3, rtol=0)
    torch.testing.assert_close(many.sum(dim=1), torch.ones(b))


def test_sinkhorn_knopp_hand_example_and_low_temperature_is_finite():
    # Equal logits: the balanced assignment is uniform.
    probs = SinkhornKnoppCentering(3).teacher_probs(torch.zeros(4, 2), 0.04)
    torch.testing.assert_close(probs, torch.full((4, 2), 0.5))
    # Two samples, two prototypes, one iteration by hand: Q = [[e, 1], [1, e]] (K x B) / (2e + 2)
    # rows already balanced, columns too: result [[e, 1], [1, e]] / (e + 1).
    e = math.e
    probs = SinkhornKnoppCentering(1).teacher_probs(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), 1.0)
    torch.testing.assert_close(probs, torch.tensor([[e, 1.0], [1.0, e]]) / (e + 1))
    hot = SinkhornKnoppCentering(3).teacher_probs(torch.randn(8, 5) * 100, 0.04)
    assert torch.isfinite(hot).all()


def test_build_centering_by_config_name():
    assert isinstance(build_centering("centering", 4), EMACentering)
    assert isinstance(build_centering("sinkhorn_knopp", 4, n_iterations=2), SinkhornKnoppCentering)
    with pytest.raises(ConfigError):
        build_centering("softmax", 4)


def test_ibot_loss_hand_computed_and_weighted_per_image():
    # K = 2, student temperature 1; image 0 has 2 masked tokens, image 1 has 1, image 2 none.
    masks = torch.tensor([[True, False, True], [False, True, False], [False, False, False]])
    student = torch.zeros(3, 3, 2)
    student[0, 2] = torch.tensor([0.0, LN(3)])
    student[1, 1] = torch.tensor([LN(3), 0.0])
    teacher = torch.zeros(3, 3, 2)
    teacher[0, 0] = torch.tensor([1.0, 0.0])
    teacher[0, 2] = torch.tensor([0.0, 1.0])
    teacher[1, 1] = torch.tensor([0.5, 0.5])
    image0 = (-LN(0.5) - LN(0.75)) / 2
    image1 = -(0.5 * LN(0.75) + 0.5 * LN(0.25))
    loss = IBOTPatchLoss(student_temp=1.0)(student, teacher, masks)
    assert loss.item() == pytest.approx((image0 + image1) / 2, rel=1e-6)
    # The masked-rows form gives the same number.
    rows = IBOTPatchLoss(1.0)(student[masks], teacher[masks], masks)
    assert rows.item() == pytest.approx(loss.item(), rel=1e-6)


def test_ibot_loss_gradient_only_on_masked_tokens():
    torch.manual_seed(0)
    masks = torch.rand(4, 9) < 0.4
    masks[0] = False
    student = torch.randn(4, 9, 6, requires_grad=True)
    teacher = torch.softmax(torch.randn(4, 9, 6), dim=-1)
    IBOTPatchLoss()(student, teacher, masks).backward()
    assert torch.all(student.grad[~masks] == 0)
    assert torch.all(student.grad[masks].abs().sum(-1) > 0)


def test_ibot_loss_without_masks_is_zero_and_differentiable():
    student = torch.randn(2, 4, 3, requires_grad=True)
    masks = torch.zeros(2, 4, dtype=torch.bool)
    loss = IBOTPatchLoss()(student, torch.rand(2, 4, 3), masks)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(student.grad, torch.zeros_like(student))


def test_koleo_hand_computed():
    x = torch.tensor([[2.0, 0.0], [0.0, 1.0], [-3.0, 0.0]])  # normalised: E, N, W
    # Each point's nearest neighbour is at distance sqrt(2).
    assert KoLeoLoss()(x).item() == pytest.approx(-LN(math.sqrt(2)), abs=1e-6)
    y = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    # Two identical points: distance ~ 0 -> a large but finite loss.
    assert math.isfinite(KoLeoLoss()(y).item())


def test_koleo_batch_of_one_is_zero_and_finite():
    x = torch.randn(1, 8, requires_grad=True)
    loss = KoLeoLoss()(x)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(x.grad).all()


def test_koleo_gradient_finite_for_duplicates():
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    KoLeoLoss()(x).backward()
    assert torch.isfinite(x.grad).all()


def test_slice_contrast_hand_computed():
    # B = 2, tau = 1: u_A = w_B = e1, e2 (positives aligned, negatives orthogonal) -> both
    # directions give -log(e / (e + 1)).
    eye = torch.eye(2)
    loss = SliceContrastLoss(temperature=1.0)(eye, eye, eye, eye)
    assert loss.item() == pytest.approx(-LN(math.e / (math.e + 1)), rel=1e-6)
    # Asymmetric example: student A rows e1, e1; teacher B rows e1, e2.
    s_a = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    t_b = torch.eye(2)
    a_to_b = (-LN(math.e / (math.e + 1)) - LN(1 / (math.e + 1))) / 2
    b_to_a = -LN(1 / 2)  # student B = e1, e2 against teacher A = e1, e1: ties
    loss = SliceContrastLoss(1.0)(s_a, t_b, torch.tensor([[1.0, 0.0], [1.0, 0.0]]), t_b)
    assert loss.item() == pytest.approx((a_to_b + b_to_a) / 2, rel=1e-6)


def test_slice_contrast_limits_log_b_and_zero():
    torch.manual_seed(0)
    b, p = 16, 4096
    unrelated = [torch.randn(b, p) for _ in range(4)]
    loss = SliceContrastLoss(temperature=1.0)(*unrelated)
    assert loss.item() == pytest.approx(math.log(b), abs=0.05)
    z = torch.randn(b, p)
    assert SliceContrastLoss(temperature=0.01)(z, z, z, z).item() < 1e-6


def test_slice_contrast_negative_mask_and_no_teacher_gradient():
    torch.manual_seed(0)
    s_a, s_b = torch.randn(4, 8, requires_grad=True), torch.randn(4, 8)
    t_a, t_b = torch.randn(4, 8, requires_grad=True), torch.randn(4, 8)
    none = torch.zeros(4, 4, dtype=torch.bool)
    loss = SliceContrastLoss(0.1)(s_a, s_b, t_a, t_b, negative_mask=none)
    assert loss.item() == 0.0  # only the positive left in each row
    loss = SliceContrastLoss(0.1)(s_a, s_b, t_a, t_b)
    loss.backward()
    assert t_a.grad is None and s_a.grad is not None
    mask = slice_negative_mask(torch.tensor([0, 0, 1, 1]), torch.tensor([0.0, 5.0, 0.0, 1.0]))
    assert mask.tolist() == [[False, False, True, True], [False, False, True, True],
                             [True, True, False, False], [True, True, False, False]]  # fmt: skip
    gap = slice_negative_mask(torch.tensor([0, 0, 1, 1]), torch.tensor([0.0, 5.0, 0.0, 1.0]), 2.0)
    assert gap[0, 1] and gap[1, 0] and not gap[2, 3] and not gap[0, 0]


def _dinov2_sinkhorn(logits: torch.Tensor, temp: float, n_iterations: int) -> torch.Tensor:
    """DINOv2's `sinkhorn_knopp_teacher`, transcribed (one process)."""
    q = torch.exp(logits / temp).t()
    b, k = q.shape[1], q.shape[0]
    q /= q.sum()
    for _ in range(n_iterations):
        q /= q.sum(dim=1, keepdim=True)
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= b
    return (q * b).t()


def test_sinkhorn_knopp_matches_dinov2_transcription():
    torch.manual_seed(0)
    logits = torch.randn(12, 9)
    ours = SinkhornKnoppCentering(3).teacher_probs(logits, 0.07)
    torch.testing.assert_close(ours, _dinov2_sinkhorn(logits.double(), 0.07, 3).float())


def _distributed_worker(rank: int, world: int, init_file: str, queue) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    logits = torch.randn(2 * world, 5) * 2
    mine = logits[2 * rank : 2 * rank + 2]
    ema = EMACentering(5, momentum=0.9)
    ema.update(mine)
    probs = SinkhornKnoppCentering(3).teacher_probs(mine, 0.5)
    # Plain lists: shared-memory tensors would vanish with this process before the parent reads.
    queue.put((rank, ema.center.tolist(), probs.tolist()))
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.multiproc
def test_centering_all_reduce_equals_global_batch(tmp_path):
    import torch.multiprocessing as mp

    world = 2
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=_distributed_worker, args=(r, world, str(tmp_path / "init"), queue))
        for r in range(world)
    ]
    for p in procs:
        p.start()
    results = sorted((queue.get(timeout=120) for _ in range(world)), key=lambda r: r[0])
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    torch.manual_seed(0)
    logits = torch.randn(2 * world, 5) * 2
    ema = EMACentering(5, momentum=0.9)
    ema.update(logits)
    full = SinkhornKnoppCentering(3).teacher_probs(logits, 0.5)
    for rank, center, probs in results:
        torch.testing.assert_close(torch.tensor(center), ema.center)
        torch.testing.assert_close(torch.tensor(probs), full[2 * rank : 2 * rank + 2])


def test_losses_float32_under_bf16_autocast_with_heads():
    from mammodino.models.heads import DINOHead

    torch.manual_seed(0)
    head = DINOHead(16, out_dim=64, hidden_dim=32, bottleneck_dim=8)
    feats = torch.randn(8, 16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = head(feats)
        teacher = SinkhornKnoppCentering(3).teacher_probs(logits.detach(), 0.04)
        dino = DINOLoss(0.1)(logits, teacher, n_global=2)
        koleo = KoLeoLoss()(feats)
    assert dino.dtype == torch.float32 and koleo.dtype == torch.float32
    (dino + koleo).backward()
    assert torch.isfinite(feats.grad).all() and torch.isfinite(head.last_layer.weight_v.grad).all()


def test_slice_patch_contrast_hand_computed_and_valid_mask():
    # One image pair, 3 tokens, tau 1: token 0 of A = e1, token 1 = e2, token 2 = e1 (background);
    # the teacher of B has the same tokens.
    tokens = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]])
    loss_fn = SliceContrastLoss(temperature=1.0)
    e = math.e
    # All valid: anchor 0 sees [e, 1, e] (label 0), anchor 1 sees [1, e, 1], anchor 2 [e, 1, e].
    expected = (-LN(e / (2 * e + 1)) - LN(e / (e + 2)) - LN(e / (2 * e + 1))) / 3
    assert loss_fn.forward_patches(tokens, tokens, tokens, tokens).item() == pytest.approx(
        expected, rel=1e-6
    )
    # Token 2 invalid: neither an anchor nor a negative.
    valid = torch.tensor([[True, True, False]])
    expected = (-LN(e / (e + 1)) - LN(e / (e + 1))) / 2
    got = loss_fn.forward_patches(tokens, tokens, tokens, tokens, valid)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    torch.manual_seed(0)
    z = torch.randn(2, 5, 512)
    assert SliceContrastLoss(0.01).forward_patches(z, z, z, z).item() < 1e-6
