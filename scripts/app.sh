#!/usr/bin/env bash
# The one app command: set up .venv, then serve the explorer on http://127.0.0.1:8501
# (loopback only; pass --server.address 0.0.0.0 to serve others: there is no authentication)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# (app_pages/serve.py: `streamlit run app.py`, the first page's modules imported before it listens)
exec .venv/bin/python -m app_pages.serve --server.headless true --server.address 127.0.0.1 "$@"
