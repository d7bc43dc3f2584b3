"""benchmarks/gpu_throughput.py: its CPU path runs and its FLOP count and MFU are consistent."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("gpu_throughput")


def test_flop_count_matches_the_transformer_formula(bench):
    """fwd = 2 * matmul params * tokens + attention 4 * n^2 * d per layer; step = 3 x fwd."""
    step = bench.backbone_step("vit_tiny", 28, 4, torch.device("cpu"), False, torch.float32, True)
    dim, depth, batch, tokens = 64, 2, 4, 1 + 4 + (28 // 14) ** 2
    linear = 2 * depth * 12 * dim * dim * batch * tokens
    attention = 2 * depth * batch * 2 * tokens * tokens * dim
    patch_embed = 2 * 14 * 14 * dim * batch * 4  # no input gradient: 2 x fwd, not 3 x
    expected = 3 * (linear + attention) + 2 * patch_embed
    assert bench.count_flops(step) == pytest.approx(expected, rel=0.01)


def test_known_devices_use_their_datasheet_peak(bench, monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    assert bench.datasheet_peak(torch.device("cuda", 0)) == (989e12, "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 PCIe")
    assert bench.datasheet_peak(torch.device("cuda", 0))[0] == 756e12
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA L4")
    assert bench.datasheet_peak(torch.device("cuda", 0))[0] is None
    assert bench.datasheet_peak(torch.device("cpu")) == (None, "cpu")


@pytest.mark.slow
def test_cpu_tiny_run_reports_every_figure(bench, tmp_path, capsys):
    out = tmp_path / "figures.jsonl"
    args = ["--device", "cpu", "--tiny", "--settings", "vits14,vitl14-518", "--json", str(out)]
    assert bench.main(args) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["setting"], r["mode"]) for r in rows] == [
        ("vits14", "backbone"),
        ("vits14", "ssl"),
        ("vitl14-518", "backbone"),
    ]
    for row in rows:
        assert row["samples_per_s"] > 0 and row["model_tflop_per_step"] > 0
        assert row["mfu"] == pytest.approx(row["tflop_per_s"] / row["peak_tflop_per_s"])
        assert 0 < row["mfu"] < 1.5 and row["peak_source"] == "measured matmul"
        assert row["peak_memory_gib"] > 0
    assert rows[2]["global_size"] == 56 and "MFU" in capsys.readouterr().out
