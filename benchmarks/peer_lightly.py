"""Peer benchmark: lightly's DINOv2 recipe on our data, crops, masks, batch, prototypes and steps.

lightly (1.6), timm and torchvision are optional: never imported by the package or `make test`.
torchvision cannot live in the project's .venv, so they get a venv of their own (docs/peers.md):

    python3 -m venv /tmp/peer-venv
    /tmp/peer-venv/bin/pip install torch==2.14.1 torchvision==0.29.1
    /tmp/peer-venv/bin/pip install "lightly==1.6.*" timm
    /tmp/peer-venv/bin/pip install -e .          # this package (its torch requirement is met)

Train (the frozen teacher backbone -> OUT/teacher_backbone.safetensors, timm names, which
`mammodino embed --weights` reads; OUT/metrics.jsonl as our runs write it):

    /tmp/peer-venv/bin/python benchmarks/peer_lightly.py --mode train --config tiny-cpu \\
        --output OUT data.source=CACHE
    .venv/bin/mammodino embed --weights OUT/teacher_backbone.safetensors --image-size 128 \\
        --input CACHE --output FEATS

Speed (lightly's step and our production step `Trainer.train_step`, alternating on the same
batches; samples/s of both and ours / lightly, medians):

    /tmp/peer-venv/bin/python benchmarks/peer_lightly.py --mode speed --config vits14 \\
        --device cpu --precision fp32 --json speed.json data.batch_size=8

Both modes build the batches with our loader from our config: the preset, then the DINOv2-recipe
switches (crops.sampler=random masking.mode=random dbt.slice_loss_weight=0), then the KEY=VALUE
overrides given here, so crops, iBOT masks, sample order, batch and step count are exactly those
of `mammodino pretrain` with the same arguments. The lightly side follows lightly's example
`examples/pytorch/dinov2.py` (timm ViT in MaskedVisionTransformerTIMM, DINOv2ProjectionHead,
DINOLoss + IBOTPatchLoss + KoLeoLoss, AdamW, EMA teacher by update_momentum, lightly's schedule
functions) with the sizes and values of our config; where lightly makes its own choice (EMA
centering instead of Sinkhorn-Knopp, no gradient clipping, ...) it keeps it: `recipe_notes` lists
every difference and the script prints them.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import sys
import tempfile
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mammodino.config import load_config
from mammodino.data.collate import collate_pretrain

# benchmarks/ is on sys.path when this file runs as a script: one synthetic batch for both steps.
from train_step import synthetic_batch

INSTALL = (
    "lightly, timm and torchvision are needed (a separate venv, see docs/peers.md): "
    "python3 -m venv /tmp/peer-venv && /tmp/peer-venv/bin/pip install torch==2.14.1 "
    'torchvision==0.29.1 && /tmp/peer-venv/bin/pip install "lightly==1.6.*" timm && '
    "/tmp/peer-venv/bin/pip install -e ."
)
# Our config switches that give the plain DINOv2 recipe (configs/default.yaml).
DINOV2_RECIPE = ["crops.sampler=random", "masking.mode=random", "dbt.slice_loss_weight=0"]
# timm model of each of our sizes; img_size, patch_size, channels and registers are overridden.
TIMM_NAMES = {
    "vit_tiny": "vit_tiny_patch16_224",
    "vit_small": "vit_small_patch16_224",
    "vit_base": "vit_base_patch16_224",
    "vit_large": "vit_large_patch16_224",
}


def import_peer() -> dict[str, Any]:
    """lightly's and timm's pieces, or one line saying how to install them."""
    try:
        import lightly
        import timm
        from lightly.loss import DINOLoss, IBOTPatchLoss, KoLeoLoss
        from lightly.models.modules import DINOv2ProjectionHead, MaskedVisionTransformerTIMM
        from lightly.models.utils import update_drop_path_rate, update_momentum
        from lightly.utils import scheduler
    except ImportError as err:
        raise SystemExit(f"{err}. {INSTALL}") from None
    # lightly's DINOv2ProjectionHead uses the deprecated torch.nn.utils.weight_norm.
    warnings.filterwarnings("ignore", message=".*weight_norm.*deprecated", category=FutureWarning)
    return {
        "lightly": lightly,
        "timm": timm,
        "DINOLoss": DINOLoss,
        "IBOTPatchLoss": IBOTPatchLoss,
        "KoLeoLoss": KoLeoLoss,
        "DINOv2ProjectionHead": DINOv2ProjectionHead,
        "MaskedVisionTransformerTIMM": MaskedVisionTransformerTIMM,
        "update_drop_path_rate": update_drop_path_rate,
        "update_momentum": update_momentum,
        "scheduler": scheduler,
    }


def recipe_notes(cfg: Any) -> list[str]:
    """How the lightly side differs from our step on this config (printed and saved)."""
    dino, optim, model = cfg.dino, cfg.optim, cfg.model
    freeze = int(round(float(optim.freeze_last_layer_epochs) * int(optim.steps_per_epoch)))
    batch_norm = (
        "head batch norm: lightly's teacher head runs in eval mode, so its BatchNorm1d uses "
        "running statistics (at step 0 every image of a tiny-cpu batch gets the same teacher "
        "argmax); ours: the teacher's head standardises over the batch as the student's does"
    )
    bn_note = [batch_norm] if cfg.heads.dino_batch_norm else []
    return bn_note + [
        f"centering: lightly's EMA mean centering (momentum {dino.center_momentum}) in DINOLoss "
        f"and IBOTPatchLoss; ours: dino.centering={dino.centering}",
        f"gradient clipping: none (lightly's example); ours: clip_grad {optim.clip_grad} per module",
        "AdamW (torch default, not fused) over all student parameters, weight decay on every "
        "parameter (biases, norms, tokens too), no layer-wise lr decay, no patch-embed lr "
        f"multiplier; ours: layerwise_decay {optim.layerwise_decay}, patch_embed_lr_mult "
        f"{optim.patch_embed_lr_mult}, no decay on biases/norms/LayerScale/tokens, fused AdamW",
        f"last layer: lr 0 for {freeze} steps (a 'last_layer' param group, which the example's "
        "loop looks for but never creates: as written there it is never frozen); ours the same",
        f"drop path {model.drop_path_rate}: uniform over blocks (lightly's example); ours linear",
        "init: lightly's MAE init (xavier-uniform linears and patch kernel), head trunc-normal; "
        "ours: DINOv2's trunc-normal 0.02",
        "position embeddings: timm, patches only (no_embed_class; CLS and registers carry none), "
        "resampled bicubic without antialias for local crops; ours: CLS has a position",
        "head: DINOv2ProjectionHead, weight-normed last layer with a trainable weight_g; ours: "
        "weight_g fixed at 1",
        "iBOT: lightly divides the per-image masked-token means by ALL global crops (unmasked "
        "ones count as 0); ours averages over the crops that have a mask",
        "schedules: lightly.utils.scheduler (cosine_warmup_schedule, cosine_schedule, "
        "linear_warmup_schedule) with our values, lr scaled by sqrt(batch / 1024)",
        "teacher: encode() of MaskedVisionTransformerTIMM; EMA by update_momentum over the "
        "backbone (mask token included) and heads",
    ]


def build_cfg(preset: str, overrides: list[str]) -> Any:
    """Our config with the DINOv2-recipe switches, then the caller's overrides."""
    return load_config(preset=preset, overrides=[*DINOV2_RECIPE, *overrides])


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def resolve_precision(cfg: Any, device: torch.device, precision: str) -> str:
    """`auto` takes our own choice (bf16 where native, else fp32); fp16 is not offered."""
    from mammodino.train.hardware import resolve_hardware_defaults

    cfg.train.precision = precision
    cfg.train.device = device.type
    for line in resolve_hardware_defaults(cfg, device):
        print(line)
    if cfg.train.precision not in ("fp32", "bf16"):
        raise SystemExit(f"precision {cfg.train.precision}: only fp32 and bf16 are compared")
    return str(cfg.train.precision)


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


class LightlySchedules:
    """lightly's schedule functions fed with our config's values (one value per step)."""

    def __init__(self, cfg: Any, peer: dict[str, Any]) -> None:
        optim, teacher = cfg.optim, cfg.teacher
        per_epoch = int(optim.steps_per_epoch)
        self.total = int(optim.epochs) * per_epoch
        self.batch = int(cfg.data.batch_size) * int(optim.accumulate_steps)
        self.peak_lr = float(optim.base_lr) * math.sqrt(self.batch / 1024)
        self.warmup = int(round(float(optim.warmup_epochs) * per_epoch))
        self.freeze = int(round(float(optim.freeze_last_layer_epochs) * per_epoch))
        self.temp_warmup = int(round(float(teacher.warmup_temp_epochs) * per_epoch))
        self.optim, self.teacher, self.s = optim, teacher, peer["scheduler"]

    def at(self, step: int) -> dict[str, float]:
        s, optim, teacher, total = self.s, self.optim, self.teacher, self.total
        step = min(step, total - 1)
        lr = s.cosine_warmup_schedule(
            step, total, self.peak_lr, float(optim.min_lr), self.warmup, 0.0
        )
        return {
            "lr": float(lr),
            "last_layer_lr": 0.0 if step < self.freeze else float(lr),
            "wd": s.cosine_schedule(
                step, total, float(optim.weight_decay), float(optim.weight_decay_end)
            ),
            "momentum": s.cosine_schedule(
                step, total, float(teacher.momentum), float(teacher.final_momentum)
            ),
            "teacher_temp": float(
                s.linear_warmup_schedule(
                    step, self.temp_warmup, float(teacher.warmup_temp), float(teacher.temp)
                )
            ),
        }


class LightlyDINOv2(nn.Module):
    """lightly's DINOv2 example, sized by our config: student, EMA teacher, heads and losses."""

    def __init__(self, cfg: Any, peer: dict[str, Any]) -> None:
        super().__init__()
        model, heads, dino = cfg.model, cfg.heads, cfg.dino
        if model.arch not in TIMM_NAMES:
            raise SystemExit(f"model.arch {model.arch}: the peer covers {sorted(TIMM_NAMES)}")
        vit = peer["timm"].create_model(
            TIMM_NAMES[model.arch],
            pretrained=False,
            img_size=int(cfg.crops.global_size),
            patch_size=int(model.patch_size),
            in_chans=int(model.in_chans),
            num_classes=0,
            dynamic_img_size=True,  # local crops are smaller
            reg_tokens=int(model.num_register_tokens),
            no_embed_class=True,  # registers (and CLS) without a position, as DINOv2 does them
            init_values=float(model.layerscale_init) if model.layerscale_init else None,
            pos_embed="learn",
        )
        masked_vit = peer["MaskedVisionTransformerTIMM"]
        self.teacher_backbone = masked_vit(vit, antialias=False, pos_embed_initialization="skip")
        self.student_backbone = copy.deepcopy(self.teacher_backbone)
        if float(model.drop_path_rate) > 0:
            peer["update_drop_path_rate"](
                self.student_backbone.vit,
                drop_path_rate=float(model.drop_path_rate),
                mode="uniform",
            )
        head = peer["DINOv2ProjectionHead"]
        embed = vit.embed_dim
        head_args = {
            "input_dim": embed,
            "hidden_dim": int(heads.dino_hidden_dim),
            "bottleneck_dim": int(heads.dino_bottleneck_dim),
            "batch_norm": bool(heads.dino_batch_norm),
        }
        if int(heads.dino_nlayers) != 3:
            print(
                f"note: DINOv2ProjectionHead has 3 layers (heads.dino_nlayers={heads.dino_nlayers})"
            )
        self.separate_ibot = bool(heads.ibot_separate_head)
        ibot_dim = int(heads.ibot_out_dim if self.separate_ibot else heads.dino_out_dim)
        dims = {"dino": int(heads.dino_out_dim)} | (
            {"ibot": ibot_dim} if self.separate_ibot else {}
        )
        # weight_norm heads cannot be deep-copied: the example builds each head twice.
        self.student_head = nn.ModuleDict(
            {k: head(output_dim=d, **head_args) for k, d in dims.items()}
        )
        self.teacher_head = nn.ModuleDict(
            {k: head(output_dim=d, **head_args) for k, d in dims.items()}
        )
        self.teacher_head.load_state_dict(self.student_head.state_dict())
        for frozen in (self.teacher_backbone, self.teacher_head):
            frozen.requires_grad_(False)
            frozen.eval()
        momentum, temp = float(dino.center_momentum), float(dino.student_temp)
        self.dino_loss = peer["DINOLoss"](
            output_dim=int(heads.dino_out_dim), student_temp=temp, center_momentum=momentum
        )
        self.ibot_loss = peer["IBOTPatchLoss"](
            output_dim=ibot_dim, student_temp=temp, center_momentum=momentum
        )
        self.koleo_loss = peer["KoLeoLoss"]()
        self.weights = {
            "dino": float(dino.loss_weight),
            "ibot": float(cfg.ibot.loss_weight),
            "koleo": float(dino.koleo_loss_weight),
        }

    def train(self, mode: bool = True) -> LightlyDINOv2:
        super().train(mode)
        self.teacher_backbone.eval()
        self.teacher_head.eval()
        return self

    def ibot_head(self, heads: nn.ModuleDict) -> nn.Module:
        return heads["ibot"] if self.separate_ibot else heads["dino"]


class LightlyStep:
    """One optimiser step of lightly's recipe on one of our collated batches."""

    def __init__(self, cfg: Any, peer: dict[str, Any], device: torch.device, precision: str):
        self.model = LightlyDINOv2(cfg, peer).to(device)
        self.model.train()
        self.device, self.precision = device, precision
        self.update_momentum = peer["update_momentum"]
        student = [self.model.student_backbone, self.model.student_head]
        last = [p for m in self.model.student_head.values() for p in m.last_layer.parameters()]
        last_ids = {id(p) for p in last}
        rest = [p for m in student for p in m.parameters() if id(p) not in last_ids]
        betas = tuple(float(b) for b in cfg.optim.betas)
        # The example's AdamW(model.parameters()); the last layer as the 'last_layer' group its
        # loop looks for, so that freeze_last_layer_epochs holds as in ours.
        self.optimizer = torch.optim.AdamW(
            [{"params": rest}, {"params": last, "last_layer": True}], lr=0.0, betas=betas
        )

    def __call__(self, batch: dict[str, Any], values: dict[str, float], health: bool = False):
        m, dev = self.model, self.device
        n_global, n_local = int(batch["n_global"]), int(batch["n_local"])
        global_crops = batch["global_crops"].to(dev, non_blocking=True)
        local_crops = batch["local_crops"].to(dev, non_blocking=True)
        masks = batch["masks"].to(dev, non_blocking=True)
        rows = global_crops.shape[0]
        # Our iBOT masks cover the patches; lightly's cover the whole sequence (CLS, registers).
        prefix = m.student_backbone.vit.num_prefix_tokens
        token_mask = torch.cat([masks.new_zeros(rows, prefix), masks], dim=1)
        grid = global_crops.shape[-1] // int(m.student_backbone.vit.patch_embed.patch_size[0])
        temp = values["teacher_temp"]
        with autocast(dev, self.precision):
            with torch.no_grad():
                t_tokens = m.teacher_backbone.encode(global_crops)
                t_cls = t_tokens[:, 0]
                t_cls_out = m.teacher_head["dino"](t_cls)
                t_masked_out = m.ibot_head(m.teacher_head)(t_tokens[token_mask])
            s_tokens = m.student_backbone.encode(global_crops, mask=token_mask)
            s_global_cls = s_tokens[:, 0]
            s_global_out = m.student_head["dino"](s_global_cls)
            s_masked_out = m.ibot_head(m.student_head)(s_tokens[token_mask])
            s_local_out = m.student_head["dino"](m.student_backbone.encode(local_crops)[:, 0])
            signals = (
                self._health(t_cls, t_cls_out, s_global_out, s_local_out, n_global, temp)
                if health
                else {}
            )
            dino = m.dino_loss(
                teacher_out=list(t_cls_out.chunk(n_global)),
                student_out=list(torch.cat([s_global_out, s_local_out]).chunk(n_global + n_local)),
                teacher_temp=temp,
            )
            ibot = m.ibot_loss(
                teacher_out=t_masked_out,
                student_out=s_masked_out,
                mask=masks.view(rows, grid, grid),
                teacher_temp=temp,
            )
            koleo = sum(m.koleo_loss(c) for c in s_global_cls.chunk(n_global))
            terms = {"dino": dino, "ibot": ibot, "koleo": koleo}
            loss = sum(m.weights[k] * v for k, v in terms.items())
        loss.backward()
        for group in self.optimizer.param_groups:
            group["lr"] = values["last_layer_lr"] if "last_layer" in group else values["lr"]
            group["weight_decay"] = values["wd"]
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.update_momentum(m.student_backbone, m.teacher_backbone, m=values["momentum"])
        self.update_momentum(m.student_head, m.teacher_head, m=values["momentum"])
        if not health:
            return None
        out = {
            "loss": float(loss.detach()),
            **{f"loss/{k}": float(v.detach()) for k, v in terms.items()},
        }
        return out | {k: float(v) for k, v in signals.items()}

    @torch.no_grad()
    def _health(self, t_cls, t_cls_out, s_global_out, s_local_out, n_global, temp):
        """Our learning-health signals on lightly's teacher targets (its centre, before update)."""
        from mammodino.train.health import (
            cls_spread,
            normalised_entropy,
            prototypes_used,
            student_teacher_agreement,
        )

        center = self.model.dino_loss.center.reshape(1, -1)
        probs = torch.softmax((t_cls_out.float() - center) / temp, dim=-1)
        return {
            "dino/teacher_entropy": normalised_entropy(probs),
            "dino/prototypes_used": prototypes_used(probs),
            "dino/agreement": student_teacher_agreement(
                probs, s_global_out.float(), n_global, s_local_out.float()
            ),
            **cls_spread(t_cls),
        }


def loader_batches(cfg: Any):
    """Endless collated batches in the order our Trainer draws them (same sampler and seed)."""
    from mammodino.data.dataset import build_pretrain_dataset, build_sampler

    dataset = build_pretrain_dataset(cfg)
    data, seed = cfg.data, int(cfg.train.seed)
    workers = int(data.num_workers)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=int(data.batch_size),
        sampler=build_sampler(dataset, seed, 0, 0, 1, batch_size=int(data.batch_size)),
        num_workers=workers,
        collate_fn=collate_pretrain,
        drop_last=True,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )
    return iter(loader)


def save_teacher(step: LightlyStep, path: Path, cfg: Any) -> None:
    """The frozen teacher's timm ViT as a timm-style safetensors state dict."""
    from safetensors.torch import save_file

    state = {
        k: v.detach().float().cpu().contiguous()
        for k, v in step.model.teacher_backbone.vit.state_dict().items()
    }
    meta = {
        "source": "benchmarks/peer_lightly.py (lightly DINOv2 recipe, teacher backbone)",
        "timm_model": TIMM_NAMES[cfg.model.arch],
        "img_size": str(cfg.crops.global_size),
        "patch_size": str(cfg.model.patch_size),
    }
    save_file(state, str(path), metadata=meta)


def run_train(args: argparse.Namespace, cfg: Any, peer: dict[str, Any]) -> None:
    out = Path(args.output)
    if (out / "metrics.jsonl").exists():
        raise SystemExit(f"{out} already holds metrics.jsonl: give another --output")
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    precision = resolve_precision(cfg, device, args.precision)
    torch.manual_seed(int(cfg.train.seed))
    step_fn = LightlyStep(cfg, peer, device, precision)
    schedules = LightlySchedules(cfg, peer)
    total = min(schedules.total, int(cfg.optim.max_steps or schedules.total))
    log_every = max(1, int(cfg.train.log_every))
    cfg.save(out / "config.yaml")
    notes = recipe_notes(cfg)
    (out / "recipe_notes.txt").write_text("\n".join(notes) + "\n")
    k = int(cfg.heads.dino_out_dim)
    print(
        f"lightly {peer['lightly'].__version__}, timm {peer['timm'].__version__}, torch "
        f"{torch.__version__}; {TIMM_NAMES[cfg.model.arch]}-shaped ViT patch "
        f"{cfg.model.patch_size}, {cfg.crops.n_global} x {cfg.crops.global_size} + "
        f"{cfg.crops.n_local} x {cfg.crops.local_size} crops, batch {schedules.batch}, K {k}, "
        f"{total} steps, {device.type} {precision}, peak lr {schedules.peak_lr:.3g}"
    )
    for note in notes:
        print(f"  lightly recipe: {note}")
    batches = loader_batches(cfg)
    window: list[tuple[dict[str, float], float]] = []
    last: dict[str, Any] = {}
    # optim.max_minutes stops early as ours does (equal compute rather than equal steps).
    max_seconds = 60.0 * float(cfg.optim.max_minutes or math.inf)
    started = time.monotonic()
    with (out / "metrics.jsonl").open("w") as log:
        for step in range(total):
            tick = time.perf_counter()
            values = schedules.at(step)
            result = step_fn(next(batches), values, health=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            window.append((result, time.perf_counter() - tick))
            timed_out = time.monotonic() - started > max_seconds
            if (step + 1) % log_every and step + 1 != total and not timed_out:
                continue
            seconds = sum(s for _, s in window)
            record: dict[str, Any] = {"step": step + 1}
            for key in window[0][0]:
                record[key] = statistics.fmean(r[key] for r, _ in window)
            record.update(values)
            record["samples_per_s"] = schedules.batch * len(window) / seconds
            log.write(json.dumps(record) + "\n")
            log.flush()
            window, last = [], record
            print(
                f"step {step + 1}/{total} loss {record['loss']:.4f} dino "
                f"{record['loss/dino']:.4f} ibot {record['loss/ibot']:.4f} koleo "
                f"{record['loss/koleo']:.4f} teacher entropy "
                f"{record['dino/teacher_entropy']:.3f} {record['samples_per_s']:.2f} samples/s",
                flush=True,
            )
            if timed_out:
                print(f"optim.max_minutes={cfg.optim.max_minutes} reached after {step + 1} steps")
                break
    save_teacher(step_fn, out / "teacher_backbone.safetensors", cfg)
    print(
        f"loss/dino {last['loss/dino']:.3f} at the end (ln K = {math.log(k):.3f}); teacher "
        f"backbone -> {out / 'teacher_backbone.safetensors'}"
    )


def run_speed(args: argparse.Namespace, cfg: Any, peer: dict[str, Any]) -> dict[str, Any]:
    from mammodino.train.loop import Trainer

    device = resolve_device(args.device)
    precision = resolve_precision(cfg, device, args.precision)
    cfg.monitor.every = 0
    batch_size = int(cfg.data.batch_size)
    if cfg.data.source:
        source = loader_batches(cfg)
        batches = [next(source) for _ in range(args.batches)]
    else:
        batches = [synthetic_batch(cfg, seed) for seed in range(args.batches)]
    torch.manual_seed(int(cfg.train.seed))
    lightly_step = LightlyStep(cfg, peer, device, precision)
    lightly_values = LightlySchedules(cfg, peer)
    with tempfile.TemporaryDirectory() as tmp:
        ours = Trainer(cfg, tmp, dataset=[None] * batch_size, show_progress=False)
        # Mid-schedule values (last layer trainable), as benchmarks/train_step.py times ours.
        our_values = ours.schedules.at(ours.schedules.total_steps // 2)
        peer_values = lightly_values.at(lightly_values.total // 2)
        steps = {
            "lightly": lambda b: lightly_step(b, peer_values),
            "ours": lambda b: ours.train_step([b], our_values),
        }
        print(
            f"{cfg.model.arch} patch {cfg.model.patch_size}, {cfg.crops.n_global} x "
            f"{cfg.crops.global_size} + {cfg.crops.n_local} x {cfg.crops.local_size}, batch "
            f"{batch_size}, K {cfg.heads.dino_out_dim}, {device.type} {precision}, "
            f"ours {'compiled' if cfg.train.compile else 'eager'}, "
            f"{torch.get_num_threads()} threads; {args.warmup} warm-up + {args.repeats} timed "
            "steps each, alternating",
            flush=True,
        )
        times: dict[str, list[float]] = {"lightly": [], "ours": []}
        for i in range(args.warmup + args.repeats):
            for name, fn in steps.items():
                batch = batches[i % len(batches)]
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                fn(batch)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                seconds = time.perf_counter() - start
                timed = i >= args.warmup
                if timed:
                    times[name].append(seconds)
                label = "timed" if timed else "warm-up"
                print(
                    f"  {label} {name:7s} {seconds:8.3f} s  {batch_size / seconds:8.2f} samples/s"
                )
    rate = {k: batch_size / statistics.median(v) for k, v in times.items()}
    pair = [lt / ot for lt, ot in zip(times["lightly"], times["ours"], strict=True)]
    result = {
        "mode": "speed",
        "arch": cfg.model.arch,
        "patch_size": int(cfg.model.patch_size),
        "global_size": int(cfg.crops.global_size),
        "local_size": int(cfg.crops.local_size),
        "batch": batch_size,
        "prototypes": int(cfg.heads.dino_out_dim),
        "device": device.type,
        "device_name": device_name(device),
        "precision": precision,
        "compile": bool(cfg.train.compile),
        "threads": torch.get_num_threads(),
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        "repeats": args.repeats,
        "lightly_samples_per_s": rate["lightly"],
        "ours_samples_per_s": rate["ours"],
        "ratio_ours_over_lightly": statistics.median(pair),
        "lightly_seconds": times["lightly"],
        "ours_seconds": times["ours"],
        "versions": {
            "torch": torch.__version__,
            "lightly": peer["lightly"].__version__,
            "timm": peer["timm"].__version__,
        },
        "recipe_notes": recipe_notes(cfg),
    }
    print(
        f"lightly {rate['lightly']:.2f} samples/s, ours {rate['ours']:.2f} samples/s, "
        f"ours / lightly {result['ratio_ours_over_lightly']:.3f} (median of {args.repeats} "
        f"alternating pairs) on {result['device_name']}"
    )
    return result


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "cpu"


def reexec_with_malloc_tunables(cfg: Any, device: torch.device) -> None:
    """On CPU, restart with the GLIBC_TUNABLES `mammodino pretrain` sets (train.malloc_tunables):
    both recipes then run in the allocator setting of our CLI."""
    from mammodino.train.hardware import malloc_tunables

    tunables = malloc_tunables(
        cfg.train.malloc_tunables, device, os.environ.get("GLIBC_TUNABLES", "")
    )
    if tunables is None:
        return
    print("CPU: restarting with GLIBC_TUNABLES as `mammodino pretrain` sets them", flush=True)
    env = dict(os.environ, GLIBC_TUNABLES=tunables)
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[1:]),
    )
    parser.add_argument("--mode", choices=("train", "speed"), required=True)
    parser.add_argument("--config", default="tiny-cpu", help="our preset name or YAML file")
    parser.add_argument("--output", help="train: output folder")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--precision", default="auto", help="auto (as ours) | fp32 | bf16")
    parser.add_argument("--warmup", type=int, default=1, help="speed: warm-up steps each")
    parser.add_argument("--repeats", type=int, default=3, help="speed: timed steps each")
    parser.add_argument("--batches", type=int, default=2, help="speed: distinct batches cycled")
    parser.add_argument("--json", help="write the figures (and the recipe notes) here")
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE for our config")
    args = parser.parse_args(argv)
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        parser.error(f"overrides are KEY=VALUE, got {bad}")
    if args.mode == "train" and not args.output:
        parser.error("--mode train needs --output")
    peer = import_peer()
    cfg = build_cfg(args.config, args.overrides)
    if argv is None:
        reexec_with_malloc_tunables(cfg, resolve_device(args.device))
    if args.mode == "train":
        if not cfg.data.source:
            parser.error("--mode train needs data.source=CACHE (a prepared cache or image folder)")
        run_train(args, cfg, peer)
        if args.json:
            last = Path(args.output, "metrics.jsonl").read_text().splitlines()[-1]
            Path(args.json).write_text(json.dumps(json.loads(last), indent=2) + "\n")
        return
    result = run_speed(args, cfg, peer)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"figures -> {args.json}")


if __name__ == "__main__":
    sys.exit(main())
