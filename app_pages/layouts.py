"""Layouts page: the prescribed patterns, drawn as an N x N mask and over the image's pixels."""

from __future__ import annotations

import numpy as np
import streamlit as st

from app_pages.clicks import take_pixel_click
from app_pages.export_panel import export_panel
from app_pages.settings import LAYOUT_FAMILIES, Setting, clamp_setting, declare_settings
from app_pages.text import markdown_table
from kernels import layouts as L
from kernels.snippets import mask_mod_source
from models.tokens import Geometry, pixel_to_token, token_coords
from viz.export import Exportable, safe_name
from viz.layout_view import mask_view, part_codes, part_names, pixel_view
from viz.maps import mask_figure
from viz.pixels import layout_pixel_figure

GEOMETRIES = {
    "28x28 gray (Fashion-MNIST)": Geometry(28, 28, 1),
    "32x32 RGB (CIFAR-10)": Geometry(32, 32, 3),
}
SPEC = "spec"  # the multiselect's entry for a typed spec (multihead, or any layout)
MAX_SHOWN = 4  # families compared at once: more make the page long and each change slow
# strided and fixed share the page's first inputs (l, c, summary sets): the paper's two layouts,
# compared with the same numbers
SHARED_KEYS = {
    ("strided", "l"): "lay_l",
    ("fixed", "l"): "lay_l",
    ("fixed", "c"): "lay_c",
    ("fixed", "num_verts"): "lay_verts",
}
# what each family keeps (docs/DESIGN.md, "Layouts" and "Other families"); W: tokens a row
RULES = {
    "dense": "every earlier key (j <= i)",
    "local": "a window of the last l keys",
    "column": "every l-th key back from the query",
    "strided": "the last l keys + every l-th key before them (the column above)",
    "fixed": "blocks of l keys + the last c keys of every earlier block",
    "dilated": "w keys spaced r apart back from the query (LongNet)",
    "sinks": "the first s keys (attention sinks) + a window of w (StreamingLLM)",
    "axial": "the row so far + the column above, rows of W tokens (Ho et al.)",
    "neighborhood": "kh rows up to the query's, columns within kw // 2 of its own (local-2D)",
    "block_sparse": "blocks: the last local_blocks + every vert_stride-th (Phi-3-small)",
    "bigbird": "blocks: a window, the first globals, random past ones (BigBird, causal)",
}
PARAM_HELP = {
    "l": "tokens: the stride, window or block length",
    "c": "summary keys at the end of each block (fixed)",
    "num_verts": "summary sets: head h uses set h mod num_verts (fixed)",
    "w": "keys in the window",
    "r": "spacing between kept keys (dilation)",
    "s": "sink tokens at the start",
    "width": "tokens a row (W x C for colour): one image row",
    "kh": "rows of the neighbourhood, the query's own included",
    "kw": "columns of the neighbourhood (kw // 2 either side)",
    "block": "tokens a block",
    "local_blocks": "blocks in the causal window, the query's own included",
    "vert_stride": "every vert_stride-th block is kept for all later queries",
    "window": "blocks in the causal window, the query's own included",
    "globals": "the first blocks, which every query sees",
    "random": "random past blocks a query block sees (at most 16)",
    "seed": "the random blocks' draw",
}


def param_range(family: str, param: str, n: int) -> tuple[int, int]:
    """The values the page takes for ``param`` of ``family`` on an image of n tokens: the
    constructor's minimum, and n for a length (longer changes nothing on this image)."""
    low = 0 if (family, param) in {("bigbird", "globals"), ("bigbird", "random")} else 1
    high = {"num_verts": 16}.get(param, n)
    if family == "bigbird" and param == "random":
        high = 16  # kernels/layouts.py's BigBird limit
    if param == "seed":
        low, high = 0, L.MAX_SPEC_INT
    return low, high


def param_key(family: str, param: str) -> str:
    return SHARED_KEYS.get((family, param), f"lay_{family}_{param}")


def default_params(family: str, geometry: Geometry) -> dict[str, int]:
    """A family sized for this image (kernels.layouts.image_family_params)."""
    return L.image_family_params(family, geometry.row_stride)


def default_spec(geometry: Geometry) -> str:
    w = geometry.row_stride
    return f"multihead(strided(l={w}), axial(width={w}))"


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
    "(the column above). Fixed: blocks of l tokens plus the last c of every earlier block. "
    "The third Show choice compares any static families: also dilated, sinks, axial, "
    "neighborhood, block-sparse, BigBird, or a typed spec such as multihead(...). Top-k and "
    "MoBA are content-based: which keys they keep depends on the scores, so they have no mask "
    "ahead of a run; they are shown on the model pages, not here."
)


def _new_geometry() -> None:
    """A new image size: l goes back to one row of it, the query back to its middle, the other
    families back to their sizes for it (drawn from their defaults when next shown)."""
    g = GEOMETRIES[st.session_state.lay_geometry]
    st.session_state.lay_l = g.row_stride
    st.session_state.lay_row, st.session_state.lay_col = g.height // 2, g.width // 2
    st.session_state.lay_channel = 0
    for family, params in L.FAMILY_PARAMS.items():
        for param in params:
            key = param_key(family, param)
            if key not in SHARED_KEYS.values():
                st.session_state.pop(key, None)
    st.session_state.pop("lay_spec", None)


declare_settings(
    Setting("lay_geometry", str),
    Setting("lay_mode", str, choices=("strided", "fixed", "side by side")),
    Setting("lay_l", int, 28, 1, 3072),
    Setting("lay_c", int, 2, 1, 3072),
    Setting("lay_verts", int, 1, 1, 16),
    Setting("lay_head", int, 0, 0, 15),
    Setting("lay_row", int, 14, 0, 31),
    Setting("lay_col", int, 14, 0, 31),
    Setting("lay_channel", int, 0, 0, 2),
    # the families shown side by side, and each one's parameters (lay_FAMILY_PARAM; strided and
    # fixed keep lay_l, lay_c, lay_verts): the page states and checks each one's own range
    Setting("lay_families", list, ["strided", "fixed"], 0, 4, choices=(*LAYOUT_FAMILIES, SPEC)),
    *(
        Setting(f"lay_{family}_{param}", int, None, 0, L.MAX_SPEC_INT)
        for family, params in L.FAMILY_PARAMS.items()
        if family not in ("strided", "fixed")
        for param in params
    ),
    Setting("lay_spec", str),  # any layout spec (multihead too): the page parses it
)

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

mode = st.radio("Show", ["strided", "fixed", "side by side"], horizontal=True, key="lay_mode")
if mode == "side by side":
    shown = st.multiselect(
        "Families to compare (up to 4)",
        [*LAYOUT_FAMILIES, SPEC],
        key="lay_families",
        max_selections=MAX_SHOWN,
        format_func=lambda f: "spec (type any layout, e.g. multihead)" if f == SPEC else f,
        help="Every static layout of kernels/layouts.py; 'spec' takes any layout spec, "
        "multihead(...) included. Up to four at once.",
    )
else:
    shown = [mode]
# side by side, the families fill a grid two columns wide, so a chart keeps its width (and its
# key, ending "_pair") when a family is added or removed: the browser keeps a chart whose figure
# did not change instead of drawing it again. A chart drawn alone at the full width is another
# element (no suffix): a chart moved from the full width into a column was drawn at a stale,
# smaller size.
suffix = "" if mode != "side by side" else "_pair"

# a click on a pixel view (previous run) moves the query before the inputs are drawn
for kind in shown:
    take_pixel_click(f"lay_pixels_{kind}{suffix}", "lay_row", "lay_col", geometry.width)

# the parameters strided and fixed share (and the head, for layouts whose heads differ)
c1, c2, c3, c4 = st.columns(4)
l_value = c1.number_input(f"l (stride / block length) · 1 to {n}", 1, n, key="lay_l")
c_value = c2.number_input(f"c (summary width, fixed) · 1 to {n}", 1, n, key="lay_c")
verts = c3.number_input("summary sets (fixed num_verts) · 1 to 16", 1, 16, key="lay_verts")
head = c4.number_input("head (layouts whose heads differ) · 0 to 15", 0, 15, key="lay_head")
q1, q2, q3 = st.columns(3)
row = q1.number_input("query row", 0, geometry.height - 1, key="lay_row")
col = q2.number_input("query column", 0, geometry.width - 1, key="lay_col")
channel = q3.number_input("query channel", 0, geometry.channels - 1, key="lay_channel")
query = pixel_to_token(row, col, channel, geometry)

if not shown:
    st.info("Pick at least one family to draw.")
table_slot = st.container()  # the numbers of every layout, above their figures
columns = [
    column
    for _ in range(0, len(shown), 2 if suffix else 1)
    for column in st.columns(2 if suffix else 1)
][: len(shown)]


def family_inputs(family: str) -> L.Layout | None:
    """The family's own parameter inputs (those strided and fixed share are drawn above) and
    its layout, or None with a message naming what is wrong."""
    if family == SPEC:
        st.session_state.setdefault("lay_spec", default_spec(geometry))
        text = st.text_input(
            "layout spec",
            key="lay_spec",
            help="e.g. multihead(strided(l=28), fixed(l=28, c=2)): head h uses pattern h mod p",
        )
        try:
            return L.parse_layout(text)
        except ValueError as e:
            st.error(f"spec: {e}")
            return None
    params = L.FAMILY_PARAMS[family]
    own = [p for p in params if (family, p) not in SHARED_KEYS]
    defaults = default_params(family, geometry)
    for p in own:
        st.session_state.setdefault(param_key(family, p), defaults[p])
    values = {p: st.session_state[param_key(family, p)] for p in params}
    for start in range(0, len(own), 3):  # three inputs a row: a column is narrow
        for p, where in zip(own[start : start + 3], st.columns(3), strict=False):
            low, high = param_range(family, p, n)
            # no bounds on the widget: an impossible value is explained below, not refused
            values[p] = where.number_input(
                f"{p} · {low} to {high:,}", step=1, key=param_key(family, p), help=PARAM_HELP[p]
            )
    bad = []
    for p in params:
        low, high = param_range(family, p, n)
        if not low <= values[p] <= high:
            bad.append(f"{p} must be between {low} and {high:,} (got {values[p]})")
    if bad:
        st.error(f"{family}: " + "; ".join(bad))
        return None
    try:
        return L.parse_layout(f"{family}({', '.join(f'{p}={values[p]}' for p in params)})")
    except ValueError as e:
        st.error(f"{family}: {e}")
        return None


chosen: list[tuple[str, L.Layout, st.delta_generator.DeltaGenerator]] = []
for kind, column in zip(shown, columns, strict=False):
    with column:
        st.markdown(f"**{kind}**: {RULES[kind]}" if kind in RULES else "**spec**: any layout")
        layout = family_inputs(kind)
        if layout is not None:
            chosen.append((kind, layout, column))


@st.cache_data(max_entries=64, show_spinner=False)
def layout_numbers(spec: str, n: int) -> dict:
    layout = L.parse_layout(spec)
    nnz = layout.nnz(n, layout.period)
    return {
        "layout": spec,
        "allowed pairs (nnz)": nnz,
        "keys per query (mean)": round(nnz / (n * layout.period), 1),
        "density vs dense causal": round(layout.density(n), 4),
    }


# The figures are kept across runs and sessions (cache_resource: shared, never copied; nothing
# changes a figure once built): a change redraws only what it changes, so picking a family or
# moving the query leaves the other families' N x N masks (O(N^2) to compute, a PNG or a pooled
# map to build) as they were, and a redraw stays well under a second.
@st.cache_resource(max_entries=48, show_spinner=False)
def mask_view_figure(spec: str, n: int, head: int) -> tuple[np.ndarray, int, object]:
    """(mask, tile, figure): the N x N view of a layout (viz.layout_view.mask_view) drawn."""
    layout = L.parse_layout(spec)
    mask, tile = mask_view(layout, n, head)
    head_note = f", head {head}" if layout.period > 1 else ""
    title = f"{spec}{head_note}: N x N mask" + ("" if tile == 1 else f" (pooled {tile}x{tile})")
    return mask, tile, mask_figure(mask, part_names(layout), tile, title)


@st.cache_resource(max_entries=96, show_spinner=False)
def pixel_view_figure(
    spec: str, geometry_name: str, query: int, head: int
) -> tuple[np.ndarray, object]:
    """(part codes [H, W], figure): the keys of one query token over the image's pixels."""
    layout, geometry = L.parse_layout(spec), GEOMETRIES[geometry_name]
    codes = pixel_view(layout, geometry, query, head)
    row, col, _ = token_coords(query, geometry)
    head_note = f", head {head}" if layout.period > 1 else ""
    title = f"{spec}{head_note}: keys of pixel ({row}, {col})"
    return codes, layout_pixel_figure(codes, part_names(layout), (row, col), title)


@st.cache_data(max_entries=64, show_spinner=False)
def snippet(spec: str) -> str:
    return mask_mod_source(L.parse_layout(spec))


def query_keys(layout: L.Layout) -> dict[str, int]:
    """How many keys the query has: all of them (every channel), and for RGB how many are in
    the channel the pixel view shows (the query's own)."""
    h = head % layout.period
    out = {f"keys of query {query}": int((part_codes(layout, [query], n, h) > 0).sum())}
    if geometry.channels > 1:
        shown_keys = int((pixel_view(layout, geometry, query, h) > 0).sum())
        out[f"of them in channel {channel} (shown)"] = shown_keys
    return out


if chosen:
    with table_slot:
        # a Markdown table: a data frame would load the browser's data grid (1.2 MB of
        # script) on the first page, for a few rows of numbers
        st.markdown(
            markdown_table(
                [
                    {**layout_numbers(repr(layout), n), **query_keys(layout)}
                    for _, layout, _ in chosen
                ]
            )
        )
for kind, layout, column in chosen:
    with column:
        h = head % layout.period
        names = part_names(layout)
        codes, pixel_fig = pixel_view_figure(repr(layout), g_name, query, h)
        st.plotly_chart(
            pixel_fig,
            key=f"lay_pixels_{kind}{suffix}",
            on_select="rerun",
            selection_mode="points",
        )
        st.caption(
            "Colours: " + ", ".join(names) + ". Black ring: the query. A token never attends "
            "to later tokens, so everything below and right of the query is blank."
        )
        mask, tile, mask_fig = mask_view_figure(repr(layout), n, h)
        st.plotly_chart(mask_fig, key=f"lay_mask_{kind}{suffix}")
        # drawn once opened (a rerun): a code block loads the browser's syntax highlighter,
        # 1.5 MB of script the first page would otherwise wait for
        code = st.expander(
            "FlexAttention mask_mod (copy)", key=f"lay_code_{kind}{suffix}", on_change="rerun"
        )
        if code.open:
            with code:
                st.caption(
                    "Self-contained: paste it next to torch's flex_attention; it allows exactly "
                    "the pairs drawn here."
                )
                st.code(snippet(repr(layout)), language="python")
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
