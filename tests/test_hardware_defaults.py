"""Hardware-dependent defaults (issue 16): `train.precision: auto` is bf16 only where the machine
computes it natively (injected CPU flags stand in for the machine), the choice is printed in one
line and written to RUN/config.yaml; too many loader workers are capped; the progress bar shows
loss, samples/s and an ETA from the first step."""

from __future__ import annotations

from importlib import resources

import pytest
import torch
import yaml

from helpers import TINY_LOOP, write_cache
from mammodino.cli import main
from mammodino.config import load_config
from mammodino.errors import ConfigError
from mammodino.train import hardware
from mammodino.train.hardware import cap_workers, cpu_flags, resolve_hardware_defaults
from mammodino.train.hardware import resolve_precision as resolve
from mammodino.train.metrics_log import ProgressDisplay

CPU = torch.device("cpu")
AVX2_ONLY = {"fpu", "sse2", "avx", "avx2", "fma"}


def test_every_preset_defaults_to_auto():
    folder = resources.files("mammodino") / "configs"
    names = [p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml")]
    assert len(names) >= 6
    for name in names:
        assert "precision: bf16" not in (folder / f"{name}.yaml").read_text(), name
        preset = None if name == "default" else name
        assert load_config(preset=preset).train.precision == "auto", name


def test_cpu_flags_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\n")
    assert cpu_flags(info) == {"fpu", "avx2", "avx512_bf16"}
    assert cpu_flags(tmp_path / "missing") is None  # non-Linux: no cpuinfo


@pytest.mark.parametrize(
    ("flags", "expected", "why"),
    [
        (AVX2_ONLY, "fp32", "CPU without native bf16"),
        (set(), "fp32", "CPU without native bf16"),
        (AVX2_ONLY | {"avx512f", "avx512_bf16"}, "bf16", "CPU with avx512_bf16"),
        (AVX2_ONLY | {"amx_bf16", "amx_tile"}, "bf16", "CPU with amx_bf16"),
    ],
)
def test_auto_precision_follows_the_cpu(flags, expected, why):
    assert resolve("auto", CPU, flags) == (expected, f"precision: auto -> {expected} ({why})")


def test_auto_precision_without_readable_flags_is_fp32(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: None)
    line = "precision: auto -> fp32 (CPU flags unreadable on this system)"
    assert resolve("auto", CPU) == ("fp32", line)


def test_explicit_precisions_are_kept():
    assert resolve("fp32", CPU, AVX2_ONLY) == ("fp32", None)
    assert resolve("fp16", CPU, AVX2_ONLY) == ("fp16", None)
    assert resolve("bf16", CPU, {"avx512_bf16"}) == ("bf16", None)
    chosen, line = resolve("bf16", CPU, AVX2_ONLY)  # kept, with one line saying it is slow here
    assert chosen == "bf16" and "slow" in line and "train.precision=auto" in line


def test_unknown_precision_is_a_config_error():
    with pytest.raises(ConfigError, match="'bf17'.*auto"):
        resolve("bf17", CPU, AVX2_ONLY)


def test_workers_capped_by_cores():
    line = "data.num_workers: 8 -> 2 (cores available to this process)"
    assert cap_workers(8, cores=2) == (2, line)
    assert cap_workers(2, cores=2) == (2, None)
    assert cap_workers(0, cores=1) == (0, None)


def test_resolution_in_place_and_idempotent():
    cfg = load_config(preset="vits14")  # 8 workers, precision auto
    lines = resolve_hardware_defaults(cfg, CPU, flags=AVX2_ONLY, cores=2)
    assert (cfg.train.precision, cfg.data.num_workers) == ("fp32", 2)
    assert lines == [
        "precision: auto -> fp32 (CPU without native bf16)",
        "data.num_workers: 8 -> 2 (cores available to this process)",
    ]
    assert resolve_hardware_defaults(cfg, CPU, flags=AVX2_ONLY, cores=2) == []


@pytest.mark.parametrize(
    ("flags", "expected"), [(AVX2_ONLY, "fp32"), (AVX2_ONLY | {"avx512_bf16"}, "bf16")]
)
def test_pretrain_prints_and_writes_the_resolved_precision(
    tmp_path, capsys, monkeypatch, flags, expected
):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: flags)
    cache, run = write_cache(tmp_path / "cache"), tmp_path / "run"
    argv = ["pretrain", "--output-dir", str(run), "--no-progress", "--config", "tiny-cpu",
            f"data.source={cache}", *TINY_LOOP, "optim.max_steps=1", "monitor.every=0",
            "train.device=cpu", "train.precision=auto"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    why = "CPU with avx512_bf16" if expected == "bf16" else "CPU without native bf16"
    assert out[0] == f"precision: auto -> {expected} ({why})"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["precision"] == expected
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert yaml.safe_load(ckpt["config"])["train"]["precision"] == expected


def test_progress_shows_rate_and_eta_from_the_first_step():
    bar = ProgressDisplay(600, 0, enabled=False, samples_per_step=16)
    assert bar.rate_and_eta(0, 5.0) == {}  # nothing done yet: placeholders stay
    # 2 steps of 16 images in 80 s: 0.4 samples/s, 598 steps x 40 s left.
    assert bar.rate_and_eta(2, 80.0) == {"rate": "0.4", "eta": "6:38:40"}
    resumed = ProgressDisplay(600, 500, enabled=False, samples_per_step=16)
    assert resumed.rate_and_eta(501, 4.0) == {"rate": "4.0", "eta": "0:06:36"}
    with bar:
        bar.update(1, 7.25)
    fields = bar.progress.tasks[0].fields
    assert fields["loss"] == "7.2500" and fields["rate"] != "-" and fields["eta"] != "-:--:--"
    assert bar.progress.tasks[0].completed == 1


def test_malloc_tunables_only_for_cpu_runs_that_lack_them(monkeypatch):
    monkeypatch.setattr(hardware.sys, "platform", "linux")
    assert load_config().train.malloc_tunables is True  # on by default
    assert hardware.malloc_tunables(True, CPU) == hardware.MALLOC_TUNABLES
    assert hardware.malloc_tunables(True, CPU, "a=1") == f"a=1:{hardware.MALLOC_TUNABLES}"
    assert hardware.malloc_tunables(True, CPU, hardware.MALLOC_TUNABLES) is None  # already set
    assert hardware.malloc_tunables(True, torch.device("cuda")) is None
    assert hardware.malloc_tunables(False, CPU) is None  # train.malloc_tunables=false
    monkeypatch.setattr(hardware.sys, "platform", "darwin")
    assert hardware.malloc_tunables(True, CPU) is None
