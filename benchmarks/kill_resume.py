"""Kill and resume (issue 9): `mammodino pretrain` killed with SIGKILL at random moments, resumed
each time with --resume, must finish with weights equal to an uninterrupted run; `last.pt` must
load after every kill. Also `mammodino prepare` killed and rerun must give the clean manifest.

A kill lands at a seeded random moment after the run has made progress (a new metrics record),
so kills fall inside steps, data loading and checkpoint writes alike. Tiny run: ViT-Tiny/8 at
32 px on a synthetic 8-image cache, fp32, deterministic, a checkpoint every step, CPU.
The CI variant (3 kills) is tests/test_kill_resume.py.

    .venv/bin/python benchmarks/kill_resume.py                 # 10 kills
    .venv/bin/python benchmarks/kill_resume.py --kills 20 --steps 30 --seed 1
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TINY = {
    "model": {"arch": "vit_tiny", "patch_size": 8, "num_register_tokens": 1, "drop_path_rate": 0.1},
    "crops": {"global_size": 32, "local_size": 16, "n_local": 2},
    "masking": {"probability": 1.0, "min_tissue_patches": 2},
    "heads": {"dino_out_dim": 64, "ibot_out_dim": 64, "dino_hidden_dim": 32,
              "dino_bottleneck_dim": 16},
    "data": {"batch_size": 3, "num_workers": 0},
    "optim": {"epochs": 10, "steps_per_epoch": 3, "warmup_epochs": 1, "base_lr": 0.05},
    "teacher": {"warmup_temp_epochs": 1},
    "train": {"log_every": 1, "checkpoint_every": 1, "deterministic": True, "precision": "fp32",
              "device": "cpu", "malloc_tunables": False, "keep_checkpoints": 2},
}  # fmt: skip


def write_cache(folder: Path, count: int = 8) -> Path:
    """A prepared cache: uint16 images, 0/255 masks and manifest.csv (synthetic, no PHI)."""
    import cv2

    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(exist_ok=True)
    rows = []
    for i in range(count):
        rng = np.random.default_rng(i)
        h, w = 48 + 4 * (i % 3), 40
        r, c = np.mgrid[:h, :w]
        mask = ((r - h / 2) ** 2 + c**2) < (0.45 * h) ** 2
        level = 15000 if i % 2 else 40000
        image = np.where(mask, level + rng.integers(0, 8000, (h, w)), 300).astype(np.uint16)
        cv2.imwrite(str(folder / "images" / f"im{i}.png"), image)
        cv2.imwrite(str(folder / "masks" / f"im{i}.png"), (mask * 255).astype(np.uint8))
        rows.append({"id": f"id{i}", "source": f"im{i}.png", "image": f"images/im{i}.png",
                     "mask": f"masks/im{i}.png", "patient_id": f"p{i // 2}", "laterality": "L",
                     "view": "CC", "height": h, "width": w})  # fmt: skip
    with (folder / "manifest.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return folder


def write_preset(path: Path, cache: Path, steps: int) -> Path:
    """The tiny run as a YAML preset (data.source and optim.max_steps filled in)."""
    import yaml

    preset = {k: dict(v) for k, v in TINY.items()}
    preset["data"]["source"] = str(cache)
    preset["optim"]["max_steps"] = steps
    path.write_text(yaml.safe_dump(preset, sort_keys=False))
    return path


def pretrain_command(run: Path, preset: Path | None) -> list[str]:
    """`mammodino pretrain` for a fresh run (preset) or a resume (preset None)."""
    base = [
        sys.executable,
        "-m",
        "mammodino",
        "pretrain",
        "--output-dir",
        str(run),
        "--no-progress",
    ]
    return base + (["--config", str(preset)] if preset else ["--resume"])


def env() -> dict[str, str]:
    """One thread per process (fair on a shared machine; deterministic kernels anyway)."""
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")


def run_to_end(run: Path, preset: Path | None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run (or resume) pretraining to its end; raises on a non-zero exit."""
    out = subprocess.run(
        pretrain_command(run, preset), capture_output=True, text=True, timeout=timeout, env=env()
    )
    if out.returncode != 0:
        raise RuntimeError(f"pretrain exit {out.returncode}: {out.stderr[-1500:]}")
    return out


def metrics_lines(run: Path) -> int:
    path = run / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.is_file() else 0


def last_step(run: Path) -> int | None:
    """Step of RUN/checkpoints/last.pt (loaded in full, as a resume would), None if absent."""
    from mammodino.train.checkpoint import load_checkpoint

    if not (run / "checkpoints" / "last.pt").exists():
        return None
    return int(load_checkpoint(run / "checkpoints")["step"])


def kill_at_random(run: Path, preset: Path, rng: random.Random, max_wait: float) -> dict:
    """Start (or resume) the run, SIGKILL it at a random moment after it made progress."""
    fresh = last_step(run) is None
    if fresh and (run / "config.yaml").exists():
        # Killed before its first checkpoint: nothing to resume, start again (as a user would).
        (run / "config.yaml").unlink()
        (run / "metrics.jsonl").unlink(missing_ok=True)
    proc = subprocess.Popen(
        pretrain_command(run, preset if fresh else None),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env(),
    )
    seen = metrics_lines(run) if not fresh else 0
    deadline = time.monotonic() + 600
    while proc.poll() is None and metrics_lines(run) <= seen and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(rng.uniform(0.0, max_wait))
    finished = proc.poll() is not None
    if not finished:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if finished and proc.returncode != 0:
        raise RuntimeError(f"pretrain exit {proc.returncode}: {stderr[-1500:]}")
    return {"killed": not finished, "resumed": not fresh, "last_step": last_step(run)}


def final_weights(run: Path) -> dict:
    from mammodino.train.checkpoint import load_checkpoint

    payload = load_checkpoint(run / "checkpoints")
    return {"step": payload["step"], "student": payload["student"], "teacher": payload["teacher"]}


def same_weights(a: dict, b: dict) -> bool:
    import torch

    return a["step"] == b["step"] and all(
        a[part].keys() == b[part].keys()
        and all(torch.equal(a[part][k], b[part][k]) for k in a[part])
        for part in ("student", "teacher")
    )


def kill_resume_trial(folder: Path, kills: int, steps: int, seed: int, max_wait: float) -> dict:
    """Reference run, then a run killed `kills` times and resumed; the figures of the trial."""
    cache = write_cache(folder / "cache")
    preset = write_preset(folder / "tiny.yaml", cache, steps)
    run_to_end(folder / "reference", preset)
    reference = final_weights(folder / "reference")
    run, rng, events = folder / "killed", random.Random(seed), []
    while len([e for e in events if e["killed"]]) < kills:
        event = kill_at_random(run, preset, rng, max_wait)
        events.append(event)
        if not event["killed"]:
            break  # finished before the kill landed
    if last_step(run) != steps:
        run_to_end(run, None if last_step(run) is not None else preset)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps_logged = [r["step"] for r in records if not r.get("skipped")]
    return {
        "kills": sum(e["killed"] for e in events),
        "kills_before_first_checkpoint": sum(
            e["killed"] and e["last_step"] is None for e in events
        ),
        "last_loadable_after_every_kill": all(
            e["last_step"] is not None or not e["resumed"] for e in events
        ),
        "last_steps": [e["last_step"] for e in events],
        "weights_equal": same_weights(final_weights(run), reference),
        "metrics_steps_unique": steps_logged == list(range(1, steps + 1)),
        "final_step": last_step(run),
    }


def prepare_command(src: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "mammodino", "prepare", str(src), str(out), "--workers", "1",
            "--no-progress", "--salt", "kill-test", "--cache-size", "64"]  # fmt: skip


def write_sources(folder: Path, count: int = 200) -> Path:
    """Small synthetic mammogram-like PNGs (breast half-disc on the left) for prepare."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        rng = np.random.default_rng(100 + i)
        h, w = 160, 120
        r, c = np.mgrid[:h, :w]
        mask = ((r - h / 2) ** 2 + (c * 1.3) ** 2) < (0.42 * h) ** 2
        image = np.where(mask, 20000 + rng.integers(0, 20000, (h, w)), 200).astype(np.uint16)
        cv2.imwrite(str(folder / f"case{i:02d}.png"), image)
    return folder


def prepare_kill_trial(folder: Path, kills: int, seed: int) -> dict:
    """Clean prepare vs one killed `kills` times and rerun: same manifest, no duplicate ids."""
    src = write_sources(folder / "src")
    clean = folder / "clean"
    out = subprocess.run(prepare_command(src, clean), capture_output=True, text=True, env=env())
    if out.returncode != 0:
        raise RuntimeError(f"prepare exit {out.returncode}: {out.stderr[-1500:]}")
    killed, rng, done = folder / "killed", random.Random(seed), 0
    for _ in range(kills):
        proc = subprocess.Popen(prepare_command(src, killed), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=env())  # fmt: skip
        images = killed / "images"
        before = len(list(images.rglob("*.png"))) if images.is_dir() else 0
        while proc.poll() is None and (
            not images.is_dir() or len(list(images.rglob("*.png"))) <= before
        ):
            time.sleep(0.01)
        # Soon after the first new file: on a fast idle machine a later kill finds the run over.
        time.sleep(rng.uniform(0.0, 0.05))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            done += 1
        proc.wait()
    out = subprocess.run(prepare_command(src, killed), capture_output=True, text=True, env=env())
    if out.returncode != 0:
        raise RuntimeError(f"prepare rerun exit {out.returncode}: {out.stderr[-1500:]}")
    a = (clean / "manifest.csv").read_text()
    b = (killed / "manifest.csv").read_text()
    ids = [row["id"] for row in csv.DictReader(b.splitlines())]
    pixels_equal = all(
        (killed / row["image"]).read_bytes() == (clean / row["image"]).read_bytes()
        for row in csv.DictReader(a.splitlines())
    )
    return {
        "kills": done,
        "manifest_equal": a == b,
        "rows": len(ids),
        "duplicates": len(ids) - len(set(ids)),
        "images_equal": pixels_equal,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-wait", type=float, default=1.5, help="seconds after progress")
    parser.add_argument("--prepare-kills", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        started = time.monotonic()
        trial = kill_resume_trial(Path(tmp) / "pretrain", args.kills, args.steps, args.seed,
                                  args.max_wait)  # fmt: skip
        seconds = time.monotonic() - started
        prep = prepare_kill_trial(Path(tmp) / "prepare", args.prepare_kills, args.seed)
    print(f"pretrain kill-and-resume: {args.steps} steps, seed {args.seed}, {seconds:.0f} s "
          "(shared machine)")  # fmt: skip
    print(
        f"  kills survived: {trial['kills']} (of {args.kills} asked; "
        f"{trial['kills_before_first_checkpoint']} before the first checkpoint)"
    )
    print(
        f"  last.pt loadable after every kill: {trial['last_loadable_after_every_kill']} "
        f"(steps at the kills: {trial['last_steps']})"
    )
    print(
        f"  finished at step {trial['final_step']}; weights equal an uninterrupted run: "
        f"{trial['weights_equal']}; metrics steps 1..{args.steps} once each: "
        f"{trial['metrics_steps_unique']}"
    )
    print(
        f"prepare kill-and-rerun: {prep['kills']} kills; manifest equal to a clean run: "
        f"{prep['manifest_equal']} ({prep['rows']} rows, {prep['duplicates']} duplicates); "
        f"cached images equal: {prep['images_equal']}"
    )
    ok = (
        trial["weights_equal"]
        and trial["last_loadable_after_every_kill"]
        and prep["manifest_equal"]
    )
    return 0 if ok and not prep["duplicates"] else 1


if __name__ == "__main__":
    sys.exit(main())
