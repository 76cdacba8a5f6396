"""Layouts page: the prescribed patterns, drawn as an N x N mask and over the image's pixels."""

import numpy as np
import streamlit as st

from app_pages.common import clamp_setting, export_panel, take_pixel_click
from kernels import layouts as L
from models.tokens import Geometry, pixel_to_token
from viz.export import Exportable, safe_name
from viz.figures import layout_pixel_figure, mask_figure
from viz.layout_view import mask_view, part_codes, part_names, pixel_view

GEOMETRIES = {
    "28x28 gray (Fashion-MNIST)": Geometry(28, 28, 1),
    "32x32 RGB (CIFAR-10)": Geometry(32, 32, 3),
}

st.title("Sparse attention layouts")
st.markdown(
    "**Sparse Transformer Explorer.** A Sparse Transformer (Child et al. 2019) generates an "
    "image one pixel at a time, and each pixel may look only at some of the earlier ones: "
    "its attention *layout*. This app shows those layouts, what small models trained on "
    "Fashion-MNIST actually attend to, and how they complete images. "
    "**Start here:** click a pixel below to see which pixels it may attend to; then open "
    "**Attention** (a trained model's heads), **Learned vs prescribed** (how well the "
    "layouts match what a dense model learned) or **Complete** (let the models draw) in the "
    "menu."
)
st.caption(
    "An image is a sequence of tokens in raster order, channels interleaved; l is usually "
    "one image row. Strided: a window of the last l tokens plus every l-th token before it "
    "(the column above). Fixed: blocks of l tokens plus the last c of every earlier block."
)


def _new_geometry() -> None:
    """A new image size: l goes back to one row of it, the query back to its middle."""
    g = GEOMETRIES[st.session_state.lay_geometry]
    st.session_state.lay_l = g.row_stride
    st.session_state.lay_row, st.session_state.lay_col = g.height // 2, g.width // 2
    st.session_state.lay_channel = 0


# session-state defaults, once; the widgets below take their values from here
for key, default in {
    "lay_l": 28,
    "lay_c": 2,
    "lay_verts": 1,
    "lay_head": 0,
    "lay_row": 14,
    "lay_col": 14,
    "lay_channel": 0,
}.items():
    st.session_state.setdefault(key, default)

g_name = st.selectbox("Image", list(GEOMETRIES), key="lay_geometry", on_change=_new_geometry)
geometry = GEOMETRIES[g_name]
n = geometry.n_tokens
for key, high in (  # a value from a link may not fit this image
    ("lay_l", n),
    ("lay_c", n),
    ("lay_row", geometry.height - 1),
    ("lay_col", geometry.width - 1),
    ("lay_channel", geometry.channels - 1),
):
    clamp_setting(key, 1 if key in ("lay_l", "lay_c") else 0, high)

# a click on a pixel view (previous run) moves the query before the inputs are drawn
for chart_key in [f"lay_pixels_{k}{s}" for k in ("strided", "fixed") for s in ("", "_pair")]:
    take_pixel_click(chart_key, "lay_row", "lay_col", geometry.width)

mode = st.radio("Show", ["strided", "fixed", "side by side"], horizontal=True, key="lay_mode")
c1, c2, c3, c4 = st.columns(4)
l_value = c1.number_input("l (stride / block length)", 1, n, key="lay_l")
c_value = c2.number_input("c (summary width, fixed)", 1, n, key="lay_c")
verts = c3.number_input("summary sets (fixed num_verts)", 1, 16, key="lay_verts")
head = c4.number_input("head (fixed with several sets)", 0, 15, key="lay_head")
q1, q2, q3 = st.columns(3)
row = q1.number_input("query row", 0, geometry.height - 1, key="lay_row")
col = q2.number_input("query column", 0, geometry.width - 1, key="lay_col")
channel = q3.number_input("query channel", 0, geometry.channels - 1, key="lay_channel")

chosen = []
for kind in ("strided", "fixed"):
    if mode not in (kind, "side by side"):
        continue
    try:
        layout = L.strided(l_value) if kind == "strided" else L.fixed(l_value, c_value, verts)
    except ValueError as e:
        st.error(f"{kind}: {e}")
        continue
    chosen.append((kind, layout))

query = pixel_to_token(row, col, channel, geometry)


def query_keys(layout: L.Layout) -> dict[str, int]:
    """How many keys the query has: all of them (every channel), and for RGB how many are in
    the channel the pixel view shows (the query's own)."""
    h = head % layout.period
    out = {f"keys of query {query}": int((part_codes(layout, [query], n, h) > 0).sum())}
    if geometry.channels > 1:
        shown = int((pixel_view(layout, geometry, query, h) > 0).sum())
        out[f"of them in channel {channel} (shown)"] = shown
    return out


if chosen:
    st.dataframe(
        [
            {
                "layout": repr(layout),
                "allowed pairs (nnz)": layout.nnz(n, layout.period),
                "keys per query (mean)": round(
                    layout.nnz(n, layout.period) / (n * layout.period), 1
                ),
                "density vs dense causal": round(layout.density(n), 4),
                **query_keys(layout),
            }
            for _, layout in chosen
        ],
        hide_index=True,
        key="lay_table",
    )
# a chart drawn alone and one of a pair are distinct elements (keys ending "_pair"): a chart
# moved from the full width into a column of two was drawn at a stale, smaller size
pair = "_pair" if len(chosen) == 2 else ""
for (kind, layout), column in zip(chosen, st.columns(len(chosen) or 1), strict=False):
    with column:
        h = head % layout.period
        names = part_names(layout)
        codes = pixel_view(layout, geometry, query, h)
        pixel_fig = layout_pixel_figure(
            codes, names, (row, col), f"{layout!r}: keys of pixel ({row}, {col})"
        )
        st.plotly_chart(
            pixel_fig,
            key=f"lay_pixels_{kind}{pair}",
            on_select="rerun",
            selection_mode="points",
        )
        st.caption(
            "Colours: " + ", ".join(names) + ". Black ring: the query. A token never attends "
            "to later tokens, so everything below and right of the query is blank."
        )
        mask, tile = mask_view(layout, n, h)
        title = f"{layout!r}: N x N mask" + ("" if tile == 1 else f" (pooled {tile}x{tile})")
        mask_fig = mask_figure(mask, names, tile, title)
        st.plotly_chart(mask_fig, key=f"lay_mask_{kind}{pair}")
        meta = {
            "layout": repr(layout),
            "head": h,
            "image": str(geometry),
            "query_pixel": [row, col],
            "query_channel": channel,
            "parts": names,
        }
        stem = safe_name(f"{layout!r}_{geometry}")
        export_panel(
            [
                Exportable(f"{stem}_r{row}c{col}_pixel", pixel_fig, {"part_codes": codes}, meta),
                Exportable(f"{stem}_mask", mask_fig, {"mask": mask, "tile": np.array(tile)}, meta),
            ],
            f"lay_export_{kind}",
        )
