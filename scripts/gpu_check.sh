#!/usr/bin/env bash
# The one check a session with a CUDA GPU runs first (at most about 8 minutes), everything under
# $OUT (default ./gpu_out): one log per step and summary.txt (step, status, seconds).
#
#   bash scripts/gpu_check.sh                      # python3 on PATH; OUT=./gpu_out
#   PYTHON=.venv/bin/python OUT=/tmp/g bash scripts/gpu_check.sh
#
# Steps, each time-boxed with `timeout` (seconds in brackets):
#   env          [20]  GPU, torch, triton, and which optional packages are importable
#   bench-help   [20]  python -m tools.bench_kernels --help (imports every kernel module)
#   kernel-gpu   [120] the real-size kernel tests (pytest -m gpu): outputs and gradients of q, k, v
#                      against float64, fp32/fp16/bf16, d 32/64/128, N = 4,089; a tensor past
#                      2**31 elements. One tile config (SPARSE_ATTENTION_TILES) so nothing tunes.
#   kernel-small [45]  the small kernel tests natively on CUDA (bf16 included, unlike the CPU)
#   bench-65536  [130] python -m tools.bench_kernels --sizes 65536 --no-train: the goal sizes'
#                      table and autotune's picks (autotune benchmarks its configs here)
#   bench-3072   [60]  python -m tools.bench_kernels --sizes 3072: its table, the capture table
#                      and the training step of a 32x32x3 model, strided against dense
#   sampling     [30]  python -m tools.bench_sampling --device cuda --no-uncached
#   app          [35]  the app's model paths on CUDA without streamlit: load assets/models/strided,
#                      capture every form (against the same model on the CPU), complete an image
# Without CUDA every CUDA step says "skipped: no CUDA" and the script exits 0 (the CPU dry run
# tests/test_gpu_check.py makes). With CUDA it exits 1 when a step failed or timed out.
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
OUT=${OUT:-./gpu_out}
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
failed=0

# step NAME SECONDS CMD...: run CMD with a time limit, its output in $OUT/NAME.log
step() {
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS status
  echo "== $name (limit ${limit}s): $*" | tee "$OUT/$name.log"
  timeout --signal=TERM --kill-after=10 "$limit" "$@" >>"$OUT/$name.log" 2>&1
  local rc=$?
  case $rc in
    0) status="ok" ;;
    124 | 137) status="TIMED OUT after ${limit}s"; failed=1 ;;
    *) status="FAILED (rc $rc)"; failed=1 ;;
  esac
  printf '%-13s %-26s %4ds\n' "$name" "$status" $((SECONDS - start)) | tee -a "$SUMMARY"
}

skip() {
  echo "skipped: no CUDA" >"$OUT/$1.log"
  printf '%-13s %-26s %4ds\n' "$1" "skipped: no CUDA" 0 | tee -a "$SUMMARY"
}

step env 20 "$PY" - <<'EOF'
import importlib.util, platform, subprocess, sys
import torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
try:
    import triton
    print("triton", triton.__version__)
except ImportError as e:
    print("triton: not importable:", e)
print("cuda available:", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device:", torch.cuda.get_device_name(), torch.cuda.get_device_capability())
    print(subprocess.run(["nvidia-smi"], capture_output=True, text=True).stdout)
for mod in ("pytest", "safetensors", "numpy", "PIL", "streamlit"):
    print(f"{mod}:", "yes" if importlib.util.find_spec(mod) else "no")
EOF
step bench-help 20 "$PY" -m tools.bench_kernels --help

if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  for name in kernel-gpu kernel-small bench-65536 bench-3072 sampling app; do skip "$name"; done
  echo "no CUDA: the CUDA steps were skipped" | tee -a "$SUMMARY"
  exit 0
fi

KERNEL_TESTS=(tests/test_triton_band_column.py tests/test_triton_fixed.py
  tests/test_triton_common.py tests/test_triton_capture.py tests/test_dispatch.py)
PINNED=(env SPARSE_ATTENTION_TILES=64x32)  # one config each: the tests compile, never tune
step kernel-gpu 120 "${PINNED[@]}" \
  "$PY" -m pytest -v -p no:cacheprovider -m gpu "${KERNEL_TESTS[@]}" tests/test_capture.py
step kernel-small 45 "${PINNED[@]}" \
  "$PY" -m pytest -q -p no:cacheprovider -m "not gpu" "${KERNEL_TESTS[@]}"
step bench-65536 130 "$PY" -m tools.bench_kernels --sizes 65536 --no-train
step bench-3072 60 "$PY" -m tools.bench_kernels --sizes 3072
step sampling 30 "$PY" -m tools.bench_sampling --device cuda --no-uncached
step app 35 "$PY" - <<'EOF'
"""The app's model paths on CUDA, without streamlit: what the pages call."""
import time

import numpy as np
import torch

from kernels.dispatch import resolve_backend
from models.checkpoint import load_model
from models.completion import complete, keep_mask

t0 = time.perf_counter()
gpu = load_model("assets/models/strided", device="cuda")
cpu = load_model("assets/models/strided", device="cpu")
geometry = gpu.config.geometry
n = geometry.n_tokens
print("model:", gpu.config.layout, "tokens:", n)
q = torch.zeros(1, gpu.config.n_head, n, 16, device="cuda")
print("auto backend on CUDA:", resolve_backend(q, gpu.blocks[0].attn.layout))
tokens = torch.randint(0, 256, (1, n), generator=torch.Generator().manual_seed(0))
forms = [
    ("full", {}),
    ("rows", {"queries": [5, n // 2, n - 1]}),
    ("pooled", {"block": geometry.width}),
    ("sparse", {}),
    ("sparse", {"support": "local(l=5)"}),
]
for form, kw in forms:
    t = time.perf_counter()
    got = gpu.capture(tokens, layers=[0, gpu.config.n_layer - 1], form=form, **kw)
    torch.cuda.synchronize()
    ms = (time.perf_counter() - t) * 1e3
    want = cpu.capture(tokens, layers=[0, gpu.config.n_layer - 1], form=form, **kw)
    worst = 0.0
    for layer, cap in got.items():
        for name in ("probs", "mean", "max", "values"):
            if hasattr(cap, name):
                a, b = getattr(cap, name), getattr(want[layer], name)
                assert a.device.type == "cpu", f"{form}: came back on {a.device}"
                worst = max(worst, float((a.float() - b.float()).abs().max()))
    print(f"capture {form} {kw}: {ms:.1f} ms, max |cuda - cpu| = {worst:.2e}")
    assert worst < 2e-3, (form, worst)
image = np.zeros(tuple(geometry), dtype=np.uint8)
t = time.perf_counter()
samples = complete(gpu, image, keep_mask(geometry), n_samples=2, seed=0)
torch.cuda.synchronize()
print(f"complete: {samples.shape} in {time.perf_counter() - t:.2f} s")
print(f"app paths ok in {time.perf_counter() - t0:.1f} s")
EOF

echo "logs and summary in $OUT" | tee -a "$SUMMARY"
exit $failed
