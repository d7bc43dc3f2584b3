"""Kernels launched by one production training step, counted with torch.profiler.

    .venv/bin/python benchmarks/step_kernels.py [--models tiny-cpu,vits14] [--precisions fp32,bf16]
        [--device cpu|cuda] [--top 12] [--json out.json] [KEY=VALUE ...]

A step that launches thousands of small kernels is bound by launch overhead on a GPU, whatever
its FLOPs (issue 14's profile of ViT-L/14: 789 ms CPU time for 815 ms of CUDA time). This counts,
for one `Trainer.train_step` after a warm-up step on the synthetic batch of train_step.py:
- `cpu_kernels`: each aten operator that no other aten operator called (`aten::linear` counts once:
  its `addmm`), views and allocations excluded, plus the kernels inductor generated where
  `train.compile=true` (profiled with `cpp.enable_kernel_profile`); on a GPU each is at least
  one kernel launch;
- `host_syncs`: `.item()` reads, each of which waits for a GPU (`.tolist()` is not seen);
- `cuda_kernels` (CUDA only): kernels the GPU executed (torch.profiler).
The counts do not depend on the machine's load, so before/after figures compare exactly.
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile

import torch
import torch._dynamo
import torch._inductor.config
from torch.profiler import ProfilerActivity, profile

from mammodino.config import load_config
from mammodino.train.loop import Trainer

# benchmarks/ is on sys.path when this file runs as a script.
from train_step import MODELS, synthetic_batch

# Operators that make tensors or views without computing anything (no kernel runs).
METADATA_OPS = frozenset(
    "aten::" + name
    for name in [
        "as_strided",
        "view",
        "_reshape_alias",
        "reshape",
        "alias",
        "detach",
        "t",
        "transpose",
        "permute",
        "expand",
        "unsqueeze",
        "squeeze",
        "select",
        "slice",
        "narrow",
        "split",
        "unbind",
        "chunk",
        "unflatten",
        "flatten",
        "empty",
        "empty_strided",
        "empty_like",
        "resolve_conj",
        "resolve_neg",
        "lift_fresh",
        "_unsafe_view",
        "expand_as",
        "view_as",
        "numpy_T",
        "result_type",
        "is_nonzero",
    ]
)

# Operators that copy only when they must (they then call the copying operator).
MAYBE_COPY_OPS = frozenset({"aten::to", "aten::contiguous", "aten::type_as", "aten::clone"})


def kernel_names(events) -> list[str]:
    """The kernels of a profiled step: inductor's generated kernels, and each aten operator that
    no other aten operator called (a composite such as `aten::linear` counts once, as the one
    kernel it runs; calls inside a kernel are its business), views and allocations excluded."""
    names = []
    for event in events:
        if event.device_type != torch.autograd.DeviceType.CPU:
            continue
        if "cpp_fused" in event.name or "triton_" in event.name:
            names.append(event.name.split("cpp_fused")[-1].split("triton_")[-1])
            continue
        if not event.name.startswith("aten::") or event.name in METADATA_OPS:
            continue
        if event.name in MAYBE_COPY_OPS and not event.cpu_children:
            continue  # `x.to(x.dtype)`, `.contiguous()` of a contiguous tensor: nothing ran
        parent = event.cpu_parent
        while parent is not None and not parent.name.startswith("aten::"):
            parent = parent.cpu_parent
        if parent is None:
            names.append(event.name)
    return names


def count_step(model: str, precision: str, device: str, overrides: list[str], top: int) -> dict:
    """Kernel counts of one training step of a preset."""
    cfg = load_config(
        preset=model,
        overrides=[*MODELS[model], f"train.precision={precision}", f"train.device={device}",
                   *overrides],
    )  # fmt: skip
    batch = synthetic_batch(cfg)
    torch._dynamo.reset()  # compiled graphs of an earlier model would fill the recompile limit
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(cfg, out, dataset=[None] * cfg.data.batch_size, show_progress=False)
        values = trainer.schedules.at(trainer.schedules.total_steps // 2)
        trainer.train_step([batch], values)  # warm-up (and compilation, if any)
        # Inductor's generated C++ kernels show in the profile only with this switch.
        torch._inductor.config.cpp.enable_kernel_profile = True
        activities = [ProfilerActivity.CPU]
        if device == "cuda":
            activities.append(ProfilerActivity.CUDA)
        with profile(activities=activities) as prof:
            trainer.train_step([batch], values)
            if device == "cuda":
                torch.cuda.synchronize()
    events = prof.events()
    leaves = kernel_names(events)
    result = {
        "model": model,
        "precision": precision,
        "device": device,
        "batch": cfg.data.batch_size,
        "overrides": overrides,
        "cpu_kernels": len(leaves),
        "host_syncs": sum(name in ("aten::item", "aten::_local_scalar_dense") for name in leaves),
        "top_cpu_kernels": collections.Counter(leaves).most_common(top),
    }
    if device == "cuda":
        kernels = [e.name for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
        result["cuda_kernels"] = len(kernels)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny-cpu,vits14")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--top", type=int, default=12, help="most frequent kernels to list")
    parser.add_argument("--json", help="also write all figures to this file")
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE config overrides")
    args = parser.parse_args()
    rows = []
    for model in args.models.split(","):
        for precision in args.precisions.split(","):
            row = count_step(model, precision, args.device, args.overrides, args.top)
            rows.append(row)
            cuda = f", {row['cuda_kernels']} CUDA kernels" if "cuda_kernels" in row else ""
            print(f"{model:9s} {precision} batch {row['batch']:3d} {args.device}: "
                  f"{row['cpu_kernels']} CPU kernels{cuda}, {row['host_syncs']} host syncs per step")  # fmt: skip
            for name, count in row["top_cpu_kernels"]:
                print(f"    {count:6d}  {name}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)


if __name__ == "__main__":
    main()
