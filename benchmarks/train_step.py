"""Seconds per training step, samples/s and model FLOP/s against this machine's matmul peak.

    .venv/bin/python benchmarks/train_step.py [--repeats 3] [--models tiny-cpu,vits14]
        [--precisions fp32,bf16] [--malloc both|on|off]

For each model and precision it times the production step (`Trainer.train_step`: teacher,
student, DINO + iBOT + KoLeo losses, backward, clipping, fused AdamW, EMA) on a fixed synthetic
batch, counts the step's model FLOPs with torch's FlopCounterMode (matmuls, convolutions and
attention, forward and backward), and divides the achieved FLOP/s by the matmul peak measured in
the same process (a large torch.matmul in each precision asked for). Models: `tiny-cpu` (its
preset batch) and `vits14` (ViT-S/14, 2 x 224 + 8 x 98 crops, 65536 prototypes, batch 8). Each
configuration runs in a child process twice: with glibc's default allocator settings and with
the GLIBC_TUNABLES that keep large buffers mapped (commands/pretrain.py sets them for CPU
training). Medians of `--repeats` timed steps after one warm-up step. Target: ViT-S fp32 >= 60%
of the fp32 peak.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from torch.utils import flop_counter

from mammodino.config import load_config
from mammodino.data.collate import collate_pretrain
from mammodino.train.hardware import MALLOC_TUNABLES, PRECISIONS
from mammodino.train.loop import Trainer

MODELS = {
    "tiny-cpu": ["monitor.every=0"],
    "vits14": ["data.batch_size=8", "monitor.every=0"],
    "vitl14": ["data.batch_size=32", "monitor.every=0"],  # GPU only (benchmarks/gpu_speed.sh)
}
aten = torch.ops.aten
# Matmul dtype of each precision the benchmark compares (fp32: no autocast, plain float32).
DTYPES = {p: PRECISIONS[p] or torch.float32 for p in ("fp32", "bf16")}


def _sdpa_cpu_flop(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query, key, value)


def _sdpa_cpu_backward_flop(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_backward_flop_count(grad_out, query, key, value)


# FlopCounterMode has no formula for the CPU flash-attention kernels SDPA dispatches to here.
# Registered once per process: torch refuses a second registration (a test loads this twice).
for _op, _formula in (
    (aten._scaled_dot_product_flash_attention_for_cpu, _sdpa_cpu_flop),
    (aten._scaled_dot_product_flash_attention_for_cpu_backward, _sdpa_cpu_backward_flop),
):
    if _op not in flop_counter.flop_registry:
        flop_counter.register_flop_formula(_op)(_formula)


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 7) -> float:
    """Median FLOP/s of an n x n matmul in `dtype`."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.matmul(a, b)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times)


def synthetic_batch(cfg, seed: int = 0) -> dict:
    """A collated batch of the config's shapes: random crops, DINOv2-like mask ratios."""
    gen = torch.Generator().manual_seed(seed)
    crops, masking = cfg.crops, cfg.masking
    g, loc, p = crops.global_size, crops.local_size, cfg.model.patch_size
    n_tokens = (g // p) ** 2
    samples = []
    for index in range(cfg.data.batch_size):
        masks = torch.zeros(crops.n_global, n_tokens, dtype=torch.bool)
        for crop in range(crops.n_global):
            if torch.rand((), generator=gen) < masking.probability:
                ratio = float(torch.empty(()).uniform_(*masking.ratio, generator=gen))
                masks[crop, torch.randperm(n_tokens, generator=gen)[: int(ratio * n_tokens)]] = True
        samples.append({
            "global_crops": torch.rand(crops.n_global, 1, g, g, generator=gen),
            "local_crops": torch.rand(crops.n_local, 1, loc, loc, generator=gen),
            "global_patch_tissue": torch.ones(crops.n_global, g // p, g // p),
            "masks": masks,
            "index": index,
        })  # fmt: skip
    return collate_pretrain(samples)


def bench(model: str, precision: str, repeats: int) -> dict:
    """Time and count one configuration's training step."""
    cfg = load_config(preset=model, overrides=[*MODELS[model], f"train.precision={precision}"])
    batch = synthetic_batch(cfg)
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(cfg, out, dataset=[None] * cfg.data.batch_size, show_progress=False)
        values = trainer.schedules.at(trainer.schedules.total_steps // 2)
        trainer.train_step([batch], values)  # warm-up: allocations, kernel selection
        with flop_counter.FlopCounterMode(display=False) as counter:
            trainer.train_step([batch], values)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            trainer.train_step([batch], values)
            times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    flops = counter.get_total_flops()
    return {
        "model": model,
        "precision": precision,
        "batch": cfg.data.batch_size,
        "s_per_step": seconds,
        "samples_per_s": cfg.data.batch_size / seconds,
        "gflop_per_step": flops / 1e9,
        "gflop_per_s": flops / seconds / 1e9,
    }


def child(args: argparse.Namespace) -> None:
    """Measure in this process (its allocator settings fixed at start) and print JSON lines."""
    precisions = args.precisions.split(",")
    # Only the peaks asked for: without native bf16 (AVX2) the bf16 peak ran over ten minutes.
    peaks = {p: [matmul_peak(DTYPES[p])] for p in precisions}
    for model in args.models.split(","):
        for precision in precisions:
            result = bench(model, precision, args.repeats)
            print(json.dumps(result), flush=True)
    for precision, values in peaks.items():
        values.append(matmul_peak(DTYPES[precision]))
    print(json.dumps({"peak": {k: statistics.median(v) / 1e9 for k, v in peaks.items()}}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default="tiny-cpu,vits14")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--malloc", choices=("both", "on", "off"), default="both")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    unknown = set(args.precisions.split(",")) - DTYPES.keys()
    if unknown:
        parser.error(f"unknown precision {', '.join(sorted(unknown))} (known: fp32, bf16)")
    if args.child:
        child(args)
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs "
          "(shared machine: other jobs run at the same time; figures are noisy)")  # fmt: skip
    variants = {"off": "", "on": MALLOC_TUNABLES}
    chosen = variants if args.malloc == "both" else {args.malloc: variants[args.malloc]}
    baseline = {}
    for name, tunables in chosen.items():
        env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
        if tunables:
            env["GLIBC_TUNABLES"] = tunables
        command = [sys.executable, __file__, "--child", *sys.argv[1:]]
        rows = []
        with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True) as child_proc:
            for line in child_proc.stdout:  # show each figure as it comes: steps can be slow here
                if line.startswith("{"):
                    rows.append(json.loads(line))
                    print(f"  [{name}] {line.strip()}", flush=True)
        if child_proc.returncode:
            raise SystemExit(f"benchmark child failed with exit code {child_proc.returncode}")
        peak = rows[-1]["peak"]
        peaks = ", ".join(f"{p} {value:.0f} GFLOP/s" for p, value in peak.items())
        print(f"\nmalloc tunables {name}: matmul peak {peaks}")
        for row in rows[:-1]:
            key = (row["model"], row["precision"])
            ratio = row["gflop_per_s"] / peak[row["precision"]]
            rate = row["samples_per_s"]
            speedup = f"  x{rate / baseline[key]:.2f} samples/s vs off" if key in baseline else ""
            baseline.setdefault(key, rate)
            print(
                f"  {row['model']:9s} {row['precision']} batch {row['batch']:3d}: "
                f"{row['s_per_step']:7.3f} s/step {row['samples_per_s']:7.2f} samples/s "
                f"{row['gflop_per_step']:8.1f} GFLOP/step {row['gflop_per_s']:6.1f} GFLOP/s "
                f"= {ratio:5.1%} of {row['precision']} peak{speedup}"
            )


if __name__ == "__main__":
    main()
