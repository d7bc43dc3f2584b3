#!/usr/bin/env bash
# Real-data comparison on mini-MIAS (issue 13, acceptance 1): tiny-cpu MammoDINO vs the plain
# DINOv2 recipe at equal compute, random init and hand-crafted features; 5-fold patient-level CV.
#   bash benchmarks/mini_mias_compare.sh [WORK_DIR] [MINUTES] [SEEDS] [CACHE] [OVERRIDES] [RECIPES]
# Both pretraining runs make the same number of steps (tiny-cpu: 1200) with the same budget of
# MINUTES each (a run that MINUTES cuts short is named before the tables). The runs go one after
# the other, each with every core (PyTorch's threads, tiny-cpu's loader worker): on a 2-core AVX2
# EPYC a step took 1.45 s on both cores against 2.61 s pinned to one, so a run reaches its 1200
# steps in about 30 minutes there (a 2-core AMX Xeon, bf16: 0.77 s, 16 minutes). SIDE_BY_SIDE=1
# runs two at a time instead, each pinned to its own core with one thread and no loader worker:
# more steps per hour over many seeds, fewer per run (unpinned, two PyTorch thread pools spin
# against each other, ~3x slower). PARALLEL=N runs N jobs at a time at each stage (pretrainings,
# embeddings, evaluations), each with one PyTorch thread: for a GPU machine with many cores, where
# pretraining and embedding use the GPU (one H200 with 16 cores ran eight 1200-step runs at a time,
# 141-156 s each with the online monitor off). A job that fails lets the others of its stage
# finish, then stops the script.
# Stages whose output exists are skipped, so a rerun resumes (a pretraining run cut short resumes
# from its last checkpoint). Features of a peer's run in WORK/feats/NAME (benchmarks/peer_lightly.py)
# are evaluated with the same probes. SEEDS (default "0") repeats both pretrainings with each
# train.seed (runs of seed N > 0 are named RECIPE-seedN); with several seeds two more tables give
# each recipe's mean and standard deviation over seeds and MammoDINO minus the DINOv2 recipe paired
# by seed, with a 95% t interval. CACHE: crops (default: `prepare` crops each image to its breast;
# mini-MIAS cache images are then 76% breast) or whole (`prepare --no-crop`: whole images, 36%
# breast, the background the tissue sampler is for); one WORK holds one kind, and a WORK whose
# cache is of the other kind is refused. OVERRIDES (one string of key=value settings, e.g.
# "optim.min_lr=2e-4") go to both recipes' pretraining, so a setting is compared at equal compute;
# a WORK keeps the runs it has, so give each setting its own WORK. RECIPES (default "mammodino
# dinov2-recipe") may add the ablations mammodino-random-crops (MammoDINO with random crops, tissue
# masking kept) and mammodino-random-masking (tissue crops, random masking): give the same WORK,
# OVERRIDES and SEEDS as the comparison they belong to, and the tables pair each against mammodino.
# INTENSITY=none prepares the cache as read, as every run before 2026-12-04 (default: dataset,
# `prepare`'s own; docs/prepare.md, "Intensity"); a WORK keeps the cache it has.
# Needs ../shared/data/mini-mias.
set -euo pipefail
{  # read whole before it runs: a file edited or pulled mid-run cannot change the run
cd "$(dirname "$0")/.."
WORK=${1:-/tmp/mammodino-mias}
MINUTES=${2:-30}
SEEDS=${3:-0}
CACHE=${4:-crops}
read -r -a overrides <<< "${5:-}"
MIAS=../shared/data/mini-mias
BIN=.venv/bin/mammodino
[ -d "$MIAS" ] || { echo "mini-MIAS not found at $MIAS (see ../shared/data/README.md)"; exit 2; }
mkdir -p "$WORK/runs" "$WORK/feats" "$WORK/eval"

case $CACHE in
  crops) crop=() ;;
  whole) crop=(--no-crop) ;;
  *) echo "CACHE must be crops or whole, got '$CACHE'"; exit 2 ;;
esac
declare -A recipe=([mammodino]="" [dinov2-recipe]="crops.sampler=random masking.mode=random dbt.slice_loss_weight=0"
                   [mammodino-random-crops]="crops.sampler=random"
                   [mammodino-random-masking]="masking.mode=random")
parallel=${PARALLEL:-1}
[[ $parallel =~ ^[1-9][0-9]*$ ]] || { echo "PARALLEL must be a positive number, got '$parallel'"; exit 2; }
read -r -a recipes <<< "${6:-mammodino dinov2-recipe}"
for name in "${recipes[@]}"; do
  [ -n "${recipe[$name]+set}" ] || { echo "unknown recipe '$name' (known: ${!recipe[*]})"; exit 2; }
done
[ -f "$WORK/cache/manifest.csv" ] || \
  $BIN prepare "$MIAS" "$WORK/cache" --workers 2 --no-progress "${crop[@]}" \
    --intensity "${INTENSITY:-dataset}"
# The cache's kind from its manifest (whole: every crop box is the whole image), whatever made it.
.venv/bin/python - "$WORK/cache" "$CACHE" <<'PY'
import statistics, sys
from mammodino.preprocess.cache import read_manifest
from mammodino.preprocess.geometry import CacheGeometry
rows = read_manifest(sys.argv[1])
boxes = [CacheGeometry.from_row(r) for r in rows]
whole = all((g.crop_x0, g.crop_y0, g.crop_x1, g.crop_y1) == (0, 0, g.width, g.height) for g in boxes)
kind = "whole" if whole else "crops"
breast = statistics.median(float(r["mask_fraction"]) for r in rows)
print(f"cache: {len(rows)} images, {kind}, breast {breast:.0%} of the pixels (median)")
if kind != sys.argv[2]:
    sys.exit(f"{sys.argv[1]} holds {kind}, not {sys.argv[2]}: use another WORK_DIR")
PY
[ -f "$WORK/labels.csv" ] || $BIN labels mini-mias "$MIAS" "$WORK/labels.csv"

common=(--config tiny-cpu --no-progress "data.source=$WORK/cache" "monitor.source=$WORK/cache"
        "monitor.labels=$MIAS/labels_per_image.csv" "optim.max_minutes=$MINUTES")
side_by_side=${SIDE_BY_SIDE:-0}
[ "$(nproc)" -ge 2 ] || side_by_side=0
[ "$side_by_side" = 1 ] && [ "$parallel" -gt 1 ] && { echo "give SIDE_BY_SIDE=1 or PARALLEL, not both"; exit 2; }
pids=()
spawn() {  # COMMAND...: run it, in the background when PARALLEL > 1 (at most PARALLEL at a time)
  if [ "$parallel" = 1 ]; then "$@"; return; fi
  (export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1; "$@") & pids+=($!)
  while [ "$(jobs -rp | wc -l)" -ge "$parallel" ]; do wait -n || true; done
}
drain() {  # wait for the stage's background jobs; stop the script if one of them failed
  local pid failed=0
  for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
  pids=()
  [ "$failed" = 0 ] || { echo "a job failed: see its log ($WORK/runs/*.log, $WORK/eval/*.txt)"; exit 1; }
}
run_name() { [ "$2" = 0 ] && echo "$1" || echo "$1-seed$2"; }  # RECIPE SEED
pretrain() {  # RECIPE SEED CORE
  local name=$1 seed=$2 core=$3 pin=() workers=()
  local run="$WORK/runs/$(run_name "$name" "$seed")"
  [ -f "$run/done" ] && return 0
  local resume=(); [ -f "$run/checkpoints/last.pt" ] && resume=(--resume)
  [ "$side_by_side" = 1 ] && pin=(taskset -c "$core" env OMP_NUM_THREADS=1) && workers=(data.num_workers=0)
  # shellcheck disable=SC2086
  "${pin[@]}" $BIN pretrain "${common[@]}" --output-dir "$run" "${resume[@]}" ${recipe[$name]} \
    "${workers[@]}" "train.seed=$seed" "${overrides[@]}" > "$run.log" 2>&1
  touch "$run/done"
}
for seed in $SEEDS; do
  if [ "$side_by_side" = 1 ]; then  # two recipes at a time, one core each
    for ((i = 0; i < ${#recipes[@]}; i += 2)); do
      pretrain "${recipes[i]}" "$seed" 0 & first=$!
      [ $((i + 1)) -lt ${#recipes[@]} ] && pretrain "${recipes[i + 1]}" "$seed" 1
      wait $first
    done
  else
    for name in "${recipes[@]}"; do spawn pretrain "$name" "$seed" 0; done
  fi
done
drain
# A run that MINUTES cut short is not the schedule's result (an AVX2-only CPU trains fp32 at about
# half the bf16 speed of an AVX-512-BF16 one): say so before its figures.
for log in "$WORK"/runs/*.log; do
  grep -H "stopped at step" "$log" || true
done

declare -A weights=([random-init]="random:vit_tiny/16")
for seed in $SEEDS; do
  for name in "${recipes[@]}"; do
    weights[$(run_name $name "$seed")]="$WORK/runs/$(run_name $name "$seed")"
  done
done
for name in "${!weights[@]}"; do
  [ -f "$WORK/feats/$name/features.npz" ] || spawn $BIN embed --weights "${weights[$name]}" \
    --image-size 128 --input "$WORK/cache" --output "$WORK/feats/$name" --patch-grid --no-progress
done
[ -f "$WORK/feats/hand-crafted/features.npz" ] || \
  spawn .venv/bin/python -m mammodino.eval.handcrafted "$WORK/cache" "$WORK/feats/hand-crafted"
drain

evaluate() {  # FEATURES_NAME: density and abnormal probes, localization
  local name=$1 task std=()
  [ "$name" = hand-crafted ] && std=(--knn-standardize)
  for task in density abnormal; do
    [ -f "$WORK/eval/$name-$task/results.json" ] || $BIN eval --features "$WORK/feats/$name" \
      --labels "$WORK/labels.csv" --task $task --protocol knn logreg "${std[@]}" \
      --output "$WORK/eval/$name-$task" > "$WORK/eval/$name-$task.txt"
  done
  # Localization needs a patch grid; a peer's features may have none (then the cell stays "-").
  [ -f "$WORK/eval/$name-loc/results.json" ] || $BIN eval --features "$WORK/feats/$name" \
    --labels "$WORK/labels.csv" --localization --output "$WORK/eval/$name-loc" \
    > "$WORK/eval/$name-loc.txt" 2>&1 || echo "$name: no localization ($(tail -1 "$WORK/eval/$name-loc.txt"))"
}
for feats in "$WORK"/feats/*/; do spawn evaluate "$(basename "$feats")"; done
drain
.venv/bin/python benchmarks/summarize_eval.py "$WORK/eval"
exit
}
