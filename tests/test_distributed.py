"""DDP and FSDP2 on gloo (2 CPU processes): identical weights on all ranks, equal to one process
with the same global batch, and a checkpoint saved with 2 ranks that resumes with 1.

The model is a small ViT-like student (backbone with `blocks` + head) with an EMA teacher; the
loss has a batch-mean term and a KoLeo term, which is the one term whose value depends on how the
batch is split (nearest neighbours are searched inside the rank's batch unless gathered).
"""

from __future__ import annotations

import copy
import os

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from helpers import free_port
from mammodino.train import parallel as D
from mammodino.train.ema import copy_student_to_teacher, ema_update

GLOBAL_BATCH, WORLD, STEPS, MORE_STEPS = 8, 2, 3, 2
TOLERANCE = 1e-5  # float32 sums in a different order (per-rank means, then an average)


class Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc(nn.functional.gelu(self.norm(x)))


class Backbone(nn.Module):
    def __init__(self, dim: int = 16, depth: int = 3) -> None:
        super().__init__()
        self.embed = nn.Linear(8, dim)
        self.blocks = nn.ModuleList(Block(dim) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


def build() -> tuple[nn.ModuleDict, nn.ModuleDict]:
    torch.manual_seed(0)
    student = nn.ModuleDict({"backbone": Backbone(), "head": nn.Linear(16, 6)})
    teacher = copy.deepcopy(student).requires_grad_(False)
    copy_student_to_teacher(student, teacher)
    return student, teacher


def koleo(z: torch.Tensor) -> torch.Tensor:
    """-mean log distance to the nearest neighbour (DINOv2's KoLeo on L2-normalised vectors)."""
    z = nn.functional.normalize(z, dim=-1)
    dist = torch.cdist(z, z) + torch.eye(len(z)) * 1e3
    return -torch.log(dist.min(dim=1).values + 1e-8).mean()


def batch(step: int, rank: int, world: int) -> torch.Tensor:
    x = torch.randn(GLOBAL_BATCH, 4, 8, generator=torch.Generator().manual_seed(step))
    per_rank = GLOBAL_BATCH // world
    return x[rank * per_rank : (rank + 1) * per_rank]


def train(student, teacher, opt, steps: range, rank: int, world: int, gathered: bool) -> None:
    """A DINO-shaped step: two student calls, teacher targets, KoLeo on the first view, EMA."""
    for step in steps:
        x = batch(step, rank, world)
        with torch.no_grad():
            target = teacher["head"](teacher["backbone"](x).mean(1))
        feats = student["backbone"](x).mean(1)
        second = student["backbone"](0.5 * x).mean(1)
        loss = (student["head"](feats) - target).pow(2).mean()
        loss = loss + (student["head"](second) - target).pow(2).mean()
        loss = loss + 0.1 * koleo(D.all_gather_cat(feats) if gathered else feats)
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema_update(student, teacher, 0.9)


def optimizer(student: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(student.parameters(), lr=1e-2, weight_decay=0.04)


def flat(state: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([state[k].flatten().float() for k in sorted(state)])


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_PORT=str(port)
    )
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    torch.set_num_threads(1)
    ctx = D.init_distributed("cpu")
    results = {}
    runs = [("ddp", False, True), ("ddp", False, False), ("fsdp", True, True)]
    for strategy, checkpointing, gathered in runs:
        student, teacher = build()
        options = {"strategy": strategy, "activation_checkpointing": checkpointing}
        D.parallelize_all(student, ctx, **options)
        D.parallelize_all(teacher, ctx, trainable=False, **options)
        opt = optimizer(student)
        train(student, teacher, opt, range(STEPS), rank, world, gathered)
        saved = (*D.full_state_dicts(student, opt), D.full_state_dicts(teacher)[0])
        every_rank = D.all_gather_objects(flat(D.full_state_dicts(student, all_ranks=True)[0]))
        train(student, teacher, opt, range(STEPS, STEPS + MORE_STEPS), rank, world, gathered)
        after = D.full_state_dicts(student)[0]
        name = f"{strategy}-{'gathered' if gathered else 'per_rank'}"
        results[name] = {"checkpoint": saved, "every_rank": every_rank, "after": after}
    if ctx.is_main:
        torch.save(results, out)
    D.cleanup_distributed()


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist") / "results.pt"
    mp.spawn(_worker, args=(WORLD, free_port(), str(out)), nprocs=WORLD)
    return torch.load(out, weights_only=True)


def single_process(steps: int, gathered: bool = True):
    student, teacher = build()
    opt = optimizer(student)
    train(student, teacher, opt, range(steps), 0, 1, gathered)
    return student, teacher, opt


@pytest.mark.multiproc
@pytest.mark.parametrize("run", ["ddp-gathered", "ddp-per_rank", "fsdp-gathered"])
def test_all_ranks_hold_identical_weights(two_rank_results, run):
    rank0, rank1 = two_rank_results[run]["every_rank"]
    assert torch.equal(rank0, rank1)


@pytest.mark.multiproc
@pytest.mark.parametrize("run", ["ddp-gathered", "fsdp-gathered"])
def test_two_ranks_match_one_process_with_the_same_global_batch(two_rank_results, run):
    student, teacher, _ = single_process(STEPS)
    model_sd, _, teacher_sd = two_rank_results[run]["checkpoint"]
    assert (flat(model_sd) - flat(student.state_dict())).abs().max() < TOLERANCE
    assert (flat(teacher_sd) - flat(teacher.state_dict())).abs().max() < TOLERANCE


@pytest.mark.multiproc
def test_per_rank_koleo_is_the_term_that_differs(two_rank_results):
    student, _, _ = single_process(STEPS)
    model_sd = two_rank_results["ddp-per_rank"]["checkpoint"][0]
    assert (flat(model_sd) - flat(student.state_dict())).abs().max() > 100 * TOLERANCE
    per_rank_single, _, _ = single_process(STEPS, gathered=False)  # one rank: nothing to gather
    assert torch.equal(flat(per_rank_single.state_dict()), flat(student.state_dict()))


@pytest.mark.multiproc
@pytest.mark.parametrize("run", ["ddp-gathered", "fsdp-gathered"])
def test_checkpoint_saved_with_2_ranks_resumes_with_1(two_rank_results, run):
    model_sd, optim_sd, teacher_sd = two_rank_results[run]["checkpoint"]
    student, teacher = build()
    opt = optimizer(student)
    D.load_full_state_dicts(student, opt, model_sd, optim_sd)
    D.load_full_state_dicts(teacher, None, teacher_sd)
    assert torch.equal(flat(student.state_dict()), flat(model_sd))
    train(student, teacher, opt, range(STEPS, STEPS + MORE_STEPS), 0, 1, gathered=True)
    after = two_rank_results[run]["after"]
    assert (flat(student.state_dict()) - flat(after)).abs().max() < TOLERANCE


def test_one_process_context_without_torchrun(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    ctx = D.init_distributed("cpu")
    assert (ctx.rank, ctx.world_size, ctx.enabled, ctx.is_main) == (0, 1, False, True)
    t = torch.tensor([1.0, 2.0])
    assert torch.equal(D.all_reduce_mean_(t), torch.tensor([1.0, 2.0]))
    assert D.all_gather_cat(t) is t
    assert D.reduce_metrics({"loss": 2.5}) == {"loss": 2.5}
    assert D.all_gather_objects({"a": 1}) == [{"a": 1}]


def test_activation_checkpointing_keeps_names_and_gradients():
    student, _ = build()
    reference, _ = build()
    D.parallelize(student["backbone"], D.DistributedContext(), activation_checkpointing=True)
    assert [n for n, _ in student.named_parameters()] == [
        n for n, _ in reference.named_parameters()
    ]
    x = batch(0, 0, 1)
    student["backbone"](x).pow(2).sum().backward()
    reference["backbone"](x).pow(2).sum().backward()
    for (name, a), (_, b) in zip(
        student.named_parameters(), reference.named_parameters(), strict=True
    ):
        if a.grad is not None:
            assert torch.allclose(a.grad, b.grad, atol=1e-6), name


def test_unknown_strategy_is_a_config_error():
    from mammodino.errors import ConfigError

    with pytest.raises(ConfigError, match="strategy"):
        D.parallelize(Backbone(), D.DistributedContext(), strategy="zero9")
