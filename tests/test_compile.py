"""`train.compile`: compiled transformer blocks give the eager losses and gradients (issue 14)."""

import copy
import shutil

import pytest
import torch

from helpers import TINY_TRAIN
from mammodino.config import load_config
from mammodino.data.collate import collate_pretrain
from mammodino.train.meta_arch import MammoDINO

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("cc") is None, reason="torch.compile on CPU needs a C compiler"
    ),
]


def tiny_batch(cfg, batch_size=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    g, loc, p = cfg.crops.global_size, cfg.crops.local_size, cfg.model.patch_size
    n_tokens = (g // p) ** 2
    samples = []
    for index in range(batch_size):
        masks = torch.rand(2, n_tokens, generator=gen) < 0.4
        samples.append({
            "global_crops": torch.rand(2, 1, g, g, generator=gen),
            "local_crops": torch.rand(cfg.crops.n_local, 1, loc, loc, generator=gen),
            "global_patch_tissue": torch.ones(2, g // p, g // p),
            "masks": masks,
            "index": index,
        })  # fmt: skip
    return collate_pretrain(samples)


def test_compiled_blocks_match_eager_losses_and_gradients():
    torch.manual_seed(0)
    cfg = load_config(overrides=[*TINY_TRAIN, "model.drop_path_rate=0", "train.compile=true"])
    eager = MammoDINO(cfg)
    compiled = copy.deepcopy(eager)
    assert compiled.compile_blocks() == 2 * len(eager.student["backbone"].blocks)
    # Parameter names are those of the eager model: checkpoints and EMA do not change.
    assert list(compiled.state_dict()) == list(eager.state_dict())
    for seed in (0, 1):  # two batches: the second call runs the cached compiled code
        batch = tiny_batch(cfg, seed=seed)
        want = eager(batch, 0.04)
        got = compiled(batch, 0.04)
        for key in ("loss", "loss/dino", "loss/ibot", "loss/koleo"):
            torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-5)
        eager.zero_grad()
        compiled.zero_grad()
        want["loss"].backward()
        got["loss"].backward()
        pairs = zip(compiled.student.named_parameters(), eager.student.parameters(), strict=True)
        for (name, a), b in pairs:
            if b.grad is None:
                assert a.grad is None, name
                continue
            # Fused kernels sum in another order: compare each gradient as a whole (relative
            # norm of the difference), not element by element where terms cancel.
            error = float((a.grad - b.grad).norm() / b.grad.norm().clamp_min(1e-12))
            assert error < 2e-3, f"{name}: relative gradient error {error:.2e}"


def test_blocks_with_different_drop_path_rates_share_compiled_graphs():
    """Stochastic depth grows block by block; the rate must not make a graph per block (past
    torch's recompile limit the rest would silently run eagerly)."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    cfg = load_config(overrides=[*TINY_TRAIN, "model.drop_path_rate=0.3"])
    model = MammoDINO(cfg)
    rates = {block.drop_path.p for block in model.student["backbone"].blocks}
    assert len(rates) > 8  # more distinct rates than torch's default recompile limit
    model.compile_blocks()
    model.train()
    for seed in (0, 1):
        losses = model(tiny_batch(cfg, seed=seed), 0.04)
        losses["loss"].backward()
        assert torch.isfinite(losses["loss"])
    # Student (global and local token counts) and teacher (eval mode): a handful of graphs.
    assert counters["stats"]["unique_graphs"] <= 6
    assert not counters["recompile_limit"] and not counters["unimplemented"]
