"""End-to-end demo on built-in synthetic data, about 10 minutes on 2 CPU cores.

  mammodino demo --output demo-out          (what `make demo` runs)

Synthesises a phantom set (FFDM + DBT) -> prepares a cache -> pretrains a small ViT with every
MammoDINO part on -> pretrains the plain DINOv2 recipe for the same number of steps -> embeds
(MammoDINO, DINOv2 recipe, random init) and computes hand-crafted features -> patient-level
5-fold CV of density, lesion presence and malignancy (kNN, logreg) and lesion localization ->
writes DIR/report.html and prints a summary table. A rerun skips finished stages.
"""

from __future__ import annotations

import argparse

HELP = "end-to-end demo on synthetic phantoms: pretrain, embed, evaluate, report (~10 min CPU)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", default="demo-out", help="demo folder (rerun resumes)")
    parser.add_argument(
        "--minutes", type=float, default=2.5, help="MammoDINO pretraining wall time"
    )
    parser.add_argument("--ffdm", type=int, default=96, help="phantom FFDM images (4 per woman)")
    parser.add_argument("--dbt", type=int, default=8, help="phantom DBT volumes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from rich.console import Console

    from mammodino.report.build import build_report
    from mammodino.report.demo_pipeline import DemoSettings, run_demo
    from mammodino.report.demo_summary import summary_table

    # Wide even when piped (make demo | tee): the table carries intervals and wraps badly at 80.
    console = Console(width=None if Console().is_terminal else 140)
    start = time.monotonic()
    settings = DemoSettings(
        n_ffdm=args.ffdm,
        n_dbt=args.dbt,
        minutes=args.minutes,
        seed=args.seed,
        progress=not args.no_progress,
    )
    demo = run_demo(
        Path(args.output), settings, log=lambda m: console.print(m, markup=False, highlight=False)
    )
    tick = time.monotonic()
    report = build_report(demo.runs / "mammodino", output=demo.out / "report.html")
    demo.timings["report"] = time.monotonic() - tick
    console.print(summary_table(demo.runs / "mammodino" / "eval"))
    timing = ", ".join(f"{k} {v:.0f}s" for k, v in demo.timings.items())
    console.print(f"stage times: {timing}; total {time.monotonic() - start:.0f} s")
    console.print(f"report: {report.resolve()}")
    return 0
