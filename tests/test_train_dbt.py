"""Mixed FFDM + DBT pretraining through the loop (issue 5): `loss/slice` in metrics.jsonl, the
teacher slice head follows by EMA and is checkpointed, exact resume, weight 0 builds nothing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from helpers import TINY_SCHEDULE, TINY_TRAIN, free_port, write_mixed_cache
from mammodino.config import load_config
from mammodino.train.checkpoint import load_checkpoint
from mammodino.train.loop import Trainer, train

TINY = [
    *TINY_TRAIN,
    "model.drop_path_rate=0.0",
    "dbt.proj_dim=16",
    "dbt.proj_hidden_dim=32",
    "data.batch_size=4",
    "data.dbt_fraction=0.5",  # 2 slice pairs per batch: one positive, one negative each
    *TINY_SCHEDULE,
    "train.deterministic=true",
]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return write_mixed_cache(tmp_path_factory.mktemp("dbt") / "cache")


def cfg(cache: Path, *overrides: str):
    return load_config(overrides=[f"data.source={cache}", *TINY, *overrides])


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_slice_loss_is_logged_and_its_teacher_head_follows_by_ema(cache, tmp_path):
    trainer = Trainer(cfg(cache, "optim.max_steps=3"), tmp_path / "run", show_progress=False)
    head = trainer.model.teacher["slice_head"]
    start = {k: v.clone() for k, v in head.state_dict().items()}
    assert head is trainer.model.slice_objective.teacher_head
    grouped = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert all(id(p) in grouped for p in trainer.model.student["slice_head"].parameters())
    trainer.run()
    logged = records(tmp_path / "run")
    assert [r["step"] for r in logged] == [1, 2, 3]
    assert all(np.isfinite(r["loss/slice"]) and r["loss/slice"] > 0 for r in logged)
    saved = load_checkpoint(tmp_path / "run" / "checkpoints")
    teacher_keys = [k for k in saved["teacher"] if k.startswith("slice_head.")]
    assert teacher_keys and all(f"{k}" in saved["student"] for k in teacher_keys)
    moved = max(
        float((saved["teacher"][f"slice_head.{k}"] - v).abs().max()) for k, v in start.items()
    )
    assert moved > 0  # EMA moved the teacher head (it gets no gradients)
    assert not any(p.requires_grad for p in head.parameters())


def test_dbt_run_resumes_exactly(cache, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(cfg(cache, "optim.max_steps=4"), straight, show_progress=False)
    train(cfg(cache, "optim.max_steps=2"), resumed, show_progress=False)
    train(cfg(cache, "optim.max_steps=4"), resumed, resume=True, show_progress=False)
    a, b = (load_checkpoint(run / "checkpoints") for run in (straight, resumed))
    assert a["data"] == b["data"]
    for part in ("student", "teacher"):
        assert a[part].keys() == b[part].keys()
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    assert [r["loss/slice"] for r in records(straight)] == [
        r["loss/slice"] for r in records(resumed)
    ]


def test_weight_zero_logs_no_slice_loss_and_adds_no_parameters(cache, tmp_path):
    trainer = Trainer(
        cfg(cache, "optim.max_steps=1", "dbt.slice_loss_weight=0"), tmp_path, show_progress=False
    )
    assert trainer.model.slice_objective is None
    assert "slice_head" not in trainer.model.student and "slice_head" not in trainer.model.teacher
    trainer.run()
    assert all("loss/slice" not in r for r in records(tmp_path))


def _rank(rank: int, port: int, cache: str, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from mammodino.train import parallel as D
    from mammodino.train.distributed_trainer import DistributedTrainer

    # 4 volumes: each rank's 2 pairs can come from different volumes (negatives exist).
    trainer = DistributedTrainer(cfg(Path(cache), "optim.max_steps=2"), out, show_progress=False)
    Trainer.run(trainer)
    state = trainer.model.student.state_dict()
    flat = torch.cat([state[k].flatten() for k in sorted(state)])
    every_rank = D.all_gather_objects(flat)
    if trainer.ctx.is_main:
        torch.save(torch.stack(every_rank), Path(out) / "every_rank.pt")
    D.cleanup_distributed()


@pytest.mark.multiproc
def test_two_ddp_ranks_with_the_slice_loss_stay_identical(tmp_path):
    """DDP sees the student backbone called twice per step (crops, then slice pairs)."""
    cache = write_mixed_cache(tmp_path / "cache", n_volumes=4)
    mp.spawn(_rank, args=(free_port(), str(cache), str(tmp_path / "run")), nprocs=2)
    every_rank = torch.load(tmp_path / "run" / "every_rank.pt", weights_only=True)
    assert torch.equal(every_rank[0], every_rank[1])
    logged = records(tmp_path / "run")
    assert [r["step"] for r in logged] == [1, 2]
    assert all(np.isfinite(r["loss/slice"]) for r in logged)
    assert any(r["loss/slice"] > 0 for r in logged)
    assert any(
        "slice_head." in k for k in load_checkpoint(tmp_path / "run" / "checkpoints")["teacher"]
    )
