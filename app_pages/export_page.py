"""Export page: a batch of figures and their data for one model and image, as one zip."""

import streamlit as st

from app_pages.common import choose_model, pick_image
from viz.export import FORMATS, export_bytes, model_items, zip_bytes

st.title("Export")
st.caption(
    "Every figure the app draws for a model and an image — the all-heads overview, each head's "
    "N x N map, where the query pixel looks in each head, and each layer's layout — in PNG, "
    "SVG, PDF (drawn without a browser), interactive HTML, and the arrays behind them as NPZ. "
    "Metadata (model, layout, layer, head, query pixel, image hash) is inside every file. "
    "Each page also has its own export button. The same batch runs from the command line: "
    "python -m tools.export."
)
model_name, model = choose_model("exp_model")
g = model.config.geometry
picked = pick_image("exp", g)
if picked is None:
    st.stop()
image_name, image = picked
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
    ["grid", "head", "pixel", "layout"],
    default=["grid", "pixel", "layout"],
    key="exp_views",
)
formats = st.multiselect("Formats", FORMATS, default=["png", "npz"], key="exp_formats")
q1, q2, q3 = st.columns(3)
row = q1.number_input("query row", 0, g.height - 1, g.height // 2, key="exp_row")
col = q2.number_input("query column", 0, g.width - 1, g.width // 2, key="exp_col")
dpi = q3.slider("PNG resolution (dpi)", 72, 600, 150, step=6, key="exp_dpi")
if not (layers and heads and views and formats):
    st.info("Choose at least one layer, head, view and format.")
    st.stop()
request = (
    model_name,
    image_name,
    image.tobytes(),
    tuple(layers),
    tuple(heads),
    tuple(views),
    tuple(formats),
    row,
    col,
    dpi,
)
if st.button("Prepare the zip", type="primary", key="exp_run"):
    items = model_items(
        model, model_name, image, image_name, sorted(layers), sorted(heads), views, (row, col)
    )
    bar = st.progress(0.0, text="exporting...")
    files = {}
    for k, item in enumerate(items):
        for fmt in formats:
            files[f"{item.name}.{fmt}"] = export_bytes(item, fmt, dpi=dpi)
        bar.progress((k + 1) / len(items), text=f"{item.name}")
    lines = ["# Exported figures", ""] + [
        f"- {item.name}: " + ", ".join(f"[{f}]({item.name}.{f})" for f in formats) for item in items
    ]
    files["index.md"] = ("\n".join(lines) + "\n").encode()
    st.session_state.exp_zip = (request, zip_bytes(files), len(files))
made = st.session_state.get("exp_zip")
if made and made[0] == request:
    st.download_button(
        f"Download {made[2]} files (zip)",
        made[1],
        file_name="figures.zip",
        mime="application/zip",
        key="exp_download",
    )
