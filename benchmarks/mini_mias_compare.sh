#!/usr/bin/env bash
# Real-data comparison on mini-MIAS (issue 6, acceptance 3): tiny-cpu MammoDINO vs the plain
# DINOv2 recipe at equal compute, random init and hand-crafted features; 5-fold patient-level CV.
#   bash benchmarks/mini_mias_compare.sh [WORK_DIR] [MINUTES]
# The two pretraining runs go one after the other, each with the whole machine for MINUTES (equal
# compute). Side by side they were 3x slower in total: two PyTorch thread pools on 2 cores spin
# against each other. Stages whose output exists are skipped, so a rerun resumes (a pretraining
# run cut short resumes from its last checkpoint). Needs ../shared/data/mini-mias.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-/tmp/mammodino-mias}
MINUTES=${2:-30}
MIAS=../shared/data/mini-mias
BIN=.venv/bin/mammodino
[ -d "$MIAS" ] || { echo "mini-MIAS not found at $MIAS (see ../shared/data/README.md)"; exit 2; }
mkdir -p "$WORK/runs" "$WORK/feats" "$WORK/eval"

[ -f "$WORK/cache/manifest.csv" ] || $BIN prepare "$MIAS" "$WORK/cache" --workers 2 --no-progress
[ -f "$WORK/labels.csv" ] || $BIN labels mini-mias "$MIAS" "$WORK/labels.csv"

common=(--config tiny-cpu --no-progress "data.source=$WORK/cache" "monitor.source=$WORK/cache"
        "monitor.labels=$MIAS/labels_per_image.csv" "optim.max_minutes=$MINUTES")
declare -A recipe=([mammodino]="" [dinov2-recipe]="crops.sampler=random masking.mode=random dbt.slice_loss_weight=0")
for name in mammodino dinov2-recipe; do
  run="$WORK/runs/$name"
  [ -f "$run/done" ] && continue
  resume=(); [ -f "$run/checkpoints/last.pt" ] && resume=(--resume)
  # shellcheck disable=SC2086
  $BIN pretrain "${common[@]}" --output-dir "$run" "${resume[@]}" ${recipe[$name]} > "$run.log" 2>&1
  touch "$run/done"
done

declare -A weights=([mammodino]="$WORK/runs/mammodino" [dinov2-recipe]="$WORK/runs/dinov2-recipe"
                    [random-init]="random:vit_tiny/16")
for name in mammodino dinov2-recipe random-init; do
  [ -f "$WORK/feats/$name/features.npz" ] || $BIN embed --weights "${weights[$name]}" \
    --image-size 128 --input "$WORK/cache" --output "$WORK/feats/$name" --patch-grid --no-progress
done
[ -f "$WORK/feats/hand-crafted/features.npz" ] || \
  .venv/bin/python -m mammodino.eval.handcrafted "$WORK/cache" "$WORK/feats/hand-crafted"

for name in mammodino dinov2-recipe random-init hand-crafted; do
  std=(); [ $name = hand-crafted ] && std=(--knn-standardize)
  for task in density abnormal; do
    [ -f "$WORK/eval/$name-$task/results.json" ] || $BIN eval --features "$WORK/feats/$name" \
      --labels "$WORK/labels.csv" --task $task --protocol knn logreg "${std[@]}" \
      --output "$WORK/eval/$name-$task" > "$WORK/eval/$name-$task.txt"
  done
  [ -f "$WORK/eval/$name-loc/results.json" ] || $BIN eval --features "$WORK/feats/$name" \
    --labels "$WORK/labels.csv" --localization --output "$WORK/eval/$name-loc" \
    > "$WORK/eval/$name-loc.txt"
done
.venv/bin/python benchmarks/summarize_eval.py "$WORK/eval"
