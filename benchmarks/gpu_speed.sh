#!/usr/bin/env bash
# Issue 14 on one GPU in one command (about 6-7 minutes on an H200), every figure in one JSON file:
#   bash benchmarks/gpu_speed.sh OUT.json [PYTHON]
# - ours vs lightly's DINOv2 step (benchmarks/peer_lightly.py --mode speed), ViT-L/14 batch 32 and
#   ViT-S/14 batch 64, 2 x 224 + 8 x 98 crops, 65,536 prototypes, bf16 autocast, alternating in
#   one process; ours eager and with train.compile=true;
# - MFU of the ViT-L/14 SSL step (benchmarks/gpu_throughput.py), eager and compiled;
# - kernels and host syncs per step (benchmarks/step_kernels.py), eager and compiled.
# Needs CUDA torch, timm, torchvision and lightly 1.6 (`pip install --no-deps "lightly==1.6.*"`:
# the parts the benchmark uses need nothing more), and this package importable (pip install -e .,
# or PYTHONPATH=src). A part that fails is recorded as failed; the others still run.
set -uo pipefail
{  # read whole before it runs: a file edited or pulled mid-run cannot change the run
cd "$(dirname "$0")/.."
OUT=${1:?usage: bash benchmarks/gpu_speed.sh OUT.json [PYTHON]}
PY=${2:-python3}
TMP=$(mktemp -d)
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src:${PYTHONPATH:-}"
part() {  # NAME SECONDS COMMAND...: run one part with a time limit, keep its log
  local name=$1 limit=$2; shift 2
  echo "== $name"
  timeout "$limit" "$@" 2>&1 | tee "$TMP/$name.log" | grep -v '^W[0-9]'
  local rc=${PIPESTATUS[0]}
  [ "$rc" = 0 ] || echo "$name failed: exit $rc" | tee -a "$TMP/failed.txt"
}
for compile in false true; do
  for model in vitl14:32 vits14:64; do
    part "peer-${model%:*}-compile-$compile" 150 "$PY" benchmarks/peer_lightly.py --mode speed \
      --config "${model%:*}" --device cuda --precision bf16 --warmup 2 --repeats 5 \
      --json "$TMP/peer-${model%:*}-compile-$compile.json" "data.batch_size=${model#*:}" \
      "train.compile=$compile"
  done
done
part mfu-eager 120 "$PY" benchmarks/gpu_throughput.py --device cuda --settings vitl14 \
  --modes ssl,backbone --ssl-batch 32 --json "$TMP/mfu.jsonl"
part mfu-compile 150 "$PY" benchmarks/gpu_throughput.py --device cuda --settings vitl14 \
  --modes ssl,backbone --ssl-batch 32 --compile --json "$TMP/mfu.jsonl"
for compile in false true; do
  part "kernels-compile-$compile" 120 "$PY" benchmarks/step_kernels.py --device cuda \
    --models vitl14 --precisions bf16 --json "$TMP/kernels-compile-$compile.json" \
    "train.compile=$compile"
done
"$PY" - "$TMP" "$OUT" <<'PY'
import glob, json, os, sys
tmp, out = sys.argv[1:]
result = {"peer": [], "mfu": [], "kernels": [], "failed": []}
for path in sorted(glob.glob(f"{tmp}/peer-*.json")):
    result["peer"].append(json.load(open(path)))
if os.path.exists(f"{tmp}/mfu.jsonl"):
    result["mfu"] = [json.loads(line) for line in open(f"{tmp}/mfu.jsonl") if line.strip()]
for path in sorted(glob.glob(f"{tmp}/kernels-*.json")):
    result["kernels"].extend(json.load(open(path)))
if os.path.exists(f"{tmp}/failed.txt"):
    result["failed"] = open(f"{tmp}/failed.txt").read().split("\n")[:-1]
json.dump(result, open(out, "w"), indent=1)
for row in result["peer"]:
    print(f"{row['arch']} batch {row['batch']} compile {row['compile']}: ours / lightly "
          f"{row['ratio_ours_over_lightly']:.3f} ({row['ours_samples_per_s']:.1f} vs "
          f"{row['lightly_samples_per_s']:.1f} samples/s)")
for row in result["mfu"]:
    print(f"{row['setting']} {row['mode']} compile {row['compile']}: MFU {row.get('mfu', 0):.1%}")
for row in result["kernels"]:
    print(f"{row['model']} {row['overrides']}: {row.get('cuda_kernels')} CUDA kernels, "
          f"{row['host_syncs']} host syncs per step")
print(f"figures: {out}")
PY
exit
}
