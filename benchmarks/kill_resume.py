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

# The synthetic cache and the tiny preset are shared with the tests: tests/helpers.py.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import (  # noqa: E402
    prepared_columns,
    subprocess_env,
    write_cache,
    write_preset,
    write_sources,
)


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


def run_to_end(run: Path, preset: Path | None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run (or resume) pretraining to its end; raises on a non-zero exit."""
    out = subprocess.run(
        pretrain_command(run, preset),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=subprocess_env(),
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
        env=subprocess_env(),
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
    cache = write_cache(folder / "cache", columns=prepared_columns, labels=None)
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


def prepare_kill_trial(folder: Path, kills: int, seed: int) -> dict:
    """Clean prepare vs one killed `kills` times and rerun: same manifest, no duplicate ids."""
    src = write_sources(folder / "src")
    clean = folder / "clean"
    out = subprocess.run(
        prepare_command(src, clean), capture_output=True, text=True, env=subprocess_env()
    )
    if out.returncode != 0:
        raise RuntimeError(f"prepare exit {out.returncode}: {out.stderr[-1500:]}")
    killed, rng, done = folder / "killed", random.Random(seed), 0
    for _ in range(kills):
        proc = subprocess.Popen(prepare_command(src, killed), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=subprocess_env())  # fmt: skip
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
    out = subprocess.run(
        prepare_command(src, killed), capture_output=True, text=True, env=subprocess_env()
    )
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
