"""The pretraining loop under torchrun: `Trainer` plus DDP or FSDP2, rank-aware data and checkpoints.

What changes against one process (and nothing else does):
- the student is wrapped in place (composable DDP `replicate`, or FSDP2 `fully_shard` per block;
  the teacher is sharded the same way under FSDP2), parameter names stay the same;
- the global batch (and the lr scaling and data position) counts every rank's micro-batches;
  rank r reads global positions r, r + W, r + 2W, ... of the same deterministic sample order;
- logged losses are means over ranks; only rank 0 writes metrics and checkpoints;
- checkpoints hold whole tensors and torch's own optimiser format, gathered on rank 0, so a run
  saved with N ranks resumes with any number of ranks, including one plain `Trainer`;
- `distributed.koleo=gathered` computes KoLeo over the global batch instead of each rank's.
Centering and Sinkhorn-Knopp all-reduce their statistics by themselves (losses/centering.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mammodino.config import Config
from mammodino.data.shard_stream import merge_stream_states
from mammodino.errors import ConfigError
from mammodino.train import parallel as D
from mammodino.train.hardware import PRECISIONS
from mammodino.train.loop import Trainer
from mammodino.train.param_groups import build_optimizer, build_param_groups
from mammodino.train.step import StepResult

KOLEO_MODES = ("per_rank", "gathered")


class _NoMetrics:
    """Metrics sink of ranks other than 0 (rank 0 writes the means over ranks)."""

    def write(self, record: dict[str, Any]) -> None:
        """Drop the record."""


class DistributedTrainer(Trainer):
    """`Trainer` on every rank of a torchrun job (gloo on CPU, nccl on CUDA)."""

    def __init__(
        self,
        cfg: Config,
        output_dir: str | Path,
        resume: bool = False,
        dataset: torch.utils.data.Dataset | None = None,
        show_progress: bool = True,
    ) -> None:
        self.ctx = D.init_distributed(str(cfg.train.device))
        if cfg.distributed.koleo not in KOLEO_MODES:  # checked before the run folder is written
            raise ConfigError(f"distributed.koleo {cfg.distributed.koleo!r} not in {KOLEO_MODES}")
        show = show_progress and self.ctx.is_main
        super().__init__(cfg, output_dir, resume, dataset, show)
        s = self.settings
        optim_state = self._optimizer_state_by_name() if resume else None
        strategy = s.distributed.strategy
        # The ViT checkpoints its own blocks (model flag set from distributed.activation_checkpointing).
        options = {"strategy": strategy, "param_dtype": PRECISIONS[s.train.precision]}
        D.parallelize_all(self.model.student, self.ctx, **options)
        D.parallelize_all(self.model.teacher, self.ctx, trainable=False, **options)
        if strategy == "fsdp" and self.ctx.enabled:
            # fully_shard replaced the parameters by sharded ones: a new optimiser over those.
            groups = build_param_groups(self.model.student, s.optim, self.model.depth)
            self.optimizer = build_optimizer(groups, s.optim.betas)
            if optim_state is not None:
                D.load_full_state_dicts(self.model.student, self.optimizer, None, optim_state)
        if s.distributed.koleo == "gathered" and self.ctx.enabled:
            self.model.koleo_loss = D.GatherInputs(self.model.koleo_loss)
        if not self.ctx.is_main:
            self.metrics = _NoMetrics()
        D.barrier()  # rank 0 may write metrics only after every rank opened the run folder

    def _optimizer_state_by_name(self) -> dict[str, Any]:
        names = {id(p): n for n, p in self.model.student.named_parameters()}
        groups = [[names[id(p)] for p in g["params"]] for g in self.optimizer.param_groups]
        return D.optimizer_state_by_name(self.optimizer.state_dict(), groups)

    def train_step(
        self, micro_batches: list[dict[str, Any]], values: dict[str, float]
    ) -> StepResult:
        """The one-process step (DDP/FSDP2 reduce the gradients); losses averaged over ranks."""
        result = super().train_step(micro_batches, values)
        result.losses = D.reduce_metrics(result.losses, self.device)
        return result

    def save(self) -> Path:
        """Rank 0 writes the checkpoint of the whole model; every rank takes part in gathering it."""
        payload = self.checkpoint_state()
        path = self.ckpt.folder / f"step_{self.step:08d}.pt"
        if self.ctx.is_main:
            path = self.ckpt.save(payload)
        D.barrier()
        return path

    def _weight_states(self) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """Whole tensors gathered from the shards, and the optimiser in torch's own format."""
        student, optim_named = D.full_state_dicts(self.model.student, self.optimizer)
        teacher, _ = D.full_state_dicts(self.model.teacher)
        # Ranks other than 0 receive empty dicts (full_state_dicts): nothing to convert there.
        optimizer = D.optimizer_state_by_index(optim_named) if optim_named else {}
        return student, teacher, optimizer

    def _stream_state(self) -> dict[str, Any] | None:
        """Every rank's workers' stream positions, merged into one state."""
        states = [s for s in D.all_gather_objects(super()._stream_state()) if s]
        return merge_stream_states(states) if states else None

    def _rank_and_world_size(self) -> tuple[int, int]:
        """This rank's share of the endless, deterministic sample order."""
        return self.ctx.rank, self.ctx.world_size

    def run(self) -> dict[str, Any]:
        """Train (see Trainer.run), then leave the process group."""
        try:
            record = super().run()
        except BaseException:
            D.cleanup_distributed(synchronize=False)
            raise
        D.cleanup_distributed()
        return record


def train(
    cfg: Config, output_dir: str | Path, resume: bool = False, **kwargs: Any
) -> dict[str, Any]:
    """Run or resume pretraining: distributed under torchrun (WORLD_SIZE > 1), else one process."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return DistributedTrainer(cfg, output_dir, resume=resume, **kwargs).run()
    from mammodino.train.loop import train as train_one_process

    return train_one_process(cfg, output_dir, resume=resume, **kwargs)
