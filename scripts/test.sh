#!/usr/bin/env bash
# The one test command: set up .venv (and the Debian packages the tests use), then run pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
bash scripts/system_packages.sh
export TRITON_INTERPRET=${TRITON_INTERPRET:-1}  # Triton kernels run on the CPU in CI
exec .venv/bin/python -m pytest "$@"
