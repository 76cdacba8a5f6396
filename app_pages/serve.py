"""The app's server, what scripts/app.sh runs: `streamlit run app.py` with the arguments given,
the modules every first page needs imported before the server listens.

    .venv/bin/python -m app_pages.serve --server.headless true --server.address 127.0.0.1

A fresh server would otherwise import them in its first visitor's first run, while the visitor
waits for the page: pandas alone took 0.5 s of that run on a 2-core CPU, and the first chart
reached the browser (which then fetches plotly.js) that much later (docs/BENCHMARKS.md). Here
they are imported once, in the main thread, before any session exists, so no session can see
a half-imported module (app.py says why that matters). torch waits for app_pages.models_cache's
warm_up, after the first page is drawn: it would add a second to the server's start.
"""

from __future__ import annotations

import sys

import pandas  # noqa: F401
import plotly.graph_objects  # noqa: F401
import streamlit.emojis  # noqa: F401  (st.set_page_config checks the tab's icon against it)
from streamlit.web import cli

import viz.export  # noqa: F401  (the figures of the first page, and their exports)
import viz.maps  # noqa: F401
import viz.pixels  # noqa: F401


def main(argv: list[str]) -> int:
    sys.argv = ["streamlit", "run", "app.py", *argv]
    return cli.main()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
