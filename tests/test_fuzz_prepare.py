"""`mammodino prepare` on a folder of fuzzed files (issue 9): it finishes, every file is either in
the manifest or in errors.csv with a typed reason, and nothing crashes or prints a traceback."""

from __future__ import annotations

import csv
import random
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import load_benchmark, subprocess_env, write_sources

fuzz = load_benchmark("fuzz")  # the mutators of the longer soak


@pytest.mark.slow
@pytest.mark.multiproc
def test_prepare_accounts_for_every_fuzzed_file(tmp_path):
    seeds = fuzz.write_seeds(tmp_path / "seeds")
    src = write_sources(tmp_path / "src", count=6)  # valid breast images among the junk
    rng = random.Random(0)
    names = sorted(seeds)
    for i in range(80):
        name = rng.choice(names)
        data = fuzz.apply_ops(seeds[name].read_bytes(), fuzz.random_ops(rng, name))
        (src / f"fuzz{i:03d}{Path(name).suffix}").write_bytes(data)
    out = subprocess.run(
        [sys.executable, "-m", "mammodino", "prepare", str(src), str(tmp_path / "cache"),
         "--workers", "1", "--cache-size", "64", "--salt", "fuzz", "--no-progress"],
        capture_output=True, text=True, timeout=600, env=subprocess_env(),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    with (tmp_path / "cache" / "manifest.csv").open() as handle:
        prepared = {Path(r["source"]).name for r in csv.DictReader(handle)}
    with (tmp_path / "cache" / "errors.csv").open() as handle:
        errors = {Path(r["file"]).name: r for r in csv.DictReader(handle)}
    files = {p.name for p in src.iterdir()}
    assert prepared | set(errors) == files
    assert not prepared & set(errors)
    assert {f"case{i:02d}.png" for i in range(6)} <= prepared
    assert all(r["error"].endswith("Error") and r["reason"] for r in errors.values())
