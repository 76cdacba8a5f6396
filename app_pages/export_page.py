"""Export page: a batch of figures and their data for one model and image, as one zip."""

import streamlit as st

from analysis.attention import capture_image
from app_pages.common import choose_model_and_image
from viz.export import FORMATS, VIEWS, export_files, index_markdown, model_items, zip_bytes

st.title("Export")
st.caption(
    "Every figure the app draws for a model and an image — the all-heads overview, each head's "
    "N x N map, where the query pixel looks in each head, and each layer's layout — in PNG, "
    "SVG, PDF (drawn without a browser), interactive HTML, and the arrays behind them as NPZ. "
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
if not (layers and heads and views and formats):
    st.info("Choose at least one layer, head, view and format.")
    st.stop()
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
)
if st.button("Prepare the zip", type="primary", key="exp_run"):
    attention = capture_image(
        model,
        image,
        query=(row, col),
        layers=sorted(layers),
        heads=sorted(heads),
        maps="head" in views,
    )
    items = model_items(attention, model_name=chosen.name, image_name=image_name, views=views)
    bar = st.progress(0.0, text="exporting...")
    done = []

    def show_progress(name: str) -> None:
        done.append(name)
        bar.progress(len(done) / (len(items) * len(formats)), text=name)

    files = export_files(items, formats, dpi=dpi, on_file=show_progress)
    files["index.md"] = index_markdown(items, formats).encode()
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
