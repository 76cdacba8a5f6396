#!/usr/bin/env bash
# The one prepared training run of a session with a CUDA GPU (issue "Models worth explaining"):
# dense, strided and fixed Fashion-MNIST models with the recipe (bf16 autocast, torch.compile,
# the project's kernels for the sparse layouts, a deeper-and-narrower preset) at an equal budget,
# optionally the colour model (cifar-strided-96 on the "photos" source), each evaluated on the
# whole test split (python -m tools.evaluate --write), stored as bf16 safetensors, packed under
# $OUT. Every step is time-boxed with `timeout`; the whole run fits one 10-minute device command.
#
# On this machine, first (the GPU machine has no Debian dataset package and no network):
#   bash scripts/gpu_train.sh --prepare              # /usr/share/datasets/fashion-mnist -> data/
# then the device call, with data/fashion-mnist carried (it is git-ignored):
#   bash scripts/gpu_train.sh data/fashion-mnist --colour
# CPU dry run (tiny presets, a few steps, fp32, no compile; tests/test_gpu_train.py):
#   OUT=/tmp/o bash scripts/gpu_train.sh DATA --dry [--colour --colour-data photos:DIR]
#
# Options (defaults in brackets):
#   --concurrent | --sequential  the three runs at once on one GPU [concurrent], or one by one
#   --minutes M      training time per model, turned into steps by tools.train [4.5; seq. 1.5]
#   --steps N        a number of steps per model instead of --minutes (equal steps)
#   --preset P       [fmnist-deep]   --batch-size B [128]   --lr X [1.5e-3]   --warmup W [200]
#   --dtype D        bf16 | fp32 [bf16]        --no-compile   leave torch.compile out
#   --colour         also train the colour model (preset cifar-strided-96, batch 32) on photos
#   --colour-data S  its data source [photos]
#   --timeline-probes N  attention timelines of the Fashion-MNIST runs [2] (colour: COLOUR_PROBES,
#                    default 0: a snapshot at 3,072 tokens costs minutes)
# Environment: PYTHON [python3], OUT [./gpu_out], WORK (run folders, float32 checkpoints that
# stay behind) [/tmp/gpu_train], TOTAL (seconds by which every step has ended) [570].
#
# Steps and limits (seconds): preflight [60] a 3-step compiled bf16 run of a tiny model (if it
# fails, the runs go without --compile, and the summary says so); train-NAME [minutes * 60 + 150,
# at most what TOTAL leaves after 150 s kept for the rest] (concurrent: all at once); ship [60]
# each run's newest model as bf16 (models/checkpoint.py, checksums of the stored bytes) with its
# run.json and timeline, all weights <= 60 MB; eval-fmnist and eval-colour [90] test bits/dim on
# every test image, written as eval.json. A run stopped by its timeout still ships its last
# checkpoint (its run.json then has no "final").
# $OUT holds at most 7 files: summary.txt (steps, status, seconds, sizes, SHA-256), NAME.tar per
# model (config.json, model.safetensors, run.json, eval.json), timelines.tar.gz, logs.tar.gz.
# Exit status 1 when a step failed or timed out, 2 on bad arguments or no CUDA without --dry.
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
OUT=${OUT:-./gpu_out}
WORK=${WORK:-/tmp/gpu_train}
TOTAL=${TOTAL:-570}  # seconds: every step ends by then (a device command may run 600)
RESERVE=150          # seconds of TOTAL kept for ship + evaluation after training
MODE=concurrent MINUTES="" STEPS="" PRESET=fmnist-deep BATCH=128 LR=1.5e-3 WARMUP=200 DTYPE=bf16
# timeline snapshots (17 per run) are not in --minutes' step count: on a CPU one snapshot of
# fmnist-deep with 2 probes took 13 s and of cifar-strided-96 with 4 probes 122 s, so the colour
# run records none unless COLOUR_PROBES says so
COMPILE=1 COLOUR=0 COLOUR_DATA=photos PROBES=2 COLOUR_PROBES=${COLOUR_PROBES:-0} DRY=0 DATA=""
COLOUR_PRESET=cifar-strided-96 COLOUR_BATCH=32 EVAL_EVERY=500 EVAL_IMAGES=500 EVAL_LIMIT=""
THREADS=()

usage() { sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit "${1:-2}"; }

if [[ ${1:-} == --prepare ]]; then
  dest=${2:-data/fashion-mnist}
  src=/usr/share/datasets/fashion-mnist
  mkdir -p "$dest" || exit 2
  for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte \
    t10k-labels-idx1-ubyte; do
    if [[ ! -f $src/$f.gz ]]; then
      echo "error: $src/$f.gz not found (sudo apt-get install -y dataset-fashion-mnist)" >&2
      exit 2
    fi
    cp "$src/$f.gz" "$dest/" || exit 2
  done
  du -sh "$dest"
  echo "prepared $dest; carry it to the GPU machine and run: bash scripts/gpu_train.sh $dest"
  exit 0
fi

while (($#)); do
  case $1 in
    --concurrent) MODE=concurrent ;;
    --sequential) MODE=sequential ;;
    --minutes) MINUTES=$2; shift ;;
    --steps) STEPS=$2; shift ;;
    --preset) PRESET=$2; shift ;;
    --batch-size) BATCH=$2; shift ;;
    --lr) LR=$2; shift ;;
    --warmup) WARMUP=$2; shift ;;
    --dtype) DTYPE=$2; shift ;;
    --no-compile) COMPILE=0 ;;
    --colour) COLOUR=1 ;;
    --colour-data) COLOUR_DATA=$2; shift ;;
    --timeline-probes) PROBES=$2; shift ;;
    --dry) DRY=1 ;;
    -h | --help) usage 0 ;;
    -*) echo "error: unknown option $1" >&2; usage ;;
    *) [[ -z $DATA ]] || { echo "error: one DATA folder, got $DATA and $1" >&2; exit 2; }
       DATA=$1 ;;
  esac
  shift || { echo "error: an option lacks its value" >&2; exit 2; }
done
if [[ -z $DATA || ! -d $DATA ]]; then
  echo "error: give the Fashion-MNIST folder (made by --prepare), got '${DATA}'" >&2
  exit 2
fi
if ((DRY)); then  # the CPU dry run: the same steps on tiny models, in seconds
  PRESET=fmnist-tiny COLOUR_PRESET=cifar-tiny STEPS=${STEPS:-3} BATCH=4 COLOUR_BATCH=2
  WARMUP=1 DTYPE=fp32 COMPILE=0 PROBES=1 COLOUR_PROBES=0 EVAL_EVERY=3 EVAL_IMAGES=4 EVAL_LIMIT=8
  THREADS=(--threads 1)  # concurrent runs on a few shared cores
  export SPARSE_EXPLORER_PHOTO_PATCHES=${SPARSE_EXPLORER_PHOTO_PATCHES:-8,4}  # models/datasets.py
elif ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "error: no CUDA here; this script trains on a GPU (--dry for the CPU dry run)" >&2
  exit 2
fi
if [[ -z $STEPS && -z $MINUTES ]]; then
  MINUTES=$([[ $MODE == concurrent ]] && echo 4.5 || echo 1.5)
fi
BUDGET=(--steps "$STEPS")
TRAIN_LIMIT=$((STEPS / 10 + 150))
if [[ -z $STEPS ]]; then
  BUDGET=(--minutes "$MINUTES")
  TRAIN_LIMIT=$("$PY" -c "print(int(float('$MINUTES') * 60) + 150)") || exit 2
fi

mkdir -p "$OUT" "$WORK/logs" || exit 2
rm -rf "${WORK:?}/runs" "${WORK:?}/ship"
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
NAMES=(dense strided fixed)
((COLOUR)) && NAMES+=(colour)

# step NAME SECONDS CMD...: CMD time-boxed, its output in $WORK/logs/NAME.log, a summary line
step() {
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS status rc left=$((TOTAL - SECONDS))
  ((limit > left)) && limit=$left  # the whole script ends by TOTAL seconds
  echo "== $name (limit ${limit}s): $*" >"$WORK/logs/$name.log"
  if ((limit < 5)); then
    rc=125
  else
    timeout --signal=TERM --kill-after=10 "$limit" "$@" >>"$WORK/logs/$name.log" 2>&1
    rc=$?
  fi
  case $rc in
    0) status="ok" ;;
    124 | 137) status="TIMED OUT after ${limit}s" ;;
    125) status="SKIPPED: out of time" ;;
    *) status="FAILED (rc $rc)" ;;
  esac
  printf '%-14s %-26s %4ds\n' "$name" "$status" $((SECONDS - start)) | tee -a "$SUMMARY"
  # after every step, what came so far (renamed into place: concurrent steps never mix files)
  tar -czf "$WORK/logs-$name.tgz" -C "$WORK" logs 2>/dev/null && mv "$WORK/logs-$name.tgz" \
    "$OUT/logs.tar.gz"
}

echo "mode $MODE, preset $PRESET, budget ${BUDGET[*]} each, batch $BATCH, lr $LR, dtype $DTYPE," \
  "compile $COMPILE, colour $COLOUR ($COLOUR_DATA), dry $DRY" | tee -a "$SUMMARY"

if ((COMPILE)); then
  step preflight 60 "$PY" -m tools.train --preset fmnist-tiny --layout strided \
    --data "fashion-mnist:$DATA" --steps 3 --warmup 1 --batch-size 8 --eval-every 3 \
    --eval-images 8 --dtype "$DTYPE" --compile --out "$WORK/runs/preflight"
  if ! tail -1 "$SUMMARY" | grep -q " ok "; then
    COMPILE=0
    echo "preflight failed: the runs train without --compile" | tee -a "$SUMMARY"
  fi
fi
RECIPE=(--dtype "$DTYPE" --warmup "$WARMUP" --eval-every "$EVAL_EVERY" --eval-images "$EVAL_IMAGES"
  --lr "$LR" "${THREADS[@]}")
((COMPILE)) && RECIPE+=(--compile)

train_cmd() {  # the tools.train command of run NAME
  local name=$1
  if [[ $name == colour ]]; then
    echo "$PY" -m tools.train --preset "$COLOUR_PRESET" --layout strided --data "$COLOUR_DATA" \
      --batch-size "$COLOUR_BATCH" "${BUDGET[@]}" "${RECIPE[@]}" \
      --timeline-probes "$COLOUR_PROBES" --out "$WORK/runs/$name"
  else
    echo "$PY" -m tools.train --preset "$PRESET" --layout "$name" --data "fashion-mnist:$DATA" \
      --batch-size "$BATCH" "${BUDGET[@]}" "${RECIPE[@]}" --timeline-probes "$PROBES" \
      --out "$WORK/runs/$name"
  fi
}

pids=() done_runs=()
for name in "${NAMES[@]}"; do
  # leave RESERVE seconds of TOTAL for shipping and evaluating: a run stopped early ships its
  # last checkpoint (sequential runs split what is left)
  limit=$((TOTAL - SECONDS - RESERVE))
  [[ $MODE == sequential ]] && limit=$((limit / (${#NAMES[@]} - ${#done_runs[@]})))
  ((limit > TRAIN_LIMIT)) && limit=$TRAIN_LIMIT
  done_runs+=("$name")
  # shellcheck disable=SC2046  # train_cmd's words: paths and numbers, no spaces
  if [[ $MODE == concurrent ]]; then
    step "train-$name" "$limit" $(train_cmd "$name") &
    pids+=($!)
  else
    step "train-$name" "$limit" $(train_cmd "$name")
  fi
done
for pid in "${pids[@]}"; do wait "$pid"; done

step ship 60 env WORK="$WORK" "$PY" - "${NAMES[@]}" <<'EOF'
"""Each run's newest model as bf16 safetensors (checksums of the stored bytes, config bound),
with its run.json and timeline, into $WORK/ship/NAME; all weights together at most 60 MB."""
import os
import shutil
import sys
from pathlib import Path

import torch

from models.checkpoint import WEIGHTS_FILE, load_model, save_model

work = Path(os.environ["WORK"])
total, missing = 0, []
for name in sys.argv[1:]:
    run, ship = work / "runs" / name, work / "ship" / name
    if not (run / WEIGHTS_FILE).is_file():
        missing.append(name)
        print(f"{name}: no model in {run} (no checkpoint was written)")
        continue
    model = load_model(run)
    save_model(model, ship, dtype=torch.bfloat16)
    for extra in ("run.json", "timeline.npz", "timeline.json"):
        if (run / extra).is_file():
            shutil.copy2(run / extra, ship / extra)
    size = (ship / WEIGHTS_FILE).stat().st_size
    total += size
    print(f"{name}: {model.num_params():,} parameters, {size / 1e6:.1f} MB as bf16")
print(f"all weights: {total / 1e6:.1f} MB (budget 60 MB)")
if total > 60e6:
    sys.exit("the weights are over the 60 MB budget")
sys.exit(1 if missing else 0)
EOF

FMNIST=()
for name in dense strided fixed; do
  [[ -f $WORK/ship/$name/model.safetensors ]] && FMNIST+=("$WORK/ship/$name")
done
LIMIT=()
[[ -n $EVAL_LIMIT ]] && LIMIT=(--limit "$EVAL_LIMIT" --timing-batch 2 --timing-iters 1 "${THREADS[@]}")
if ((${#FMNIST[@]})); then
  step eval-fmnist 90 "$PY" -m tools.evaluate "${FMNIST[@]}" --data "fashion-mnist:$DATA" \
    --write "${LIMIT[@]}"
fi
if ((COLOUR)) && [[ -f $WORK/ship/colour/model.safetensors ]]; then
  step eval-colour 90 "$PY" -m tools.evaluate "$WORK/ship/colour" --data "$COLOUR_DATA" \
    --write "${LIMIT[@]}"
fi

for name in "${NAMES[@]}"; do
  dir=$WORK/ship/$name
  [[ -d $dir ]] || continue
  files=()
  for f in config.json model.safetensors run.json eval.json; do
    [[ -f $dir/$f ]] && files+=("$name/$f")
  done
  tar -cf "$OUT/$name.tar" -C "$WORK/ship" "${files[@]}"
  (cd "$WORK/ship" && sha256sum "${files[@]}") | tee -a "$SUMMARY"
  if [[ -f $dir/eval.json ]]; then
    echo "$name: $(tr -d '\n ' <"$dir/eval.json" | grep -o '"test_bpd":[0-9.]*')" \
      | tee -a "$SUMMARY"
  fi
done
timelines=()
for name in "${NAMES[@]}"; do
  for f in timeline.npz timeline.json; do
    [[ -f $WORK/ship/$name/$f ]] && timelines+=("$name/$f")
  done
done
((${#timelines[@]})) && tar -czf "$OUT/timelines.tar.gz" -C "$WORK/ship" "${timelines[@]}"
du -b "$OUT"/* | tee -a "$SUMMARY"
tar -czf "$OUT/logs.tar.gz" -C "$WORK" logs

if grep -qE "FAILED|TIMED OUT|SKIPPED" "$SUMMARY"; then
  echo "a step failed or timed out: see logs.tar.gz" | tee -a "$SUMMARY"
  exit 1
fi
echo "done: models in $OUT/NAME.tar, logs in $OUT/logs.tar.gz" | tee -a "$SUMMARY"
exit 0
