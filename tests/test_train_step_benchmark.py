"""benchmarks/train_step.py: only the precisions asked for are measured (a bf16 matmul peak on a
CPU without native bf16 took over ten minutes of emulation before the fp32 figures appeared)."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from helpers import load_benchmark


@pytest.fixture
def bench_module():
    return load_benchmark("train_step")


def _child(module, monkeypatch, capsys, precisions):
    measured = []

    def fake_peak(dtype, n=2048, repeats=7):
        measured.append(dtype)
        return {torch.float32: 80e9, torch.bfloat16: 160e9}[dtype]

    def fake_bench(model, precision, repeats):
        return {"model": model, "precision": precision}

    monkeypatch.setattr(module, "matmul_peak", fake_peak)
    monkeypatch.setattr(module, "bench", fake_bench)
    module.child(argparse.Namespace(models="tiny-cpu", precisions=precisions, repeats=1))
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    return measured, lines


def test_fp32_alone_never_touches_bf16(bench_module, monkeypatch, capsys):
    measured, lines = _child(bench_module, monkeypatch, capsys, "fp32")
    assert measured == [torch.float32, torch.float32]  # before and after the steps
    assert lines == [{"model": "tiny-cpu", "precision": "fp32"}, {"peak": {"fp32": 80.0}}]


def test_both_precisions_give_both_peaks(bench_module, monkeypatch, capsys):
    measured, lines = _child(bench_module, monkeypatch, capsys, "fp32,bf16")
    assert sorted(map(str, measured)) == ["torch.bfloat16"] * 2 + ["torch.float32"] * 2
    assert [line.get("precision") for line in lines[:-1]] == ["fp32", "bf16"]
    assert lines[-1] == {"peak": {"fp32": 80.0, "bf16": 160.0}}


def test_unknown_precision_is_refused_before_any_measurement(bench_module, monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["train_step.py", "--precisions", "fp32,fp8"])
    with pytest.raises(SystemExit) as stop:
        bench_module.main()
    assert stop.value.code == 2
    assert "unknown precision fp8" in capsys.readouterr().err


def test_matmul_peak_counts_two_flops_per_multiply_add(bench_module, monkeypatch):
    clock = iter(float(t) for t in range(100))  # each matmul "takes" one second
    monkeypatch.setattr(bench_module.time, "perf_counter", lambda: next(clock))
    assert bench_module.matmul_peak(torch.float32, n=8, repeats=3) == 2 * 8**3
