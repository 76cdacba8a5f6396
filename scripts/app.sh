#!/usr/bin/env bash
# The one app command: set up .venv, then serve the explorer on http://localhost:8501
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/streamlit run app.py --server.headless true "$@"
