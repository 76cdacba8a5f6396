"""Sparse Transformer Explorer: the Streamlit entry point, a thin router over app_pages/."""

# Imported whole before any page runs. Sessions run in threads of one process, and plotly looks
# pandas up in sys.modules without importing it: while one session's first run is importing it,
# another session's chart would get a half-initialised module (tests/test_sessions.py saw it).
import pandas  # noqa: F401
import streamlit as st

st.set_page_config(page_title="Sparse Transformer Explorer", layout="wide")

pages = [
    st.Page("app_pages/layouts.py", title="Layouts", icon=":material/grid_on:", default=True),
    st.Page("app_pages/attention.py", title="Attention", icon=":material/visibility:"),
    st.Page("app_pages/learned.py", title="Learned vs prescribed", icon=":material/compare:"),
    st.Page("app_pages/complete.py", title="Complete", icon=":material/auto_fix_high:"),
    st.Page("app_pages/export_page.py", title="Export", icon=":material/download:"),
    st.Page("app_pages/models_page.py", title="Models & speed", icon=":material/speed:"),
]
st.navigation(pages, position="top").run()
