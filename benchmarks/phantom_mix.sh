#!/usr/bin/env bash
# Does pretraining on mini-MIAS plus thousands of phantoms help the real-data probes? (issue 13,
# item 5). Same preset, seed and number of steps as the MammoDINO run of mini_mias_compare.sh;
# only the data differ: the mini-MIAS cache plus N phantom mammograms, one manifest.
#   bash benchmarks/phantom_mix.sh WORK_DIR [N_PHANTOMS] [MINUTES]
# WORK_DIR is the folder of mini_mias_compare.sh (its cache and labels are reused); the run goes
# to WORK_DIR/runs/mammodino+phantoms and its features are evaluated with the same probes, so
# summarize_eval.py prints it as one more row. Stages whose output exists are skipped.
set -euo pipefail
{  # read whole before it runs: a file edited or pulled mid-run cannot change the run
cd "$(dirname "$0")/.."
WORK=${1:?usage: phantom_mix.sh WORK_DIR [N_PHANTOMS] [MINUTES]}
N=${2:-2000}
MINUTES=${3:-30}
BIN=.venv/bin/mammodino
NAME=mammodino+phantoms
[ -f "$WORK/cache/manifest.csv" ] || { echo "run benchmarks/mini_mias_compare.sh $WORK first"; exit 2; }

PH="$WORK/phantoms-$N"
[ -f "$PH/labels.csv" ] || $BIN synth "$PH" --ffdm "$N" --dbt 0 --seed 1 --ffdm-shape 512 400
[ -f "$PH-cache/manifest.csv" ] || $BIN prepare "$PH/ffdm" "$PH-cache" --workers 2 --no-progress

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

run="$WORK/runs/$NAME"
if [ ! -f "$run/done" ]; then
  resume=(); [ -f "$run/checkpoints/last.pt" ] && resume=(--resume)
  $BIN pretrain --config tiny-cpu --no-progress --output-dir "$run" "${resume[@]}" \
    "data.source=$MIX" "monitor.source=$WORK/cache" \
    "monitor.labels=../shared/data/mini-mias/labels_per_image.csv" "optim.max_minutes=$MINUTES" \
    > "$run.log" 2>&1
  touch "$run/done"
fi
[ -f "$WORK/feats/$NAME/features.npz" ] || $BIN embed --weights "$run" --image-size 128 \
  --input "$WORK/cache" --output "$WORK/feats/$NAME" --patch-grid --no-progress
for task in density abnormal; do
  [ -f "$WORK/eval/$NAME-$task/results.json" ] || $BIN eval --features "$WORK/feats/$NAME" \
    --labels "$WORK/labels.csv" --task $task --protocol knn logreg \
    --output "$WORK/eval/$NAME-$task" > "$WORK/eval/$NAME-$task.txt"
done
.venv/bin/python benchmarks/summarize_eval.py "$WORK/eval"
exit
}
