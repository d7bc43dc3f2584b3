"""Run every command line of the README's ```bash blocks on tiny data; fail if one exits non-zero.

    .venv/bin/python benchmarks/readme_commands.py [--only TEXT ...] [--list] [--keep DIR]

Each command runs as written, in a temporary folder (so relative paths such as `cache/` and
`runs/s14` land there), with these substitutions, all printed:
- `/data/...` paths of the Quick start point at a tiny phantom (`mammodino synth`, 40 FFDM images
  of 96 x 80 pixels) and at VinDr-format label files written from its labels;
- `mammodino synth` gets tiny image shapes; `--workers N` becomes 1;
- `mammodino pretrain` and `benchmarks/dbt_ablation.py` get KEY=VALUE overrides appended for a
  ViT with 32 px crops, batch 4 and 2 steps (`TINY_TRAIN`); the ablation's `--seeds` becomes 0,1
  (two seeds still give its tables over seeds);
- `make TARGET` runs as `make -n TARGET` in the repository (the targets build a venv and run the
  whole demo or suite); `bash benchmarks/*.sh` (with or without `NAME=value` settings in front)
  is checked with `bash -n` (a 40-minute run on real data); `pip install` lines are not run (they
  need the network): both are listed as not run.
Exit code 0 when every command that ran exited 0.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY_TRAIN = (
    "crops.global_size=32 crops.local_size=16 crops.n_local=2 model.patch_size=8 "
    "model.arch=vit_tiny data.batch_size=4 data.num_workers=0 heads.dino_out_dim=64 "
    "heads.ibot_out_dim=64 heads.dino_hidden_dim=64 heads.dino_bottleneck_dim=32 "
    "optim.max_steps=2 optim.epochs=2 optim.steps_per_epoch=1 optim.warmup_epochs=0 "
    "monitor.every=0 train.precision=fp32 train.checkpoint_every=2"
)
PHANTOM = "--ffdm 40 --dbt 2 --seed 0 --ffdm-shape 96 80 --dbt-shape 4 64 56"


@dataclass
class Command:
    """One README command line and what this script does with it."""

    text: str  # as written in the README (continuation lines joined)
    run: str | None  # the shell line to run, or None when not run
    cwd: str  # "tmp" or "repo"
    why: str = ""  # what was changed, or why it is not run


def readme_commands(readme: Path) -> list[str]:
    """Every command line of the ```bash blocks, continuation lines joined, comments kept."""
    commands, inside, pending = [], False, ""
    for line in readme.read_text().splitlines():
        if line.strip().startswith("```"):
            inside = line.strip() == "```bash"
            continue
        if not inside or not line.strip():
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1].rstrip() + " "
            continue
        commands.append((pending + line.strip()).strip())
        pending = ""
    return commands


def _strip_comment(text: str) -> str:
    """The command without a trailing `# ...` comment (none of ours has # inside quotes)."""
    return re.sub(r"\s+#.*$", "", text).strip()


def plan(text: str, tmp: Path) -> Command:
    """How one README line runs here (see the module docstring)."""
    line = _strip_comment(text)
    if re.match(r"^make\s", line):
        return Command(text, re.sub(r"^make\s", "make -n ", line), "repo", "dry run (make -n)")
    if "pip install" in line:
        return Command(text, None, "tmp", "not run: installs from the network")
    shell_script = re.match(r"^(?:[A-Z_][A-Z0-9_]*=\S*\s+)*bash (benchmarks/\S+)", line)
    if shell_script:  # environment settings in front (SIDE_BY_SIDE=1) change nothing here
        syntax_check = f"bash -n {shell_script.group(1)}"
        return Command(text, syntax_check, "repo", "syntax only (40 min on real data)")
    changes = []
    if "/data/" in line:
        line = line.replace("/data/dicoms", str(tmp / "phantom")).replace("/data/", f"{tmp}/")
        changes.append("/data -> tiny phantom")
    if re.search(r"--workers \d+", line):
        line = re.sub(r"--workers \d+", "--workers 1", line)
        changes.append("--workers 1")
    if line.startswith("mammodino synth"):
        line = re.sub(r"--ffdm-shape \d+ \d+", "--ffdm-shape 96 80", line)
        line = re.sub(r"--dbt-shape \d+ \d+ \d+", "--dbt-shape 4 64 56", line)
        changes.append("tiny shapes")
    if "benchmarks/dbt_ablation.py" in line and re.search(r"--seeds \S+", line):
        line = re.sub(r"--seeds \S+", "--seeds 0,1", line)
        changes.append("--seeds 0,1")
    if line.startswith("mammodino pretrain") or "benchmarks/dbt_ablation.py" in line:
        # After the line's own KEY=VALUEs: later ones win. Both parsers take flags anywhere
        # (`mammodino` parses known args, dbt_ablation.py intermixed ones).
        line = f"{line} {TINY_TRAIN}"
        changes.append("tiny training overrides")
    return Command(text, line, "tmp", ", ".join(changes))


def make_data(tmp: Path, env: dict[str, str]) -> None:
    """The tiny phantom and VinDr-format label files the Quick start's /data paths point at."""
    subprocess.run(
        ["mammodino", "synth", str(tmp / "phantom"), *PHANTOM.split(), "--workers", "1"],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    with (tmp / "phantom" / "labels.csv").open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["modality"] == "FFDM"]
    (tmp / "vindr").mkdir()
    with (tmp / "vindr" / "breast-level_annotations.csv").open("w", newline="") as fh:
        columns = ["study_id", "image_id", "laterality", "view_position", "breast_birads"]
        writer = csv.writer(fh)
        writer.writerow([*columns, "breast_density", "split"])
        for r in rows:
            image = Path(r["file"]).stem  # joins to the cached file by its stem
            row = [r["patient_id"], image, r["laterality"], r["view"], "BI-RADS 1"]
            writer.writerow([*row, f"DENSITY {r['density'].upper()}", "training"])
    (tmp / "benchmarks").symlink_to(ROOT / "benchmarks")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    parser.add_argument("--only", nargs="+", help="run only commands containing one of these")
    parser.add_argument("--list", action="store_true", help="print the plan, run nothing")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    args = parser.parse_args(argv)

    tmp = Path(args.keep or tempfile.mkdtemp(prefix="readme-commands-")).resolve()
    tmp.mkdir(parents=True, exist_ok=True)
    commands = [plan(c, tmp) for c in readme_commands(args.readme)]
    if args.only:
        commands = [c for c in commands if any(o in c.text for o in args.only)]
    if args.list:
        for c in commands:
            print(f"{c.text}\n    -> {c.run or '(not run)'}  [{c.why or 'as written'}]")
        return 0
    venv_bin = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.setdefault("OMP_NUM_THREADS", "1")
    failures = []
    try:
        make_data(tmp, env)
        for c in commands:
            if c.run is None:
                print(f"SKIP {c.text}  [{c.why}]")
                continue
            start = time.monotonic()
            cwd = ROOT if c.cwd == "repo" else tmp
            done = subprocess.run(
                ["bash", "-c", c.run], cwd=cwd, env=env, capture_output=True, text=True
            )
            status = "ok  " if done.returncode == 0 else f"FAIL({done.returncode})"
            note = f"  [{c.why}]" if c.why else ""
            print(f"{status} {time.monotonic() - start:5.1f}s {c.text}{note}", flush=True)
            if done.returncode != 0:
                failures.append(c.text)
                print(f"    ran: {c.run}\n" + (done.stdout + done.stderr)[-3000:])
    finally:
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)
    ran = sum(c.run is not None for c in commands)
    print(
        f"{ran - len(failures)}/{ran} README commands ran cleanly ({len(commands) - ran} not run)"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
