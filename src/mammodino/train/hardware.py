"""Defaults that depend on the machine, resolved at the start of a run and written to config.yaml.

`train.precision: auto` is bf16 where the hardware computes it natively (CUDA with bf16, a CPU
with AVX-512-BF16 or AMX), else fp32: on a CPU without it, bf16 runs 10-50x slower than fp32.
`data.num_workers` above the cores this process may use is capped (torch would warn and the extra
workers only compete for the same cores). Each resolution gives the line the command prints.
CPU training also starts with glibc allocator settings (`train.malloc_tunables`). `train.device:
auto` is CUDA where present.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from mammodino.config import Config
from mammodino.errors import ConfigError

PRECISION_CHOICES = ("auto", "fp32", "bf16", "fp16")
# The autocast dtype of each resolved precision (fp32: no autocast).
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# Keep buffers above 128 KiB mapped instead of returning them to the kernel after each step: the
# 65536-wide head logits are ~100 MB and were page-faulted in again every step (REFERENCES.md).
MALLOC_TUNABLES = "glibc.malloc.mmap_threshold=4294967295:glibc.malloc.trim_threshold=4294967295"


def resolve_device(name: str, setting: str = "train.device") -> torch.device:
    """`auto` -> CUDA when present, else CPU; SETTING names the option in the error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{setting}=cuda but no CUDA device is visible; use {setting}=cpu")
    return torch.device(name)


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str] | None:
    """Feature flags of the first CPU in /proc/cpuinfo; None where it cannot be read (non-Linux)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def native_bf16(device: torch.device, flags: set[str] | None = None) -> tuple[bool, str]:
    """Whether `device` computes bf16 natively, and the reason shown to the user.

    `flags` stands in for the CPU's /proc/cpuinfo flags (tests inject a machine); None reads them.
    """
    if device.type == "cuda":
        try:
            native = torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # torch < 2.4 has no emulation argument and reports native support
            native = torch.cuda.is_bf16_supported()
        return native, "CUDA with bf16" if native else "CUDA without native bf16"
    if device.type != "cpu":
        return False, f"{device.type}: native bf16 not checked"
    flags = cpu_flags() if flags is None else flags
    if flags is None:
        return False, "CPU flags unreadable on this system"
    found = [flag for flag in CPU_BF16_FLAGS if flag in flags]
    return (True, f"CPU with {found[0]}") if found else (False, "CPU without native bf16")


def resolve_precision(
    requested: str, device: torch.device, flags: set[str] | None = None
) -> tuple[str, str | None]:
    """The precision to train in and the line to print about it (None: nothing to say)."""
    if requested not in PRECISION_CHOICES:
        raise ConfigError(f"train.precision {requested!r} not in {list(PRECISION_CHOICES)}")
    if requested not in ("auto", "bf16"):
        return requested, None
    native, why = native_bf16(device, flags)
    if requested == "auto":
        chosen = "bf16" if native else "fp32"
        return chosen, f"precision: auto -> {chosen} ({why})"
    if native:
        return requested, None
    return requested, f"precision: bf16 on a {why}: slow; train.precision=auto picks fp32 here"


def available_cores() -> int:
    """Cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cap_workers(requested: int, cores: int | None = None) -> tuple[int, str | None]:
    """`data.num_workers` capped at the available cores, and the line saying so if it was."""
    cores = available_cores() if cores is None else cores
    if requested <= cores:
        return requested, None
    return cores, f"data.num_workers: {requested} -> {cores} (cores available to this process)"


def resolve_hardware_defaults(
    cfg: Config, device: torch.device, flags: set[str] | None = None, cores: int | None = None
) -> list[str]:
    """Resolve `train.precision` and cap `data.num_workers` in `cfg` in place; the lines to print.

    A step of config resolution (before `Settings.from_config`): the resolved values are the
    ones written to RUN/config.yaml.
    """
    train, data = cfg.train, cfg.data
    train.precision, precision_line = resolve_precision(str(train.precision), device, flags)
    data.num_workers, workers_line = cap_workers(int(data.num_workers), cores)
    return [line for line in (precision_line, workers_line) if line]


def malloc_tunables(enabled: bool, device: torch.device, current: str = "") -> str | None:
    """The GLIBC_TUNABLES a CPU training process should start with (`current` plus ours), or None
    where they do not apply (not CPU, not glibc Linux, `train.malloc_tunables` off, already set).

    glibc reads them only at process start: callers re-exec, or start a child process with them.
    """
    if device.type != "cpu" or not enabled or "mmap_threshold" in current:
        return None
    if not sys.platform.startswith("linux"):
        return None
    return ":".join(filter(None, [current, MALLOC_TUNABLES]))
