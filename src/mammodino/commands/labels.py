"""Convert a public data set's published label files into our labels CSV.

  mammodino labels DATASET SRC OUT.csv

DATASET: vindr-mammo, cbis-ddsm, inbreast, rsna-screening, cmmd, embed, mini-mias. SRC is the
data set's folder (or its label file). OUT.csv has one row per image: image, patient_id,
laterality, view, density, birads, malignancy, abnormal, lesions, split (see docs/datasets/).
"""

from __future__ import annotations

import argparse

HELP = "convert a data set's published labels (VinDr, CBIS-DDSM, ...) into our labels CSV"
DATASETS = ("vindr-mammo", "cbis-ddsm", "inbreast", "rsna-screening", "cmmd", "embed", "mini-mias")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", choices=DATASETS, help="which data set SRC holds")
    parser.add_argument("src", help="the data set's folder, or its label file")
    parser.add_argument("output", help="labels CSV to write")


def run(args: argparse.Namespace) -> int:
    from mammodino.labels.convert import convert_labels

    n = convert_labels(args.dataset, args.src, args.output)
    print(f"{args.dataset}: {n} rows -> {args.output}")
    return 0
