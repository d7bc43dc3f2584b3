"""Write one self-contained HTML report of a pretraining run and its evaluations.

Example:
  mammodino report runs/tiny --evals results/density results/abnormal --output report.html

Reads RUN/metrics.jsonl, RUN/config.yaml, RUN/checkpoints/last.pt and every results.json under
RUN/eval/ and the --evals folders (with their predictions.csv and heatmaps.npz). Images are
embedded as base64 PNG: the file opens anywhere without other files. See docs/report.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "one self-contained HTML report: curves, eval tables, ROC, crops, attention, PCA, heat maps"
RUN_MARKERS = ("metrics.jsonl", "checkpoints/")  # what pretrain writes into every run folder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="pretraining run folder")
    parser.add_argument(
        "--evals", nargs="+", default=[], metavar="DIR", help="folders holding results.json files"
    )
    parser.add_argument("--output", help="HTML file to write (default: RUN/report.html)")


def check_run_folder(run: Path) -> None:
    """Raise unless `run` is a folder `mammodino pretrain` wrote (metrics.jsonl or checkpoints/)."""
    from mammodino.errors import MammodinoError

    if not run.is_dir():
        raise MammodinoError(f"{run}: no such folder; give the run folder of pretrain --output-dir")
    if not any((run / name).exists() for name in RUN_MARKERS):
        from mammodino.preprocess.cache import MANIFEST_NAME, is_prepared_cache

        cache = f" (it holds {MANIFEST_NAME}: a prepared cache)" if is_prepared_cache(run) else ""
        raise MammodinoError(
            f"{run}: not a pretraining run: no {' or '.join(RUN_MARKERS)} in it{cache}; "
            "give the folder of pretrain --output-dir"
        )


def run(args: argparse.Namespace) -> int:
    check_run_folder(Path(args.run))  # before torch: a wrong folder is one line at once

    import torch

    from mammodino.report.build import build_report

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    path = build_report(
        Path(args.run), [Path(e) for e in args.evals], Path(args.output) if args.output else None
    )
    print(f"report: {path}")
    return 0
