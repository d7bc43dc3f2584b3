"""End-to-end demo on built-in synthetic data, about 5 minutes on 2 CPU cores (fp32).

  mammodino demo --output demo-out          (what `make demo` runs)
  mammodino demo --steps 400 --precision fp32

Synthesises a phantom set (FFDM + DBT) -> prepares a cache -> pretrains a small ViT with every
MammoDINO part on -> pretrains the plain DINOv2 recipe for the same fixed number of steps (equal
on every machine: a slower one takes longer; an ETA is printed after the first steps) -> embeds
(MammoDINO, DINOv2 recipe, random init) and computes hand-crafted features -> patient-level
5-fold CV of density, lesion presence and malignancy (kNN, logreg) and lesion localization ->
writes DIR/report.html and prints a summary table. A rerun skips finished stages.
"""

from __future__ import annotations

import argparse

from mammodino.pipelines.demo_folder import DemoSettings

HELP = "end-to-end demo on synthetic phantoms: pretrain, embed, evaluate, report (~5 min CPU)"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number of steps, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", default="demo-out", help="demo folder (rerun resumes)")
    parser.add_argument(
        "--steps",
        type=_positive_int,
        help="pretraining steps of each run (default: the demo preset's 400; the schedule is "
        "rescaled to it)",
    )
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        help="train.precision (default: the preset's: auto = bf16 only where the hardware has it)",
    )
    defaults = DemoSettings()
    parser.add_argument(
        "--ffdm", type=int, default=defaults.n_ffdm, help="phantom FFDM images (4 per woman)"
    )
    parser.add_argument("--dbt", type=int, default=defaults.n_dbt, help="phantom DBT volumes")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    import sys
    import time
    from pathlib import Path

    from rich.console import Console

    from mammodino.pipelines.demo import run_demo
    from mammodino.report.build import build_report
    from mammodino.report.demo_summary import runs_table, summary_table

    # Wide even when piped (make demo | tee): the table carries intervals and wraps badly at 80.
    console = Console(width=None if Console().is_terminal else 140)
    start = time.monotonic()
    settings = DemoSettings(
        n_ffdm=args.ffdm,
        n_dbt=args.dbt,
        steps=args.steps,
        precision=args.precision,
        seed=args.seed,
        # Bars only on a terminal: in a log file a transient bar leaves an empty line.
        progress=not args.no_progress and sys.stderr.isatty(),
    )
    demo = run_demo(
        Path(args.output), settings, log=lambda m: console.print(m, markup=False, highlight=False)
    )
    tick = time.monotonic()
    runs = [demo.runs / "mammodino", demo.runs / "dinov2-recipe"]
    report = build_report(runs[0], output=demo.out / "report.html", compare=runs[1:])
    demo.timings["report"] = time.monotonic() - tick
    console.print(runs_table(runs))
    console.print(summary_table(demo.runs / "mammodino" / "eval"))
    timing = ", ".join(f"{k} {v:.0f}s" for k, v in demo.timings.items())
    console.print(f"stage times: {timing}; total {time.monotonic() - start:.0f} s")
    console.print(f"report: {report.resolve()}")
    return 0
