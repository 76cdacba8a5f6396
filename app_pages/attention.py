"""Attention page: every layer and head of a trained model on one image, down to one pixel."""

import numpy as np
import streamlit as st

from analysis.attention import capture_image, capture_memory, head_maps, query_rows
from app_pages.common import (
    as_text,
    choose_model_and_image,
    clamp_setting,
    export_panel,
    get_model,
    show_image,
)
from app_pages.jobs import over_budget
from kernels.layouts import image_layout_spec, parse_layout
from models.tokens import pixel_to_token, token_coords
from viz.export import Exportable, content_key, model_items, safe_name
from viz.figures import (
    attention_map_figure,
    attention_overlay_figure,
    clicked_map_row,
    clicked_pixel,
    clicked_tile,
    head_grid_figure,
    pixel_grid_figure,
)
from viz.layout_view import pixel_view, tile_for

# the N x N map is drawn with at most this many cells a side (tile means above): 196 for the
# 784 tokens of a 28 x 28 image, 38k cells, what a ~450 px chart shows anyway (392 drew 154k
# heatmap cells, the largest part of the page's redraw in the browser)
MAP_SIDE = 196

st.title("Attention per layer and head")
st.caption(
    "Where a trained model looks. Pick a model and an image; the grid shows, for the query "
    "pixel, the attention of every layer and head over the image (each map scaled to its own "
    "maximum unless one colour scale is chosen). Click a tile to pick its layer and head, a "
    "pixel or a row of the N x N map to make it the query."
)
for key, default in {
    "att_row": 14,
    "att_col": 14,
    "att_channel": 0,
    "att_layer": 0,
    "att_head": 0,
}.items():
    st.session_state.setdefault(key, default)

left, right = st.columns([1, 2])
with left:
    chosen, image_name, image = choose_model_and_image("att")
    model = chosen.model
    geometry = model.config.geometry
    show_image(image, image_name)

picked_px = clicked_pixel(st.session_state.get("att_pixels"), geometry.width)
if picked_px is not None and picked_px != st.session_state.get("att_pixels_last"):
    st.session_state.att_pixels_last = picked_px
    st.session_state.att_row, st.session_state.att_col = picked_px
# a click on the N x N map makes the clicked query (row of the map) the query pixel
map_tile = tile_for(geometry.n_tokens, MAP_SIDE)
picked_q = clicked_map_row(st.session_state.get("att_map"))
if picked_q is not None and picked_q != st.session_state.get("att_map_last"):
    st.session_state.att_map_last = picked_q
    q = min(max(picked_q * map_tile, 0), geometry.n_tokens - 1)
    st.session_state.att_row, st.session_state.att_col, st.session_state.att_channel = (
        int(v) for v in token_coords(q, geometry)
    )
for key, high in (
    ("att_row", geometry.height - 1),
    ("att_col", geometry.width - 1),
    ("att_channel", geometry.channels - 1),
):
    clamp_setting(key, 0, high)  # a value kept from another model or a link
with left:
    row = st.number_input("query row", 0, geometry.height - 1, key="att_row")
    col = st.number_input("query column", 0, geometry.width - 1, key="att_col")
    channel = st.number_input("query channel", 0, geometry.channels - 1, key="att_channel")
query = pixel_to_token(row, col, channel, geometry)


@st.cache_data(max_entries=64, show_spinner=False)
def cached_rows(path: str, img_key: str, query: int, _image: np.ndarray) -> np.ndarray:
    """Attention rows of one query in every layer and head: [L, H, N] (cached per model, image
    and query)."""
    return query_rows(get_model(path), _image, query)


@st.cache_data(max_entries=16, show_spinner="Capturing the layer...")
def cached_maps(path: str, img_key: str, layer: int, tile: int, _image: np.ndarray) -> np.ndarray:
    """Every head's map of one layer, [H, n, n] with n = ceil(N / tile) (cached per model,
    image and layer)."""
    return head_maps(get_model(path), _image, layer, tile)


image_sha1 = content_key(image)
rows = cached_rows(chosen.path, image_sha1, query, image)  # [L, H, N]
L_, H_, N = rows.shape
per_pixel = rows.reshape(L_, H_, geometry.height, geometry.width, geometry.channels)
# a click on a tile of the grid picks its layer and head (before their selectboxes are drawn)
picked_tile = clicked_tile(st.session_state.get("att_grid"), H_)
if picked_tile is not None and picked_tile != st.session_state.get("att_grid_last"):
    st.session_state.att_grid_last = picked_tile
    if picked_tile[0] < L_ and picked_tile[1] < H_:
        st.session_state.att_layer, st.session_state.att_head = picked_tile
# no box around the chosen head: the grid then changes only with the query, and a layer or
# head switch leaves the page's largest chart as it is (not re-sent, not redrawn)
with right:
    shared = st.checkbox("one colour scale for all tiles", key="att_shared_scale")
grid_fig = head_grid_figure(
    per_pixel[..., channel],
    f"pixel ({row}, {col}): all heads",
    query=(row, col),
    shared_scale=shared,
)
with right:
    st.plotly_chart(grid_fig, key="att_grid", on_select="rerun", selection_mode="points")
    c1, c2, c3 = st.columns(3)
    layer = c1.selectbox("Layer", list(range(L_)), key="att_layer")
    head = c2.selectbox("Head", list(range(H_)), key="att_head")
    own = repr(model.layouts[layer])
    outline_choices = ["none", own] + [
        s
        for s in (
            image_layout_spec("strided", model.config.row_stride, model.config.block_size),
            image_layout_spec("fixed", model.config.row_stride, model.config.block_size),
        )
        if s != own
    ]
    outline_spec = c3.selectbox("Outline a layout", outline_choices, key="att_outline")

weights = per_pixel[layer, head]  # [H, W, C]
outline = None
if outline_spec != "none":
    outline = pixel_view(parse_layout(outline_spec), geometry, query, head) > 0
hover = np.empty((geometry.height, geometry.width), dtype=object)
for r in range(geometry.height):
    for c in range(geometry.width):
        ws = ", ".join(f"{weights[r, c, k]:.4f}" for k in range(geometry.channels))
        hover[r, c] = f"row {r}, col {c}, weight {ws}"
view = st.radio(
    "Show the head's weights",
    ["as a heat map", "over the image"],
    key="att_view",
    horizontal=True,
)
if view == "over the image":
    pixel_fig = attention_overlay_figure(
        image.astype(np.float32).mean(axis=2) / 255.0,
        weights.max(axis=2),
        title=f"layer {layer}, head {head}: where pixel ({row}, {col}) looks",
        query=(row, col),
        hover=hover,
        outline=outline,
    )
else:
    pixel_fig = pixel_grid_figure(
        weights.max(axis=2),
        title=f"layer {layer}, head {head}: where pixel ({row}, {col}) looks",
        query=(row, col),
        hover=hover,
        colorscale="Viridis",
        zmin=0,
        colorbar_title="weight",
        outline=outline,
    )
a, b = st.columns(2)
with a:
    st.plotly_chart(
        pixel_fig,
        key="att_pixels",
        on_select="rerun",
        selection_mode="points",
    )
    r_, c_, ch_ = token_coords(query, geometry)
    outlined = (
        "No layout outlined."
        if outline_spec == "none"
        else f"Orange squares: the keys {as_text(outline_spec)} allows."
    )
    st.caption(
        f"Query token {query} (row {r_}, column {c_}, channel {ch_}). {outlined} "
        f"The model's own layout is {as_text(own)}."
    )
with b:
    tile = tile_for(N, MAP_SIDE)
    maps = cached_maps(chosen.path, image_sha1, layer, tile, image)[head]
    title = f"layer {layer}, head {head}: N x N map" + (
        f" ({tile}x{tile} mean)" if tile > 1 else ""
    )
    map_fig = attention_map_figure(maps, tile, title)
    st.plotly_chart(map_fig, key="att_map", on_select="rerun", selection_mode="points")
    st.caption("Row i is query i's attention over keys j <= i; colour is log10 of the weight.")

# downloads: these three figures, or every layer x head of this model and image as a zip
meta = {
    "model": chosen.name,
    "image": image_name,
    "image_sha1": image_sha1,
    "layer": layer,
    "head": head,
    "query_pixel": [row, col],
    "query_channel": channel,
    "layout": own,
    "outline": outline_spec,
}
stem = f"{safe_name(chosen.name)}_{safe_name(image_name)}"
items = [
    Exportable(f"{stem}_r{row}c{col}_grid", grid_fig, {"maps": per_pixel[..., channel]}, meta),
    Exportable(f"{stem}_L{layer}H{head}_r{row}c{col}_pixel", pixel_fig, {"weights": weights}, meta),
    Exportable(
        f"{stem}_L{layer}H{head}_head", map_fig, {"probs": maps, "tile": np.array(tile)}, meta
    ),
]
e1, e2 = st.columns(2)
with e1:
    export_panel(items, "att_export", "Export these figures")
with e2:
    if st.button("Prepare every layer x head (zip)", key="att_batch"):
        cfg = model.config
        refusal = over_budget(  # every N x N map of every layer: refused when too big
            "Every layer x head", capture_memory(cfg, cfg.n_layer, cfg.n_head)
        )
        if refusal:
            st.error(refusal)
        else:
            attention = capture_image(model, image, query=(row, col))
            batch = model_items(attention, model_name=chosen.name, image_name=image_name)
            st.session_state.att_batch_items = batch
    if st.session_state.get("att_batch_items"):
        export_panel(
            st.session_state.att_batch_items,
            "att_batch_export",
            "Export the whole batch",
            default=("png", "svg", "pdf", "npz"),  # HTML: 5 MB a figure (plotly.js inlined)
        )
