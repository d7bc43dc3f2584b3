"""The pretraining loop: schedules -> accumulated forward/backward -> clip -> AdamW -> EMA teacher.

Gradient accumulation (`optim.accumulate_steps` = A): one optimiser step sums the gradients of A
micro-batches of `data.batch_size` images, each loss divided by A. What stays per micro-batch:
teacher centering / Sinkhorn-Knopp (normalised over that micro-batch's crops and masked tokens;
EMA centering is updated once per micro-batch), KoLeo (nearest neighbours among that
micro-batch's images) and the iBOT per-image weights. The lr scales with the global batch
(micro-batch x A x ranks). Schedules, EMA and clipping run once per optimiser step (train/step.py).

Non-finite losses: the step is skipped (no optimiser or EMA update, the data is consumed), the
terms and the parameters with non-finite gradients are logged; `train.max_nonfinite_steps` in a
row keep a checkpoint and stop with NonFiniteLossError.

`Trainer(cfg, ...)` takes the config, resolves its hardware defaults (written to config.yaml) and
parses it once into `Settings`; everything it builds gets settings or plain values.
"""

from __future__ import annotations

import math
import random
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from mammodino.config import Config
from mammodino.data.shard_stream import ResumableLoader, StreamingShardDataset
from mammodino.errors import CheckpointError, ConfigError, NonFiniteLossError
from mammodino.settings import Settings
from mammodino.train.batches import build_dataset, sampled_batches, stream_loader
from mammodino.train.checkpoint import (
    CheckpointManager,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
)
from mammodino.train.hardware import PRECISIONS, resolve_device, resolve_hardware_defaults
from mammodino.train.health import HealthDetector
from mammodino.train.meta_arch import MammoDINO
from mammodino.train.metrics_log import MetricsLog, ProgressDisplay
from mammodino.train.monitor import KNNMonitor
from mammodino.train.param_groups import apply_schedules, build_optimizer, build_param_groups
from mammodino.train.resume_keys import RESUMABLE_CHANGES, changed_keys  # noqa: F401 (re-export)
from mammodino.train.schedules import build_schedules
from mammodino.train.step import StepResult, optimizer_step


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed python, numpy and torch; optionally ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


class Trainer:
    """One pretraining run in `output_dir`: config.yaml, metrics.jsonl and checkpoints/."""

    def __init__(
        self,
        cfg: Config,
        output_dir: str | Path,
        resume: bool = False,
        dataset: torch.utils.data.Dataset | None = None,
        show_progress: bool = True,
    ) -> None:
        self.out, self.show_progress = Path(output_dir), show_progress
        self.device = resolve_device(str(cfg.train.device))
        # precision auto -> bf16 or fp32, workers capped by cores; the command prints why.
        resolve_hardware_defaults(cfg, self.device)
        self.settings = s = Settings.from_config(cfg)
        # The resolved config: config.yaml, every checkpoint, and what a resume must match.
        self.config = cfg.to_dict()
        train, optim = s.train, s.optim
        seed_everything(train.seed, train.deterministic)
        self.model = MammoDINO(s).to(self.device)
        if train.compile:
            self.model.compile_blocks()
        self.init_warmup_steps = s.model.init_warmup_steps
        if s.model.init and not resume:  # on resume the checkpoint holds the weights
            self.model.init_backbones(s.model.init)
        self.optimizer = build_optimizer(
            build_param_groups(self.model.student, optim, self.model.depth), optim.betas
        )
        self.dtype = PRECISIONS[train.precision]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        self.accumulate = optim.accumulate_steps
        world_size = self._rank_and_world_size()[1]  # every rank's micro-batches count
        self.global_batch = s.data.batch_size * self.accumulate * world_size
        self.schedules = build_schedules(optim, s.teacher, self.global_batch)
        self.stop_step = min(self.schedules.total_steps, optim.max_steps or 1 << 62)
        self.ckpt = CheckpointManager(self.out / "checkpoints", train.keep_checkpoints)
        self.dataset = dataset if dataset is not None else build_dataset(s)
        # Shards (issue 7): an endless stream whose position is the loader's state, not an index.
        self.streaming = isinstance(self.dataset, StreamingShardDataset)
        self.loader: ResumableLoader | None = None
        self.stream_resume: dict[str, Any] | None = None
        self.step, self.position, self.nonfinite_in_a_row = 0, 0, 0
        if resume:
            self._load(load_checkpoint(self.ckpt.last_path))
        elif self.ckpt.last_path.exists():
            raise CheckpointError(
                f"{self.out} already holds checkpoints: pass --resume or use another --output-dir"
            )
        self.out.mkdir(parents=True, exist_ok=True)
        cfg.save(self.out / "config.yaml")
        self.metrics = MetricsLog(self.out / "metrics.jsonl", self.step if resume else None)
        self.monitor = KNNMonitor.from_settings(s.monitor, s.crops.global_size)
        self.health = HealthDetector.from_settings(s.health, s.heads.dino_out_dim)

    def run(self) -> dict[str, Any]:
        """Train until the schedule ends, `optim.max_steps` or `optim.max_minutes`; returns the last
        logged record and `schedule_steps`, the schedule's length (more: the run stopped early)."""
        max_seconds = 60.0 * (self.settings.optim.max_minutes or math.inf)
        log_every, ckpt_every = self.settings.train.log_every, self.settings.train.checkpoint_every
        batches, started, window, record = self._batches(), time.monotonic(), [], {}
        if self.monitor is not None and self.step == 0:
            self.metrics.write(record := {"step": 0, **self._probe()})
        bar = ProgressDisplay(self.stop_step, self.step, self.show_progress, self.global_batch)
        with bar:
            while self.step < self.stop_step:
                tick = time.monotonic()
                values = self.schedules.at(self.step)
                apply_schedules(self.optimizer, values)
                result = self.train_step([next(batches) for _ in range(self.accumulate)], values)
                self.step, self.position = self.step + 1, self.position + self.global_batch
                window.append((result, time.monotonic() - tick))
                self._check_finite(result, bar)
                timed_out = time.monotonic() - started > max_seconds
                last = self.step == self.stop_step or timed_out
                extra = self._probe() if self._probe_due(last) else {}
                if (log_every and self.step % log_every == 0) or last or extra:
                    record, window = self._log(values, window, extra, bar), []
                bar.update(self.step, result.losses.get("loss"))
                if ckpt_every and self.step % ckpt_every == 0 and not last:
                    self.save()
                if timed_out:
                    break
            # Only a completed schedule is judged: a stopped run's end is still to come.
            if self.step == self.schedules.total_steps:
                self._warn(self.health.finish(self.step), bar)
        self.save()
        return {"step": self.step, **record, "schedule_steps": self.schedules.total_steps}

    def train_step(
        self, micro_batches: list[dict[str, Any]], values: dict[str, float]
    ) -> StepResult:
        """One optimiser step over accumulated micro-batches, then the teacher EMA update."""
        return optimizer_step(
            self.model,
            self.optimizer,
            self.scaler,
            micro_batches,
            values,
            device=self.device,
            autocast=self._autocast,
            clip_grad=self.settings.optim.clip_grad,
            frozen=self.backbone_frozen,
            # One process: no backward through a frozen backbone at all. DDP/FSDP2 keep the
            # parameters they were built with, so there the gradients are dropped instead.
            freeze_in_place=bool(self.init_warmup_steps) and not _distributed(),
            fp16=self.dtype == torch.float16,
        )

    @property
    def backbone_frozen(self) -> bool:
        """True during the `model.init_warmup_steps` head warm-up of continued pretraining."""
        return self.step < self.init_warmup_steps

    def save(self) -> Path:
        """A consolidated checkpoint of the current step (see checkpoint.py for its contents)."""
        return self.ckpt.save(self.checkpoint_state())

    def checkpoint_state(self) -> dict[str, Any]:
        """What a checkpoint holds; the weights come from `_weight_states` and a stream's position
        from `_stream_state`, which a distributed run overrides to gather every rank's."""
        student, teacher, optimizer = self._weight_states()
        return {
            "step": self.step,
            "student": student,
            "teacher": teacher,
            "losses": {
                "dino_centering": self.model.dino_centering.state_dict(),
                "ibot_centering": self.model.ibot_centering.state_dict(),
            },
            "optimizer": optimizer,
            "scaler": self.scaler.state_dict(),
            "data": self._data_state(),
            "rng": capture_rng_state(),
            "arch": self.model.student["backbone"].arch_dict(),
            "config": yaml.safe_dump(self.config, sort_keys=False),
        }

    def _weight_states(self) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """State dicts of the student, the teacher and the optimiser."""
        student, teacher = self.model.student, self.model.teacher
        return student.state_dict(), teacher.state_dict(), self.optimizer.state_dict()

    def _load(self, payload: dict[str, Any]) -> None:
        changed = changed_keys(yaml.safe_load(payload["config"]), self.config)
        if changed:
            raise ConfigError(
                f"resume with a different config would not continue exactly: {changed}"
            )
        if self.streaming:  # (data.source itself cannot change: changed_keys refuses it)
            self.stream_resume = payload["data"]["stream"]
        elif payload["data"]["n_images"] != len(self.dataset):
            raise CheckpointError(
                f"checkpoint saw {payload['data']['n_images']} images, data.source now holds "
                f"{len(self.dataset)}: the data order cannot continue; start a new run"
            )
        self.model.student.load_state_dict(payload["student"])
        self.model.teacher.load_state_dict(payload["teacher"])
        self.model.dino_centering.load_state_dict(payload["losses"]["dino_centering"])
        self.model.ibot_centering.load_state_dict(payload["losses"]["ibot_centering"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scaler.load_state_dict(payload["scaler"])
        self.step, self.position = int(payload["step"]), int(payload["data"]["position"])
        restore_rng_state(payload["rng"])

    def _data_state(self) -> dict[str, Any]:
        """The data position saved in checkpoints (a stream's loader state with shards)."""
        if self.streaming:
            return {"position": self.position, "stream": self._stream_state()}
        epoch, index = divmod(self.position, len(self.dataset))
        return {
            "position": self.position,
            "epoch": epoch,
            "index": index,
            "n_images": len(self.dataset),
        }

    def _stream_state(self) -> dict[str, Any] | None:
        """This process's stream position (DistributedTrainer merges those of all ranks)."""
        return self.loader.state_dict() if self.loader is not None else self.stream_resume

    def _batches(self):
        """Endless micro-batches from the data position (deterministic, resumable order)."""
        data, seed = self.settings.data, self.settings.train.seed
        pin_memory = self.device.type == "cuda"
        if self.streaming:
            self.loader = stream_loader(self.dataset, data, seed, self.stream_resume, pin_memory)
            return iter(self.loader)
        rank, world_size = self._rank_and_world_size()
        return sampled_batches(
            self.dataset, data, seed, self.position, rank, world_size, pin_memory
        )

    def _rank_and_world_size(self) -> tuple[int, int]:
        """This process's share of the sample order: all of it (a distributed run overrides)."""
        return 0, 1

    def _epoch(self) -> int | None:
        """Passes over the data so far (a stream's: from its index; None when it has none)."""
        if not self.streaming:
            return self.position // len(self.dataset)
        n_samples = sum(self.dataset.expected_samples.values())
        return self.position // n_samples if n_samples else None

    def _autocast(self):
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def _probe_due(self, last: bool) -> bool:
        every = self.settings.monitor.every
        return self.monitor is not None and (self.step % every == 0 or last)

    def _probe(self) -> dict[str, float]:
        return self.monitor.evaluate(self.model.teacher["backbone"], self.device, self._autocast)

    def _check_finite(self, result: StepResult, bar: ProgressDisplay) -> None:
        if not result.skipped:
            self.nonfinite_in_a_row = 0
            return
        self.nonfinite_in_a_row += 1
        params = result.bad_params
        self.metrics.write(
            {
                "step": self.step,
                "skipped": True,
                "nonfinite_terms": result.bad_terms,
                "nonfinite_params": params[:20],
                "nonfinite_param_count": len(params),
            }
        )
        shown = ", ".join(params[:5]) + (f" (+{len(params) - 5} more)" if len(params) > 5 else "")
        bar.warn(
            f"step {self.step}: non-finite {', '.join(result.bad_terms)}; step skipped; "
            f"non-finite gradients in: {shown or 'none'}"
        )
        limit = self.settings.train.max_nonfinite_steps
        if self.nonfinite_in_a_row >= limit:
            path = self.save()
            raise NonFiniteLossError(
                f"{limit} steps in a row had non-finite {', '.join(result.bad_terms)}; weights of the "
                f"last good step kept in {path}; lower optim.base_lr or use train.precision=fp32/bf16"
            )

    def _log(
        self,
        values: dict[str, float],
        window: list,
        extra: dict[str, float],
        bar: ProgressDisplay | None = None,
    ) -> dict[str, Any]:
        good = [r for r, _ in window if not r.skipped]
        record: dict[str, Any] = {"step": self.step}
        if good:
            record.update({k: float(np.mean([r.losses[k] for r in good])) for k in good[0].losses})
            record["grad_norm"] = float(np.mean([r.grad_norm for r in good]))
            record["dino/prototypes_used_window"] = self.model.pop_prototypes_seen()
        seconds = sum(s for _, s in window)
        record.update(
            lr=values["lr"],
            wd=values["wd"],
            momentum=values["momentum"],
            teacher_temp=values["teacher_temp"],
            epoch=self._epoch(),
            samples_per_s=self.global_batch * len(window) / seconds if seconds else 0.0,
            **extra,
        )
        self.metrics.write(record)
        self._warn(self.health.update(record), bar)
        return record

    def _warn(self, fired: list[tuple[str, str]], bar: ProgressDisplay | None) -> None:
        """One line now for each health warning, and a record the report shows in red."""
        for kind, message in fired:
            self.metrics.write({"step": self.step, "warning": kind, "message": message})
            if bar is not None:
                bar.warn(message)


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def summary_lines(run: str | Path, record: dict[str, Any], device: str) -> list[str]:
    """What `pretrain` prints when `run` returns `record`: its last figures, and whether the run
    stopped before its schedule's end (its weights are then not those of the schedule)."""
    shown = {k: record[k] for k in ("step", "loss", "monitor/knn_acc") if k in record}
    lines = [f"pretrain: {run} {shown} (torch {torch.__version__}, {device})"]
    if record["step"] < record["schedule_steps"]:
        lines.append(
            f"pretrain: stopped at step {record['step']} of {record['schedule_steps']} "
            "(optim.max_steps / optim.max_minutes): --resume continues the schedule"
        )
    return lines


def train(
    cfg: Config, output_dir: str | Path, resume: bool = False, **kwargs: Any
) -> dict[str, Any]:
    """Run (or resume) a pretraining run; returns the last logged metrics record."""
    return Trainer(cfg, output_dir, resume=resume, **kwargs).run()
