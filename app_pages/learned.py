"""Learned vs prescribed: how much of a model's attention the strided and fixed layouts keep."""

import os

import numpy as np
import streamlit as st
import torch

from analysis import metrics as M
from analysis.learned import analyze_layouts, layout_search, pick_images, search_candidates
from app_pages.common import choose_model, export_panel, get_model, pick_image
from kernels.layouts import image_layout_spec, parse_layout
from models.datasets import DatasetError, held_out_source
from models.tokens import image_to_tokens
from viz.export import Exportable, content_key, safe_name
from viz.figures import coverage_figure, search_figure

METRICS_HELP = f"""
**What the numbers mean** (each is a head's mean over its query pixels):
**coverage**: the share of the head's attention that falls on pairs the layout allows;
**entropy**: how spread the attention is, in bits (log2 k for k keys weighted equally);
**k90**: the fewest keys that hold 90 % of a query's attention;
**distance**: the mean distance in pixels from the query to the keys it weights;
**same_row / same_col**: the share of attention on keys in the query's own row / column.

**Head types**, decided in this order:
**row**: at least {M.SHARE:.0%} on its own row, spread over {M.MIN_SPREAD:.0f}+ keys (k90);
**column**: the same up its own column;
**local**: within {M.LOCAL_PX:.0f} px on average and k90 at most {M.LOCAL_KEYS:.0f} keys
(a neighbourhood, like a convolution);
**sparse**: k90 at most {M.SPARSE_KEYS:.0f} keys, wherever they are;
**global**: anything else, broad and far-reaching.
"""

st.title("Learned vs prescribed attention")
st.caption(
    "The paper chose its layouts because a dense network's attention looked like them. Here "
    "that is measured: for every layer and head, the share of attention mass (coverage) that "
    "strided and fixed allow, with the head's type. Use the dense model: a sparse model puts "
    "no weight outside its own layout."
)
c1, c2 = st.columns(2)
chosen = choose_model("lvp_model", c1)
model = chosen.model
over = c2.radio("Measure on", ["one image", "many test images"], horizontal=True, key="lvp_over")
if over == "one image":
    picked = pick_image("lvp", model.config.geometry)
    if picked is None:
        st.stop()
    tokens = image_to_tokens(picked[1])[None]
else:
    st.session_state.setdefault("lvp_count", 8)
    count = st.slider("Test images (spread over the test set)", 2, 64, key="lvp_count")
    try:
        geometry = model.config.geometry
        tokens = pick_images(held_out_source(geometry), geometry, count)
    except DatasetError as e:
        st.error(str(e))
        st.stop()
set_key = content_key(tokens.numpy().astype(np.uint8))


@st.cache_data(max_entries=32, show_spinner="Measuring every head...")
def tables_of(path: str, key: str, specs: tuple[str, ...], _tokens: torch.Tensor) -> list:
    """analyze_model's table for each layout (cached per model, image set and layouts: a pure
    function of them), from one capture and one measurement of what does not depend on the
    layout, its batches measured in a thread per core (8 images, 2 cores: 4.8 s, was 7.4 s
    measuring each layout on its own in two threads)."""
    layouts = [parse_layout(s) for s in specs]
    return analyze_layouts(get_model(path), _tokens, layouts, workers=os.cpu_count() or 1)


@st.cache_data(max_entries=16, show_spinner="Trying candidate layouts...")
def search(path: str, key: str, _tokens: torch.Tensor) -> list[dict]:
    m = get_model(path)
    return layout_search(m, _tokens, search_candidates(m.config.geometry))


def _table_arrays(rows: list[dict]) -> dict[str, np.ndarray]:
    """A metric table as arrays (one per column), for NPZ export."""
    return {k: np.array([r[k] for r in rows]) for k in rows[0]}


specs = [
    image_layout_spec("strided", model.config.row_stride, model.config.block_size),
    image_layout_spec("fixed", model.config.row_stride, model.config.block_size),
]
meta = {"model": chosen.name, "images": int(len(tokens)), "image_set_sha1": set_key}
figures = []
cols = st.columns(2)
tables = dict(zip(specs, tables_of(chosen.path, set_key, tuple(specs), tokens), strict=True))
for spec, col in zip(specs, cols, strict=True):
    with col:
        fig = coverage_figure(tables[spec], f"coverage by {spec}")
        st.plotly_chart(fig, key=f"lvp_cov_{spec.split('(')[0]}")
        figures.append(
            Exportable(
                safe_name(f"{chosen.name}_coverage_{spec}"),
                fig,
                _table_arrays(tables[spec]),
                meta | {"layout": spec},
            )
        )
st.caption(
    "Coverage 1 means the layout allows every key the head uses; each cell names the "
    "head's type (what each type and metric means: below)."
)
st.markdown(METRICS_HELP)
with st.expander("Every metric, per layer and head"):
    st.dataframe(tables[specs[0]], hide_index=True, key="lvp_table")
if st.checkbox(
    "Layout search: which strided(l) / fixed(l, c) keeps most at a given density", key="lvp_search"
):
    rows = search(chosen.path, set_key, tokens)
    st.caption(
        "Density: the share of the dense causal pairs a layout allows (its cost). Coverage: "
        "the share of this model's attention it keeps. Up and to the left is better."
    )
    fig = search_figure(rows, "coverage vs density")
    st.plotly_chart(fig, key="lvp_search_fig")
    st.dataframe(rows, hide_index=True, key="lvp_search_table")
    flat = [{k: v for k, v in r.items() if k != "coverage_per_layer"} for r in rows]
    figures.append(
        Exportable(safe_name(f"{chosen.name}_layout_search"), fig, _table_arrays(flat), meta)
    )
export_panel(figures, "lvp_export")
