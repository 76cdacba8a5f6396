#!/usr/bin/env bash
# Create .venv and install everything the app (default) or the tests (--dev) need.
# Idempotent: a second run installs nothing new. A torch that is already importable in .venv is
# kept as it is (a user's CUDA build is never replaced); otherwise a CPU build is installed where
# no NVIDIA GPU is visible, and the default (CUDA) build where one is.
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
[ "${1:-}" = "--dev" ] && dev=1
python=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }

if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    pip install "torch>=2.5"
  else
    # the CPU wheel; TORCH_CPU_INDEX points pip at PyTorch's CPU index on machines that need it,
    # e.g. TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
    pip install "${TORCH_SPEC:-torch==2.13.0}" ${TORCH_CPU_INDEX:+--index-url "$TORCH_CPU_INDEX"}
  fi
fi

if [ "$dev" = 1 ]; then
  pip install -r requirements-dev.txt
else
  pip install -r requirements.txt
fi
