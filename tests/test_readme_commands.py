"""Acceptance 3 of issue 16: every command line of the README's bash blocks runs as written
(benchmarks/readme_commands.py substitutes tiny data, see its docstring)."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import load_benchmark

ROOT = Path(__file__).resolve().parents[1]


def test_every_readme_command_is_run_or_says_why_not(tmp_path):
    rc = load_benchmark("readme_commands")
    lines = rc.readme_commands(ROOT / "README.md")
    plans = [rc.plan(line, tmp_path) for line in lines]
    assert len(plans) >= 15
    not_run = [p for p in plans if p.run is None]
    assert all(p.text.startswith("pip install") for p in not_run)  # network installs only
    assert len(not_run) <= 2
    # Continuation lines are joined; /data paths point at the tiny data; no GPU preset runs big.
    ablation = next(p for p in plans if "dbt_ablation.py" in p.text)
    assert " WORK --run " in ablation.run and ablation.run.endswith("train.checkpoint_every=2")
    assert "--seeds 0,1 " in ablation.run and "--seeds 0,1 " not in ablation.text
    assert not any("/data/" in (p.run or "") for p in plans)
    vits = next(p for p in plans if "--config vits14" in p.text)
    assert "# one GPU" in vits.text and "crops.global_size=32" in vits.run
    assert any("--config tiny-cpu" in p.text for p in plans)  # the CPU alternative
    # A real-data script stays a syntax check with settings in front of it, as written.
    prefixed = rc.plan(
        "SIDE_BY_SIDE=1 X_Y=a bash benchmarks/mini_mias_compare.sh /tmp/w 30", tmp_path
    )
    assert prefixed.run == "bash -n benchmarks/mini_mias_compare.sh" and prefixed.cwd == "repo"
    assert rc.plan("echo SIDE_BY_SIDE=1 bash benchmarks/x.sh", tmp_path).run.startswith("echo ")


def test_readme_names_every_required_option_of_export():
    text = (ROOT / "README.md").read_text()
    assert "mammodino export RUN --format hf\\|timm\\|safetensors --output DIR" in text


@pytest.mark.slow
def test_readme_commands_run_on_tiny_data(capsys):
    rc = load_benchmark("readme_commands")
    assert rc.main([]) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    assert "FAIL" not in out and "README commands ran cleanly" in out
