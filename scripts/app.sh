#!/usr/bin/env bash
# The one app command: set up .venv, then serve the explorer on http://127.0.0.1:8501
# (loopback only; pass --server.address 0.0.0.0 to serve others: there is no authentication)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/streamlit run app.py --server.headless true --server.address 127.0.0.1 "$@"
