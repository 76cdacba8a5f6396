"""Learned vs prescribed: how much of a model's attention the strided and fixed layouts keep."""

import os
from pathlib import Path

import numpy as np
import streamlit as st
import torch

from analysis import metrics as M
from analysis.learned import analyze_layouts, layout_search, pick_images, search_candidates
from app_pages.export_panel import export_panel
from app_pages.models_cache import get_model
from app_pages.pickers import choose_model, pick_image
from app_pages.settings import Setting, declare_settings, image_settings, model_setting
from app_pages.text import as_text
from kernels.layouts import image_layout_spec, parse_layout
from models.datasets import DatasetError, held_out_source
from models.tokens import image_to_tokens
from viz.charts import search_figure
from viz.export import Exportable, content_key, safe_name
from viz.frontier_figure import (
    FrontierError,
    at_density,
    coverage_bars,
    coverage_sentence,
    family_label,
    pick_at_density,
    read_frontier,
    recorded_model,
    shipped_frontier_path,
)
from viz.head_tables import coverage_figure

# every family scored at this share of the causal pairs (the point of each nearest it)
EQUAL_DENSITY = 0.1

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

declare_settings(
    model_setting("lvp_model"),
    Setting("lvp_over", str, choices=("one image", "many test images")),
    Setting("lvp_count", int, 8, 2, 64),
    Setting("lvp_search", bool),
    *image_settings("lvp"),
)
st.title("Learned vs prescribed attention")
opening = st.empty()  # the one sentence a newcomer reads first: filled once it is measured
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
    layout, its batches measured in a thread per core: the capture and the layout-free part
    are the most of the work, so they are done once for every layout (docs/BENCHMARKS.md)."""
    layouts = [parse_layout(s) for s in specs]
    return analyze_layouts(get_model(path), _tokens, layouts, workers=os.cpu_count() or 1)


@st.cache_data(max_entries=16, show_spinner="Trying candidate layouts...")
def search(path: str, key: str, _tokens: torch.Tensor) -> list[dict]:
    m = get_model(path)
    return layout_search(m, _tokens, search_candidates(m.config.geometry))


def _table_arrays(rows: list[dict]) -> dict[str, np.ndarray]:
    """A metric table as arrays (one per column), for NPZ export."""
    return {k: np.array([r[k] for r in rows]) for k in rows[0]}


@st.cache_data(max_entries=4, ttl=3600, show_spinner=False)
def shipped_rows(path: str, stamp: tuple, density: float) -> tuple[list[dict], dict] | str:
    """at_density of the shipped frontier (and the frontier), or why it cannot be read."""
    try:
        result = read_frontier(path)
    except FrontierError as e:
        return str(e)
    return at_density(result, density), result


@st.cache_data(max_entries=16, show_spinner="Scoring every family at equal density...")
def measured_rows(path: str, key: str, density: float, _tokens: torch.Tensor) -> list[dict]:
    """Each family's choice at ``density`` (viz.frontier_figure.pick_at_density of analysis.
    frontier's candidates) and the share of the model's attention on ``_tokens`` it keeps
    (attention_mass), the highest first; [] when the model is too long for the mean maps."""
    from analysis.frontier import FAMILIES, MAX_COVERAGE_N, attention_mass, frontier_specs
    from kernels.selection import MoBA, TopK, parse_attention

    m = get_model(path)
    geometry = m.config.geometry
    n = geometry.n_tokens
    if n > MAX_COVERAGE_N:
        return []
    candidates = {f: v for f, v in frontier_specs(FAMILIES, geometry).items() if v}
    every = {s: parse_attention(s) for specs in candidates.values() for s in specs}
    top = max([a.k for a in every.values() if isinstance(a, TopK)], default=1)
    mobas = [s for s, a in every.items() if isinstance(a, MoBA)]
    mass = attention_mass(m, _tokens, mobas, top_k=top)
    rows = []
    for f, specs in candidates.items():
        points = [
            {
                "spec": s,
                "density": every[s].density(n),
                "keys": every[s].nnz(n) / n,
                "bpd": None,
                "coverage": float(mass.coverage(every[s]).mean()),
            }
            for s in specs
        ]
        rows.append({"family": f, "label": family_label(f), **pick_at_density(points, density)})
    return sorted(rows, key=lambda r: -r["coverage"])


def equal_density_rows() -> tuple[list[dict], str]:
    """Every family at EQUAL_DENSITY for this model: from the shipped frontier when this is the
    model it was measured on, else measured on this page's images; and where they come from."""
    frontier = shipped_frontier_path()
    try:
        info = frontier.stat()
        stamp = (info.st_size, info.st_mtime_ns)
    except OSError:
        stamp = ()
    found = shipped_rows(str(frontier), stamp, EQUAL_DENSITY) if stamp else "absent"
    if not isinstance(found, str) and recorded_model(found[1]) == Path(chosen.path).resolve():
        return found[0], (
            f"from the shipped frontier, {frontier.name}, on {found[1].get('images', '?')} test "
            "images"
        )
    what = "this image" if len(tokens) == 1 else f"these {len(tokens)} test images"
    return measured_rows(chosen.path, set_key, EQUAL_DENSITY, tokens), f"measured on {what}"


density_rows, density_source = equal_density_rows()
if density_rows:
    opening.markdown(
        "**"
        + as_text(coverage_sentence(density_rows, EQUAL_DENSITY))
        + f"** ({as_text(density_source)}; top-k is the oracle that keeps each query's "
        "largest weights. Each family at its best choice about that density: below.)"
    )
else:
    opening.info("This model is too long to score every family's coverage here.")
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
if density_rows:
    with st.expander(f"Every family at about {EQUAL_DENSITY:.0%} of the keys"):
        bars = coverage_bars(
            density_rows, f"{chosen.name}: attention kept at about {EQUAL_DENSITY:.0%} of the keys"
        )
        st.plotly_chart(bars, key="lvp_equal_density")
        st.dataframe(density_rows, hide_index=True)
        figures.append(
            Exportable(
                safe_name(f"{chosen.name}_coverage_at_{EQUAL_DENSITY:.0%}"),
                bars,
                {
                    "family": np.array([r["family"] for r in density_rows]),
                    "spec": np.array([r["spec"] for r in density_rows]),
                    "density": np.array([r["density"] for r in density_rows]),
                    "coverage": np.array(
                        [np.nan if r["coverage"] is None else r["coverage"] for r in density_rows]
                    ),
                },
                meta | {"source": density_source},
            )
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
