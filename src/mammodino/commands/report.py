"""Write one self-contained HTML report of a pretraining run and its evaluations.

Example:
  mammodino report runs/tiny --evals results/density results/abnormal --output report.html

Reads RUN/metrics.jsonl, RUN/config.yaml, RUN/checkpoints/last.pt and every results.json under
RUN/eval/ and the --evals folders (with their predictions.csv and heatmaps.npz). Images are
embedded as base64 PNG: the file opens anywhere without other files. See docs/report.md.
"""

from __future__ import annotations

import argparse

HELP = "one self-contained HTML report: curves, eval tables, ROC, crops, attention, PCA, heat maps"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="pretraining run folder")
    parser.add_argument(
        "--evals", nargs="+", default=[], metavar="DIR", help="folders holding results.json files"
    )
    parser.add_argument("--output", help="HTML file to write (default: RUN/report.html)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from mammodino.report.build import build_report

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    path = build_report(
        Path(args.run), [Path(e) for e in args.evals], Path(args.output) if args.output else None
    )
    print(f"report: {path}")
    return 0
