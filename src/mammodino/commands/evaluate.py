"""Evaluate frozen features on a labelled task with patient-level k-fold cross-validation.

Example (mini-MIAS density, kNN and logistic regression, 5 folds that keep left/right pairs):
  mammodino eval --features FEATS --labels ../shared/data/mini-mias/labels_per_image.csv \\
      --task tissue_FGD --protocol knn logreg --output RESULTS

Writes RESULTS/results.json (every figure: per fold, fold mean, pooled with bootstrap 95%
intervals), RESULTS/predictions.csv (out-of-fold probabilities) and prints a table.
"""

from __future__ import annotations

import argparse

HELP = "evaluate features: patient-level k-fold probes, label efficiency, localization, CIs"
PROTOCOLS = ("knn", "logreg", "linear", "finetune")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--features", required=True, help="FEATS folder or .npz (from embed)")
    parser.add_argument("--labels", required=True, help="labels CSV (see `mammodino labels`)")
    parser.add_argument("--task", help="label column to predict (e.g. density, tissue_FGD)")
    parser.add_argument(
        "--protocol", nargs="+", default=["knn", "logreg"], choices=PROTOCOLS, help="probes to run"
    )
    parser.add_argument("--output", required=True, help="RESULTS folder")
    parser.add_argument("--patient-column", default="patient_id", help="'none': image = patient")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument(
        "--label-fractions", nargs="+", type=float, default=[1.0], help="e.g. 0.01 0.1 1"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--representation",
        default="auto",
        choices=("auto", "cls", "patch_mean", "cls+patch_mean"),
        help="auto (DINOv2's protocol): kNN on CLS, logreg/linear on CLS + mean patch token",
    )
    parser.add_argument("--join", default="auto", choices=("auto", "id", "path", "breast"))
    parser.add_argument("--ordinal", default="auto", choices=("auto", "yes", "no"))
    parser.add_argument("--positive", help="positive class of a binary task (default: guessed)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap replicates")
    parser.add_argument("--k", type=int, default=20, help="kNN neighbours")
    parser.add_argument("--temperature", type=float, default=0.07, help="kNN vote temperature")
    parser.add_argument(
        "--knn-standardize", action="store_true", help="z-score features before kNN (hand-crafted)"
    )
    parser.add_argument("--C", default="auto", help="logreg C, or 'auto' (inner patient CV)")
    parser.add_argument("--epochs", type=int, default=100, help="linear probe epochs")
    parser.add_argument("--finetune-epochs", type=int, default=10, help="fine-tuning epochs")
    parser.add_argument(
        "--localization", action="store_true", help="also run the patch-token lesion probe"
    )
    parser.add_argument("--lesion-column", default="lesions", help="labels column of lesions")
    parser.add_argument("--weights", help="finetune: backbone weights (run folder or file)")
    parser.add_argument("--manifest", help="finetune: prepared cache manifest.csv")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mammodino.errors import EvaluationError
    from mammodino.eval.evaluate import EvalSettings, evaluate, print_table, write_results

    if not args.task and not args.localization:
        raise EvaluationError("nothing to evaluate: pass --task COLUMN and/or --localization")
    try:
        C = None if str(args.C).lower() == "auto" else float(args.C)
    except ValueError as err:
        raise EvaluationError(f"--C must be a number or 'auto'; got {args.C!r}") from err
    settings = EvalSettings(
        task=args.task,
        protocols=list(dict.fromkeys(args.protocol)),
        patient_column=args.patient_column,
        folds=args.folds,
        fractions=sorted(set(args.label_fractions)),
        seed=args.seed,
        representation=args.representation,
        join=args.join,
        ordinal=args.ordinal,
        positive=args.positive,
        n_boot=args.bootstrap,
        knn_k=args.k,
        knn_temperature=args.temperature,
        knn_standardise=args.knn_standardize,
        logreg_C=C,
        linear_epochs=args.epochs,
        finetune_epochs=args.finetune_epochs,
        localization=args.localization,
        lesion_column=args.lesion_column,
        weights=args.weights,
        manifest=args.manifest,
    )
    results, predictions, arrays = evaluate(Path(args.features), Path(args.labels), settings)
    out = write_results(Path(args.output), results, predictions, arrays)
    print_table(results)
    for warning in results.get("warnings", []):
        print(f"warning: {warning}")
    print(f"results: {out}")
    return 0
