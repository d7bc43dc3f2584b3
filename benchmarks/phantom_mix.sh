#!/usr/bin/env bash
# Does pretraining on mini-MIAS plus thousands of phantoms help the real-data probes? (issue 13,
# item 5). Same preset, seeds and number of steps as the MammoDINO runs of mini_mias_compare.sh;
# only the data differ: the mini-MIAS cache plus N phantom mammograms, one manifest.
#   bash benchmarks/phantom_mix.sh WORK_DIR [N_PHANTOMS] [MINUTES] [SEEDS]
# WORK_DIR is the folder of mini_mias_compare.sh (its cache and labels are reused); the phantoms
# are prepared as that cache was (cropped or whole, the same intensity mode). Each seed's run goes
# to WORK_DIR/runs/mammodino+phantoms (seed 0) or mammodino+phantoms-seedN and its features are
# evaluated with the same probes, so summarize_eval.py prints it as one more row and, with two or
# more seeds that the script also ran for `mammodino`, what the phantoms add paired by seed.
# One N per WORK_DIR. Stages whose output exists are skipped.
set -euo pipefail
{  # read whole before it runs: a file edited or pulled mid-run cannot change the run
cd "$(dirname "$0")/.."
WORK=${1:?usage: phantom_mix.sh WORK_DIR [N_PHANTOMS] [MINUTES] [SEEDS]}
N=${2:-2000}
MINUTES=${3:-30}
SEEDS=${4:-0}
BIN=.venv/bin/mammodino
NAME=mammodino+phantoms
[ -f "$WORK/cache/manifest.csv" ] || { echo "run benchmarks/mini_mias_compare.sh $WORK first"; exit 2; }
for other in "$WORK"/mix-*; do
  [ -e "$other" ] && [ "$other" != "$WORK/mix-$N" ] && \
    { echo "$WORK already holds runs with ${other##*-} phantoms: use another WORK_DIR for $N"; exit 2; }
done

# The phantoms' cache is made as WORK's cache was: the same crop and intensity settings.
read -r -a like_cache < <(.venv/bin/python - "$WORK/cache" <<'PY'
import sys
from mammodino.preprocess.prepare import recorded_settings
record = recorded_settings(sys.argv[1])
if record:  # without one (a cache made otherwise) the phantoms get prepare's defaults
    print(*([] if record["crop"] else ["--no-crop"]), "--intensity", record["intensity"])
PY
)
PH="$WORK/phantoms-$N"
[ -f "$PH/labels.csv" ] || $BIN synth "$PH" --ffdm "$N" --dbt 0 --seed 1 --ffdm-shape 512 400
[ -f "$PH-cache/manifest.csv" ] || \
  $BIN prepare "$PH/ffdm" "$PH-cache" --workers 2 --no-progress "${like_cache[@]}"

mkdir -p "$WORK/runs" "$WORK/feats" "$WORK/eval"  # a WORK_DIR made by hand may lack them
MIX="$WORK/mix-$N"
if [ ! -f "$MIX/manifest.csv" ]; then
  mkdir -p "$MIX"
  ln -sfn "$(realpath "$WORK/cache")" "$MIX/mias"
  ln -sfn "$(realpath "$PH-cache")" "$MIX/phantoms"
  # One manifest: each cache's rows with its image and mask paths under its own link.
  .venv/bin/python - "$MIX" <<'PY'
import csv, sys
from pathlib import Path
mix = Path(sys.argv[1])
rows, columns = [], []
for part in ("mias", "phantoms"):
    with (mix / part / "manifest.csv").open(newline="") as fh:
        for row in csv.DictReader(fh):
            columns += [c for c in row if c not in columns]
            row["image"], row["mask"] = f"{part}/{row['image']}", f"{part}/{row['mask']}"
            rows.append(row)
with (mix / "manifest.csv").open("w", newline="") as fh:
    writer = csv.DictWriter(fh, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
print(f"{len(rows)} images in {mix / 'manifest.csv'}")
PY
fi

for seed in $SEEDS; do
  name=$NAME; [ "$seed" = 0 ] || name=$NAME-seed$seed
  run="$WORK/runs/$name"
  if [ ! -f "$run/done" ]; then
    resume=(); [ -f "$run/checkpoints/last.pt" ] && resume=(--resume)
    $BIN pretrain --config tiny-cpu --no-progress --output-dir "$run" "${resume[@]}" \
      "data.source=$MIX" "monitor.source=$WORK/cache" \
      "monitor.labels=../shared/data/mini-mias/labels_per_image.csv" "optim.max_minutes=$MINUTES" \
      "train.seed=$seed" > "$run.log" 2>&1
    touch "$run/done"
  fi
  [ -f "$WORK/feats/$name/features.npz" ] || $BIN embed --weights "$run" --image-size 128 \
    --input "$WORK/cache" --output "$WORK/feats/$name" --patch-grid --no-progress
  for task in density abnormal; do
    [ -f "$WORK/eval/$name-$task/results.json" ] || $BIN eval --features "$WORK/feats/$name" \
      --labels "$WORK/labels.csv" --task $task --protocol knn logreg \
      --output "$WORK/eval/$name-$task" > "$WORK/eval/$name-$task.txt"
  done
done
.venv/bin/python benchmarks/summarize_eval.py "$WORK/eval"
exit
}
