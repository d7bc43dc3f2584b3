"""DINO head (DINOv2 names, fixed-gain weight norm) and the slice projection head."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from mammodino.models.heads import (
    BatchStatNorm,
    DINOHead,
    NormalizedLinear,
    ProjectionHead,
    dino_head_from_state_dict,
)


def test_dino_head_has_dinov2_parameter_names():
    head = DINOHead(32, out_dim=100, hidden_dim=64, bottleneck_dim=16)
    assert set(head.state_dict()) == {
        "mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias", "mlp.4.weight", "mlp.4.bias",
        "last_layer.weight_g", "last_layer.weight_v",
    }  # fmt: skip
    assert head.state_dict()["last_layer.weight_g"].shape == (100, 1)
    assert head.state_dict()["last_layer.weight_v"].shape == (100, 16)
    assert "last_layer.weight_g" not in dict(head.named_parameters())
    one_layer = DINOHead(32, out_dim=10, bottleneck_dim=8, nlayers=1)
    assert set(one_layer.state_dict()) == {
        "mlp.weight",
        "mlp.bias",
        "last_layer.weight_g",
        "last_layer.weight_v",
    }


def test_dino_head_output_is_cosine_to_unit_prototypes():
    torch.manual_seed(0)
    head = DINOHead(32, out_dim=50, hidden_dim=64, bottleneck_dim=16)
    with torch.no_grad():
        head.last_layer.weight_v.mul_(torch.rand(50, 1) * 5)  # rows of any norm
    x = torch.randn(4, 32)
    bottleneck = F.normalize(head.mlp(x), dim=-1)
    prototypes = head.last_layer.weight_v / head.last_layer.weight_v.norm(dim=1, keepdim=True)
    torch.testing.assert_close(head(x), bottleneck @ prototypes.t())
    assert head(x).abs().max() <= 1.0 + 1e-6
    torch.testing.assert_close(head.last_layer.weight.norm(dim=1), torch.ones(50))


def test_weight_g_stays_one_and_gets_no_gradient():
    layer = NormalizedLinear(8, 5)
    layer(torch.randn(3, 8)).sum().backward()
    assert layer.weight_v.grad is not None
    assert not layer.weight_g.requires_grad
    assert torch.equal(layer.weight_g, torch.ones(5, 1))


def test_head_round_trips_through_safetensors_and_deepcopy(tmp_path):
    torch.manual_seed(0)
    head = DINOHead(32, out_dim=50, hidden_dim=64, bottleneck_dim=16)
    save_file(head.state_dict(), tmp_path / "head.safetensors")
    other = DINOHead(32, out_dim=50, hidden_dim=64, bottleneck_dim=16)
    other.load_state_dict(load_file(tmp_path / "head.safetensors"))
    x = torch.randn(3, 32)
    torch.testing.assert_close(other(x), head(x))
    torch.testing.assert_close(copy.deepcopy(head)(x), head(x))


def test_projection_head_shape():
    head = ProjectionHead(32, out_dim=8, hidden_dim=16)
    assert head(torch.randn(5, 32)).shape == (5, 8)
    assert set(head.state_dict()) == {"mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias"}


def test_batch_stat_norm_standardises_over_the_batch_in_eval_mode_too():
    torch.manual_seed(0)
    norm = BatchStatNorm(8).eval()  # the teacher runs in eval mode: still batch statistics
    x = 5.0 + 0.1 * torch.randn(4, 6, 8)  # a shared offset with small per-row differences
    y = norm(x).reshape(-1, 8)
    assert torch.allclose(y.mean(dim=0), torch.zeros(8), atol=1e-4)
    assert torch.allclose(y.var(dim=0, unbiased=False), torch.ones(8), atol=1e-2)
    with torch.no_grad():
        norm.weight.fill_(2.0)
        norm.bias.fill_(0.5)
    one = torch.full((1, 8), 3.0)  # one row: no statistics, only the affine map
    assert torch.allclose(norm(one), torch.full((1, 8), 6.5))
    assert not list(norm.buffers())  # nothing for an EMA teacher to miss


def test_batch_norm_head_separates_nearly_equal_inputs_and_round_trips():
    torch.manual_seed(0)
    base = torch.randn(1, 32)
    x = base + 0.01 * torch.randn(16, 32)  # cosine ~0.9999 between rows, as a fresh ViT's CLS

    @torch.no_grad()
    def mean_cosine(head: DINOHead) -> float:
        z = F.normalize(head.mlp(x), dim=-1)
        sim = z @ z.t()
        return float((sim.sum() - sim.diag().sum()) / (16 * 15))

    plain = DINOHead(32, out_dim=64, hidden_dim=64, bottleneck_dim=16)
    with_norm = DINOHead(32, out_dim=64, hidden_dim=64, bottleneck_dim=16, batch_norm=True)
    assert mean_cosine(plain) > 0.99
    assert mean_cosine(with_norm) < 0.5
    assert set(with_norm.state_dict()) >= {"mlp.0.weight", "mlp.1.weight", "mlp.3.weight"}
    rebuilt = dino_head_from_state_dict(with_norm.state_dict())
    assert rebuilt.config == with_norm.config
    assert torch.equal(rebuilt(x), with_norm(x))


def test_batch_norm_groups_get_statistics_of_their_own():
    torch.manual_seed(0)
    head = DINOHead(16, out_dim=32, hidden_dim=24, bottleneck_dim=8, batch_norm=True)
    cls, tokens = torch.randn(6, 16), 3.0 + torch.randn(20, 16)
    both = head(torch.cat([cls, tokens]), groups=(6, 20))
    assert torch.allclose(both[:6], head(cls), atol=1e-5)
    assert torch.allclose(both[6:], head(tokens), atol=1e-5)
    assert not torch.allclose(head(torch.cat([cls, tokens]))[:6], head(cls), atol=1e-3)
