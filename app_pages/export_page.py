"""Export page: a batch of figures and their data for one model and image, as one zip."""

import streamlit as st

from analysis.attention import capture_image, capture_memory
from app_pages.export_panel import export_job
from app_pages.jobs import over_budget
from app_pages.pickers import choose_model_and_image
from viz.export import FORMATS, HEAVY_FORMATS, VIEWS, estimate_views, model_items

st.title("Export")
st.caption(
    "Every figure the app draws for a model and an image — the all-heads overview, each head's "
    "N x N map, where the query pixel looks in each head, and each layer's layout — in PNG, "
    "SVG, PDF (drawn without a browser; an N x N map is one image in them), interactive HTML "
    "(of the N x N maps only when asked: ~6 MB each), and the arrays as NPZ. "
    "Metadata (model, layout, layer, head, query pixel, image hash) is inside every file. "
    "Each page also has its own export button. The same batch runs from the command line: "
    "python -m tools.export."
)
chosen, image_name, image = choose_model_and_image("exp")
model = chosen.model
g = model.config.geometry
c1, c2 = st.columns(2)
layers = c1.multiselect(
    "Layers",
    list(range(model.config.n_layer)),
    default=list(range(model.config.n_layer)),
    key="exp_layers",
)
heads = c2.multiselect(
    "Heads",
    list(range(model.config.n_head)),
    default=list(range(model.config.n_head)),
    key="exp_heads",
)
views = st.multiselect(
    "Views",
    list(VIEWS),
    default=["grid", "pixel", "layout"],
    key="exp_views",
)
formats = st.multiselect("Formats", FORMATS, default=["png", "npz"], key="exp_formats")
q1, q2, q3 = st.columns(3)
row = q1.number_input("query row", 0, g.height - 1, g.height // 2, key="exp_row")
col = q2.number_input("query column", 0, g.width - 1, g.width // 2, key="exp_col")
dpi = q3.slider("PNG resolution (dpi)", 72, 600, 150, step=6, key="exp_dpi")
heavy = False
if "head" in views and any(f in HEAVY_FORMATS for f in formats):
    heavy = st.checkbox(
        f"Also {', '.join(HEAVY_FORMATS).upper()} of the N x N maps (~6 MB each: plotly.js "
        "inlined, and the map)",
        key="exp_heavy",
    )
if not (layers and heads and views and formats):
    st.info("Choose at least one layer, head, view and format.")
    st.stop()
# told before anything starts: the files, their size, the time and the memory they take
guess = estimate_views(g, len(layers), len(heads), views, formats, dpi=dpi, heavy=heavy)
st.caption(f"This export: {guess.describe()}.")
# the attention it is drawn from: with the "head" view, every N x N map of the chosen layers
need = capture_memory(model.config, len(layers), len(heads), maps="head" in views)
refusal = over_budget("This export", guess.memory + need)
if refusal:
    st.error(refusal)
request = (
    chosen.path,
    image_name,
    image.tobytes(),
    tuple(layers),
    tuple(heads),
    tuple(views),
    tuple(formats),
    row,
    col,
    dpi,
    heavy,
)
start = st.button("Prepare the zip", type="primary", key="exp_run", disabled=bool(refusal))
if start:
    attention = capture_image(
        model,
        image,
        query=(row, col),
        layers=sorted(layers),
        heads=sorted(heads),
        maps="head" in views,
    )
    items = model_items(attention, model_name=chosen.name, image_name=image_name, views=views)
    st.session_state.exp_items = (request, items)
made_items = st.session_state.get("exp_items")
if made_items and made_items[0] == request:
    # made in the server's worker pool: its place in the queue, a progress bar and Cancel
    job = export_job("exp", made_items[1], formats, dpi=dpi, heavy=heavy, start=start)
    if job is not None:
        data, count = job.result
        st.session_state.exp_zip = (request, data, count)
made = st.session_state.get("exp_zip")
if made and made[0] == request:
    st.download_button(
        f"Download {made[2]} files (zip)",
        made[1],
        file_name="figures.zip",
        mime="application/zip",
        key="exp_download",
        on_click="ignore",
    )
