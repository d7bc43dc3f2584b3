"""Learning-health signals of a pretraining step and the plateau/collapse detector.

DINO-style runs fail quietly: the teacher's targets turn uniform (the DINO loss sits at ln K and
teaches nothing) or every image maps to the same embedding (collapse), while the loss curve looks
flat and calm. These signals make both visible in metrics.jsonl and the report (docs/pretrain.md,
"Learning health"); `HealthDetector` turns them into one warning line with what to try.

Signals of one micro-batch, all cheap (an argmax over K and one SVD of a [rows, D] matrix):
- `dino/teacher_entropy`: mean entropy of the teacher's DINO targets / ln K (1 = uniform).
- `dino/prototypes_used`: distinct teacher argmax prototypes among the batch's global crops.
- `dino/agreement`: share of (student crop, teacher crop of another view) pairs whose argmax match.
- `cls/std`: std across the batch of the teacher's L2-normalised CLS, averaged over dimensions.
- `cls/effective_rank`: effective rank (Roy & Vetterli 2007: exp of the entropy of the normalised
  singular values) of the batch's centred, L2-normalised teacher CLS embeddings; 1 = collapse.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mammodino.settings import HealthSettings


@torch.no_grad()
def normalised_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Mean row entropy of probabilities [n, K] divided by ln K: 1 = uniform, 0 = one-hot."""
    if probs.numel() == 0 or probs.shape[-1] < 2:
        return probs.new_zeros((), dtype=torch.float32)
    p = probs.float()
    entropy = -(p * p.clamp_min(1e-30).log()).sum(dim=-1).mean()
    # Rounding can put a uniform row a hair above ln K.
    return (entropy / math.log(p.shape[-1])).clamp(0.0, 1.0)


@torch.no_grad()
def used_prototypes(teacher_probs: torch.Tensor) -> torch.Tensor:
    """A flag per prototype [K]: the argmax of some row of [n, K] (all False for no rows).

    Flags instead of torch.unique: they stay on the device (no host sync).
    """
    used = torch.zeros(teacher_probs.shape[-1], dtype=torch.bool, device=teacher_probs.device)
    if teacher_probs.numel():
        used[teacher_probs.argmax(dim=-1)] = True
    return used


@torch.no_grad()
def prototypes_used(teacher_probs: torch.Tensor) -> torch.Tensor:
    """Number of distinct argmax prototypes over the rows of [n, K] (0 for no rows)."""
    return used_prototypes(teacher_probs).sum().float()


@torch.no_grad()
def student_teacher_agreement(
    teacher_probs: torch.Tensor,
    student_global_logits: torch.Tensor,
    n_global: int,
    student_local_logits: torch.Tensor | None = None,
) -> torch.Tensor:
    """Share of the DINO loss's (student crop, teacher crop) pairs whose argmax prototypes match.

    Pairs as in DINOLoss: each global crop against the other global crops' targets, each local
    crop against every global crop's target. Rows are crop-major ([c*B:(c+1)*B] is crop c).
    """
    batch = teacher_probs.shape[0] // n_global
    teacher = teacher_probs.argmax(dim=-1).reshape(n_global, batch)
    # Counts stay on the device: no host sync per step (issue 14).
    matches, pairs = torch.zeros((), device=teacher.device), 0
    student_global = student_global_logits.argmax(dim=-1).reshape(n_global, batch)
    for i in range(n_global):
        for j in range(n_global):
            if i != j:
                matches = matches + (student_global[i] == teacher[j]).sum()
                pairs += batch
    if student_local_logits is not None and student_local_logits.numel():
        local = student_local_logits.argmax(dim=-1).reshape(-1, batch)
        for j in range(n_global):
            matches = matches + (local == teacher[j]).sum()
            pairs += local.numel()
    return (matches / pairs if pairs else matches).float()


@torch.no_grad()
def cls_spread(cls: torch.Tensor) -> dict[str, torch.Tensor]:
    """`cls/std` and `cls/effective_rank` of embeddings [n, D] (see the module docstring)."""
    if cls.shape[0] < 2:
        zero = torch.zeros((), dtype=torch.float32)
        return {"cls/std": zero, "cls/effective_rank": zero + 1.0}
    x = F.normalize(cls.float(), dim=-1)
    std = x.std(dim=0).mean()
    centred = x - x.mean(dim=0, keepdim=True)
    singular = torch.linalg.svdvals(centred)
    p = singular / singular.sum().clamp_min(1e-30)
    entropy = -(p * p.clamp_min(1e-30).log()).sum()
    # Rows are unit vectors: spread below 1e-4 is rounding of equal rows, a single point. (A
    # `where`, not an `if`: no host sync per step.)
    single_point = singular.max() <= 1e-4
    rank = torch.where(single_point, torch.ones_like(entropy), entropy.exp())
    return {"cls/std": std, "cls/effective_rank": rank}


@dataclass
class HealthDetector:
    """Watches logged records; returns one warning when the run sits on a plateau or collapses.

    Plateau: `loss/dino` within `tolerance` (relative) of ln K for `patience` logged records in a
    row. Collapse: `cls/effective_rank` below `min_effective_rank` for `patience` records. Each
    warns once per episode: leaving the state re-arms it. A run too short for `patience` records
    can still sit on the plateau all along: `finish` judges the end of a completed schedule by
    the mean of its last quarter of records. Its state is the records since the start or the
    resume, so a resumed run starts counting afresh.
    """

    n_prototypes: int
    tolerance: float
    min_effective_rank: float
    patience: int

    @classmethod
    def from_settings(cls, health: HealthSettings, n_prototypes: int) -> HealthDetector:
        """The detector of section `health` for a DINO head of `n_prototypes`."""
        return cls(
            n_prototypes, health.plateau_tolerance, health.min_effective_rank, health.patience
        )

    def __post_init__(self) -> None:
        self.streaks = {"plateau": 0, "collapse": 0}
        self.warned = {"plateau": False, "collapse": False}
        self.history: dict[str, list[float]] = {"plateau": [], "collapse": []}

    def update(self, record: dict) -> list[tuple[str, str]]:
        """(kind, message) of each warning this record triggers; usually none."""
        if "loss/dino" not in record and "cls/effective_rank" not in record:
            return []  # a monitor-only or skipped-step record says nothing either way
        fired = []
        for kind, key in (("plateau", "loss/dino"), ("collapse", "cls/effective_rank")):
            if key in record:
                self.history[kind].append(record[key])
            active = key in record and self._in_state(kind, record[key])
            self.streaks[kind] = self.streaks[kind] + 1 if active else 0
            if not active:
                self.warned[kind] = False
            elif self.streaks[kind] >= self.patience and not self.warned[kind]:
                self.warned[kind] = True
                fired.append((kind, self._message(kind, record)))
        return fired

    def finish(self, step: int) -> list[tuple[str, str]]:
        """(kind, message) for a completed schedule that ended on the plateau or collapsed.

        Judged on the mean of the last quarter of the logged records (at least 3), once the run
        logged `patience` / 2 of them: a short run can sit at ln K throughout while noise breaks
        every streak before `patience`. Silent when the streak warning of the same episode fired.
        """
        fired = []
        for kind, values in self.history.items():
            if self.warned[kind] or len(values) < max(3, self.patience / 2):
                continue
            tail = values[-max(3, len(values) // 4) :]
            mean = sum(tail) / len(tail)
            if self._in_state(kind, mean):
                self.warned[kind] = True
                fired.append((kind, self._message(kind, {"step": step}, (len(tail), mean))))
        return fired

    def _in_state(self, kind: str, value: float) -> bool:
        """Whether one `loss/dino` (plateau) or effective rank (collapse) value is in the state."""
        if kind == "plateau":
            ln_k = math.log(self.n_prototypes)
            return abs(value - ln_k) <= self.tolerance * ln_k
        return value < self.min_effective_rank

    def _message(self, kind: str, record: dict, end: tuple[int, float] | None = None) -> str:
        """The warning line; `end` = (records, mean) when `finish` judged the run's last records."""
        step = record.get("step", "?")
        if kind == "plateau":
            ln_k = math.log(self.n_prototypes)
            if end is None:
                state = (
                    f"step {step}: loss/dino has stayed within {self.tolerance:.0%} of ln K = "
                    f"{ln_k:.3f} for {self.patience} logged steps (teacher entropy "
                    f"{record.get('dino/teacher_entropy', float('nan')):.2f})"
                )
            else:
                state = (
                    f"step {step}: the run ended on the plateau: loss/dino averaged {end[1]:.3f} "
                    f"over its last {end[0]} logged steps, within {self.tolerance:.0%} of ln K = "
                    f"{ln_k:.3f}; a short run may also need more steps (optim.epochs) or smaller "
                    "crops (crops.global_size, crops.local_size)"
                )
            return (
                f"{state}: the teacher's targets are uniform and the DINO loss teaches nothing. "
                "What left it on small data: heads.dino_batch_norm=true, dino.centering=centering "
                "(batches under a few hundred), views that share more (crops.n_local=2 "
                "'crops.global_scale=[0.5,1.0]') and milder intensity jitter, as the tiny-cpu "
                "preset sets them; see docs/pretrain.md, 'Learning health'"
            )
        if end is None:
            state = (
                f"step {step}: the teacher's CLS embeddings have collapsed (effective rank "
                f"{record.get('cls/effective_rank', float('nan')):.2f} < "
                f"{self.min_effective_rank} for {self.patience} logged steps)"
            )
        else:
            state = (
                f"step {step}: the run ended collapsed: the teacher's CLS effective rank averaged "
                f"{end[1]:.2f} < {self.min_effective_rank} over its last {end[0]} logged steps"
            )
        return (
            f"{state}: every image maps to nearly the same feature. Try a lower lr "
            "(optim.base_lr), a larger dino.koleo_loss_weight (0.1 -> 0.3) or "
            "dino.centering=sinkhorn_knopp; see docs/pretrain.md, 'Learning health'"
        )
