"""Training throughput of ViT-S/B/L/14 and a high-resolution ViT-L (global 518): samples/s, model
FLOP/s, MFU against the device's bf16 dense peak, and peak memory.

    .venv/bin/python benchmarks/gpu_throughput.py                      # all settings, ~3 min on H100
    .venv/bin/python benchmarks/gpu_throughput.py --device cpu --tiny  # CI-sized check, < 1 min
    options: --settings vitl14,vitl14-518 --modes backbone,ssl --checkpointing --repeats 3
             --steps 10 --json out.jsonl

Two kinds of step, both with bf16 autocast, SDPA attention and fused AdamW:
- `backbone`: the ViT alone on global crops (forward_features, a loss on CLS + patch tokens,
  backward, AdamW): the part of pretraining that scales with model size;
- `ssl`: the production MammoDINO step (train/meta_arch.py): teacher forward, student on 2 global
  + 8 local crops with iBOT masks, DINO/iBOT/KoLeo losses with 65536 prototypes, backward, per-part
  gradient clipping, AdamW and the EMA teacher update, with the preset's crop sizes and batch.
Model FLOPs are counted once per setting with torch.utils.flop_counter (matmuls, convolutions and
attention, forward and backward; elementwise work is not counted, as in the usual MFU definition).
MFU = achieved FLOP/s / bf16 dense peak (fp32 runs, the CPU default: the measured fp32 matmul): datasheet values for known devices (H100 SXM and H200
989 TFLOP/s, H100 PCIe 756, A100 312), else the bf16 matmul peak measured in the same run, which
is always printed too. Times are medians over `--repeats` runs of `--steps` steps after warm-up.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.utils import flop_counter

from mammodino.config import load_config
from mammodino.data.collate import collate_pretrain
from mammodino.models.vit import build_vit, compile_blocks
from mammodino.settings import Settings
from mammodino.train.ema import ema_update
from mammodino.train.meta_arch import MammoDINO
from mammodino.train.param_groups import build_optimizer, build_param_groups

# Datasheet bf16 dense tensor-core peaks (FLOP/s), matched by substring of the device name.
BF16_PEAKS = [("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("A100", 312e12)]
# name: (arch, global size, backbone batch, ssl preset or None)
SETTINGS: dict[str, tuple[str, int, int, str | None]] = {
    "vits14": ("vit_small", 224, 256, "vits14"),
    "vitb14": ("vit_base", 224, 128, "vitb14"),
    "vitl14": ("vit_large", 224, 128, "vitl14"),
    "vitl14-518": ("vit_large", 518, 32, None),
}
TINY_SSL = [
    "model.arch=vit_tiny",
    "model.num_register_tokens=1",
    "crops.global_size=28",
    "crops.local_size=14",
    "crops.n_local=2",
    "heads.dino_out_dim=256",
    "heads.ibot_out_dim=256",
    "heads.dino_hidden_dim=64",
    "heads.dino_bottleneck_dim=32",
]
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
aten = torch.ops.aten


def _register_cpu_attention_flops() -> None:
    """FlopCounterMode has no formula for the CPU flash-attention kernels SDPA uses on CPU."""
    fwd = aten._scaled_dot_product_flash_attention_for_cpu
    bwd = aten._scaled_dot_product_flash_attention_for_cpu_backward
    if fwd in flop_counter.flop_registry or fwd.default in flop_counter.flop_registry:
        return

    @flop_counter.register_flop_formula(fwd)
    def _fwd(query, key, value, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_flop_count(query, key, value)

    @flop_counter.register_flop_formula(bwd)
    def _bwd(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_backward_flop_count(grad_out, query, key, value)


def synchronize(device: torch.device) -> None:
    """Wait for queued device work (timings must include it)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, dtype: torch.dtype = torch.bfloat16) -> float:
    """Median FLOP/s of a large square matmul: the practical dense peak of this device."""
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    times = []
    for _ in range(8):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        synchronize(device)
        times.append((time.perf_counter() - start) / 4)
    return 2 * n**3 / statistics.median(times[2:])


def datasheet_peak(device: torch.device) -> tuple[float | None, str]:
    """(bf16 dense peak FLOP/s, device name); None when the device is not in the table."""
    if device.type != "cuda":
        return None, "cpu"
    name = torch.cuda.get_device_name(device)
    for key, peak in BF16_PEAKS:
        if key in name:
            return peak, name
    return None, name


def backbone_step(
    arch: str,
    size: int,
    batch: int,
    device: torch.device,
    checkpointing: bool,
    dtype: torch.dtype,
    tiny: bool = False,
    compiled: bool = False,
) -> Callable[[], None]:
    """A ViT training step on random 1-channel global crops."""
    kwargs = {"patch_size": 14, "in_chans": 1, "num_register_tokens": 4, "drop_path_rate": 0.0}
    if tiny:
        kwargs.update(embed_dim=64, depth=2, num_heads=2)
    model = build_vit(arch, img_size=size, activation_checkpointing=checkpointing, **kwargs)
    model = model.to(device).train()
    if compiled:  # as train.compile does it
        compile_blocks(model)
    fused = device.type in ("cuda", "cpu")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.04, fused=fused)
    x = torch.rand(batch, 1, size, size, device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            out = model.forward_features(x)
            loss = out["x_norm_clstoken"].float().square().mean()
            loss = loss + out["x_norm_patchtokens"].float().square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def synthetic_batch(cfg: Any, batch: int, device: torch.device) -> dict[str, Any]:
    """A collated pretraining batch of random crops with ~30% of each global crop's tokens masked."""
    crops, patch = cfg["crops"], int(cfg["model"]["patch_size"])
    g, loc = int(crops["global_size"]), int(crops["local_size"])
    n_tokens = (g // patch) ** 2
    gen = torch.Generator().manual_seed(0)
    samples = [
        {
            "global_crops": torch.rand(2, 1, g, g, generator=gen),
            "local_crops": torch.rand(int(crops["n_local"]), 1, loc, loc, generator=gen),
            "global_patch_tissue": torch.ones(2, g // patch, g // patch),
            "masks": torch.rand(2, n_tokens, generator=gen) < 0.3,
            "index": i,
        }
        for i in range(batch)
    ]
    out = collate_pretrain(samples)
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in out.items()}


def ssl_step(
    preset: str,
    batch: int | None,
    device: torch.device,
    checkpointing: bool,
    dtype: torch.dtype,
    tiny: bool,
    compiled: bool = False,
) -> tuple[Callable[[], None], int]:
    """The production MammoDINO step of a preset (teacher, student, losses, AdamW, EMA)."""
    overrides = [f"distributed.activation_checkpointing={str(checkpointing).lower()}"]
    cfg = load_config(preset=preset, overrides=overrides + (TINY_SSL if tiny else []))
    batch = batch or int(cfg["data"]["batch_size"])
    model = MammoDINO(cfg).to(device).train()
    if compiled:
        model.compile_blocks()
    optim = Settings.from_config(cfg).optim
    opt = build_optimizer(build_param_groups(model.student, optim, model.depth), optim.betas)
    for group in opt.param_groups:
        group["lr"], group["weight_decay"] = 1e-4, 0.04
    data = synthetic_batch(cfg, batch, device)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = model(data, teacher_temp=0.07)["loss"]
        loss.backward()
        for part in model.student.values():
            torch.nn.utils.clip_grad_norm_(part.parameters(), 3.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema_update(model.student, model.teacher, 0.994)

    return step, batch


def count_flops(step: Callable[[], None]) -> int:
    """Model FLOPs of one step (forward and backward)."""
    _register_cpu_attention_flops()
    counter = flop_counter.FlopCounterMode(display=False)
    with counter:
        step()
    return counter.get_total_flops()


def time_steps(step: Callable[[], None], device: torch.device, steps: int, repeats: int) -> float:
    """Median seconds per step over `repeats` runs of `steps` steps, after 2 warm-up steps."""
    for _ in range(2):
        step()
    runs = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        synchronize(device)
        runs.append((time.perf_counter() - start) / steps)
    return statistics.median(runs)


def peak_memory_gib(device: torch.device) -> float:
    """Peak device memory since the last reset (CUDA), else the process's peak resident memory."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run_setting(name: str, mode: str, args: argparse.Namespace, device: torch.device) -> dict:
    """Measure one (setting, mode); halves the batch on out-of-memory."""
    arch, size, batch, preset = SETTINGS[name]
    if args.tiny:
        arch, size, batch = "vit_tiny", 56 if size > 224 else 28, 4
    if mode == "ssl" and (preset is None or (args.tiny and name != "vits14")):
        return {}  # --tiny: one SSL step check is enough
    ssl_batch = 2 if args.tiny else args.ssl_batch
    while True:
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        try:
            if mode == "backbone":
                step = backbone_step(
                    arch, size, batch, device, args.checkpointing, args.dtype, args.tiny,
                    args.compile,
                )  # fmt: skip
            else:
                step, batch = ssl_step(
                    preset, ssl_batch, device, args.checkpointing, args.dtype, args.tiny,
                    args.compile,
                )  # fmt: skip
            flops = count_flops(step)
            seconds = time_steps(step, device, args.steps, args.repeats)
            break
        except torch.cuda.OutOfMemoryError:
            step = None
            if batch <= 1:
                raise
            batch //= 2
            ssl_batch = batch
            print(f"  {name}/{mode}: out of memory, retrying with batch {batch}", file=sys.stderr)
    return {
        "setting": name,
        "mode": mode,
        "arch": arch,
        "global_size": size,
        "batch": batch,
        "checkpointing": args.checkpointing,
        "compile": args.compile,
        "step_s": seconds,
        "samples_per_s": batch / seconds,
        "model_tflop_per_step": flops / 1e12,
        "tflop_per_s": flops / seconds / 1e12,
        "peak_memory_gib": peak_memory_gib(device),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--modes", default="backbone,ssl")
    parser.add_argument(
        "--tiny", action="store_true", help="tiny ViTs at 28-56 px, 2 steps (CPU check)"
    )
    parser.add_argument("--checkpointing", action="store_true", help="activation checkpointing")
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile each block (as train.compile)"
    )
    parser.add_argument("--ssl-batch", type=int, default=None, help="default: the preset's")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--dtype", choices=DTYPES, default=None, help="default: bf16 on CUDA, else fp32"
    )
    parser.add_argument("--json", default=None, help="also append one JSON line per figure")
    args = parser.parse_args(argv)
    if args.tiny:  # a check that every path runs, not a measurement
        args.steps, args.repeats = min(args.steps, 2), 1
    device = torch.device(args.device)
    args.dtype = DTYPES[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    sheet, name = datasheet_peak(device)
    sheet = sheet if args.dtype == torch.bfloat16 else None
    measured = matmul_peak(device, args.dtype)
    peak, source = (sheet, "datasheet") if sheet else (measured, "measured matmul")
    kind = "bf16" if args.dtype == torch.bfloat16 else "fp32"
    print(f"device: {name} | torch {torch.__version__} | {kind} peak {peak / 1e12:.3g} TFLOP/s "
          f"({source}); measured {kind} matmul {measured / 1e12:.3g} TFLOP/s")  # fmt: skip
    if device.type == "cpu":
        print("note: CPU figures on a shared machine vary with the load of other processes")
    header = f"{'setting':<11} {'mode':<8} {'batch':>5} {'samples/s':>10} {'TFLOP/s':>8} "
    print(header + f"{'MFU':>6} {'of matmul':>9} {'peak GiB':>8}")
    for setting in args.settings.split(","):
        for mode in args.modes.split(","):
            row = run_setting(setting, mode, args, device)
            if not row:
                continue
            row.update(
                device=name,
                peak_tflop_per_s=peak / 1e12,
                peak_source=source,
                mfu=row["tflop_per_s"] * 1e12 / peak,
                of_measured_matmul=row["tflop_per_s"] * 1e12 / measured,
                torch=torch.__version__,
            )
            print(f"{setting:<11} {mode:<8} {row['batch']:>5} {row['samples_per_s']:>10.1f} "
                  f"{row['tflop_per_s']:>8.3g} {row['mfu']:>6.1%} {row['of_measured_matmul']:>9.1%} "
                  f"{row['peak_memory_gib']:>8.2f}", flush=True)  # fmt: skip
            if args.json:
                with open(args.json, "a") as handle:
                    handle.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
