"""Sparse Transformer Explorer: the Streamlit entry point, a thin router over app_pages/."""

# Imported whole before any page runs. Sessions run in threads of one process, and plotly looks
# pandas up in sys.modules without importing it: while one session's first run is importing it,
# another session's chart would get a half-initialised module (tests/test_sessions.py saw it).
# (Served by app_pages/serve.py, as scripts/app.sh does, it is imported before the server
# listens, out of the first visitor's wait; under a bare `streamlit run app.py`, here.)
import pandas  # noqa: F401
import streamlit as st

# the tab's icon: an emoji, drawn by the browser (a page's :material/...: icon as the favicon would
# be fetched from fonts.gstatic.com: a request to an outside host per visitor)
st.set_page_config(page_title="Sparse Transformer Explorer", page_icon="👕", layout="wide")

from app_pages.models_cache import warm_up  # noqa: E402
from app_pages.settings import keep_settings, share_settings  # noqa: E402

# every setting made in this session survives page switches (and the first run reads the URL)
keep_settings()
pages = {  # each page, and the prefixes of its settings' keys (its view in the URL)
    st.Page(
        "app_pages/layouts.py",
        title="Layouts",
        url_path="layouts",
        icon=":material/grid_on:",
        default=True,
    ): "lay",
    st.Page(
        "app_pages/attention.py",
        title="Attention",
        url_path="attention",
        icon=":material/visibility:",
    ): "att",
    st.Page(
        "app_pages/learned_vs_prescribed.py",
        title="Learned vs prescribed",
        url_path="learned",
        icon=":material/compare:",
    ): "lvp",
    st.Page(
        "app_pages/frontier.py", title="Frontier", url_path="frontier", icon=":material/show_chart:"
    ): "fr",
    st.Page(
        "app_pages/complete.py",
        title="Complete",
        url_path="complete",
        icon=":material/auto_fix_high:",
    ): "cmp",
    st.Page(
        "app_pages/who_looks_here.py",
        title="Who looks here",
        url_path="who-looks-here",
        icon=":material/hub:",
    ): "who",
    st.Page(
        "app_pages/predictions.py",
        title="Predictions",
        url_path="predictions",
        icon=":material/casino:",
    ): "prd",
    st.Page(
        "app_pages/ablation.py",
        title="Ablation",
        url_path="ablation",
        icon=":material/content_cut:",
    ): "abl",
    st.Page(
        "app_pages/training.py", title="Training", url_path="training", icon=":material/timeline:"
    ): "trn",
    st.Page(
        "app_pages/playground.py",
        title="Playground",
        url_path="playground",
        icon=":material/sports_score:",
    ): "pg",
    st.Page(
        "app_pages/export_page.py", title="Export", url_path="export", icon=":material/download:"
    ): None,
    st.Page(
        "app_pages/models_page.py",
        title="Models & speed",
        url_path="models",
        icon=":material/speed:",
    ): None,
}
# the menu at the top: a sidebar took 300 px of an 800 px window
page = st.navigation(list(pages), position="top")
try:
    page.run()
finally:  # also after a page's st.stop(): the URL names the settings the page was drawn with
    share_settings(pages[page])
warm_up()  # the model pages' imports, in the background once the first page is drawn
