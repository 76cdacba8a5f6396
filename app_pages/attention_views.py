"""The Attention page's head views: the query's rows and a layer's maps (cached), and the
chosen head of one model, or of two side by side, drawn with their captions and exports."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import streamlit as st

from analysis.attention import capture_image, capture_memory, head_maps, query_rows, run_under
from analysis.maps import pixel_map
from analysis.metrics import head_metrics, shared_mass
from app_pages.export_panel import export_panel
from app_pages.jobs import over_budget
from app_pages.models_cache import (
    every_row_of,
    fits_every_row,
    get_model,
    load_or_explain,
    model_path,
)
from app_pages.pickers import ChosenModel
from app_pages.text import as_text
from viz.export import Exportable, model_items, safe_name
from viz.layout_view import pool_tiles, tile_for
from viz.pixels import attention_overlay_figure, pixel_grid_figure

# the N x N map is drawn with at most this many cells a side (tile means above): 196 for the
# 784 tokens of a 28 x 28 image, 38k cells, what a ~450 px chart shows anyway (392 drew 154k
# cells, when the map was a heatmap the largest part of the page's redraw in the browser)
MAP_SIDE = 196

T = TypeVar("T")


# the page's parts (st.fragment keys), each rerun alone: the query's inputs, the all-heads grid,
# the head views and, within them, the pixel views (with the exports). A new query changes the
# inputs, the grid and the pixel views, not the N x N maps; a new layer or head the head views
# (the model and image pickers above them are not rerun, sent or drawn again)
QUERY_PARTS = ["att_query", "att_grid", "att_pixel_views"]


def rerun_for_query() -> None:
    """The callback of a click that moves the query: rerun the parts it changes."""
    st.rerun(QUERY_PARTS)


def rerun_head_views() -> None:
    """The callback of a click on the grid (a layer and head): rerun the head views alone."""
    st.rerun("att_views")


def kept(name: str, key: tuple, build: Callable[[], T]) -> T:
    """``build()``, kept in the session under ``name`` while ``key`` stays: a part the next run
    draws unchanged (the N x N map after a new query) or another part needs (the grid, which
    the head views export) is not built again."""
    held = st.session_state.get(name)
    if held is not None and held[0] == key:
        return held[1]
    value = build()
    st.session_state[name] = (key, value)
    return value


def intervention_of(path: str, under: str):
    """The Intervention of ``under`` for the model at ``path`` (none when "")."""
    from models.model import NO_INTERVENTION

    return run_under(get_model(path), under) if under else NO_INTERVENTION


@st.cache_data(max_entries=64, show_spinner=False)
def cached_rows(
    path: str, img_key: str, query: int, _image: np.ndarray, under: str = ""
) -> np.ndarray:
    """Attention rows of one query in every layer and head: [L, H, N] (cached per model, image,
    query and the attention it runs under), read from every_row_of when it fits, else from a
    capture of that row."""
    if fits_every_row(path):
        return every_row_of(path, img_key, _image, under)[:, :, query].copy()
    return query_rows(get_model(path), _image, query, intervention=intervention_of(path, under))


@st.cache_data(max_entries=16, show_spinner="Capturing the layer...")
def cached_maps(
    path: str, img_key: str, layer: int, tile: int, _image: np.ndarray, under: str = ""
) -> np.ndarray:
    """Every head's map of one layer, [H, n, n] with n = ceil(N / tile) (cached per model,
    image, layer and the attention it runs under): pooled from every_row_of when it fits (no
    forward), else captured in the pooled form (the N x N map never made)."""
    if fits_every_row(path):
        full = every_row_of(path, img_key, _image, under)[layer]  # [H, N, N]
        return pool_tiles(full, tile).astype(np.float32)  # [H, n, n]
    return head_maps(
        get_model(path), _image, layer, tile, intervention=intervention_of(path, under)
    )


@dataclass
class HeadView:
    """One model's view of the chosen layer and head: its query row over the pixels and its
    N x N map, with what the captions say about it."""

    name: str
    layout: str
    row: np.ndarray  # [N]: the query's attention over the keys, in token order
    weights: np.ndarray  # [H, W, C]: the same on the image grid
    maps: np.ndarray  # [n, n], n = ceil(N / tile)


@dataclass(frozen=True)
class Shown:
    """What the Attention page shows: the model, the image, the query (its pixel, channel and
    token, and the keys' channel: one, or None for a pixel's tokens together) and the attention
    the model runs under ("": its own layouts)."""

    chosen: ChosenModel
    image: np.ndarray
    image_name: str
    image_sha1: str
    row: int
    col: int
    channel: int
    query: int
    key_channel: int | None
    under: str

    @property
    def geometry(self):
        return self.chosen.model.config.geometry


def pixel_figure(s: Shown, v: HeadView, layer: int, head: int, how: dict):
    """Where the query pixel looks in one view: a heat map or the weights over the image,
    with the chosen layout outlined. ``how``: view, zmax (one scale for two models), outline,
    named (the model's name in the title)."""
    row, col, geometry, image = s.row, s.col, s.geometry, s.image
    title = (f"{v.name}: " if how["named"] else "") + (
        f"layer {layer}, head {head}: where pixel ({row}, {col}) looks"
    )
    # numbers, not strings: cheaper to send and to draw (the weight of each channel)
    hover = dict(
        hover_values=v.weights,
        hover_template="row %{y}, col %{x}, weight "
        + ", ".join(f"%{{customdata[{k}]:.4f}}" for k in range(geometry.channels)),
    )
    weights = pixel_map(v.row, geometry, s.key_channel)
    if how["view"] == "over the image":
        return attention_overlay_figure(
            image.astype(np.float32).mean(axis=2) / 255.0,
            weights,
            title=title,
            query=(row, col),
            **hover,
            outline=how["outline"],
        )
    return pixel_grid_figure(
        weights,
        title=title,
        query=(row, col),
        **hover,
        colorscale="Viridis",
        zmin=0,
        zmax=how["zmax"],
        colorbar_title="weight",
        outline=how["outline"],
    )


def compared_model(name: str, geometry, layer: int, head: int) -> ChosenModel | None:
    """The model to compare with; None (explained) when it cannot be loaded or cannot show this
    image (of ``geometry``), layer and head."""
    other = load_or_explain(name)
    if other is None:
        return None
    cfg = other.config
    if cfg.geometry != geometry:
        st.info(
            as_text(
                f"'{name}' reads {cfg.geometry.height} x {cfg.geometry.width} x "
                f"{cfg.geometry.channels} images, this image is {geometry.height} x "
                f"{geometry.width} x {geometry.channels}: pick a model of the same geometry."
            )
        )
        return None
    if layer >= cfg.n_layer or head >= cfg.n_head:
        st.info(
            as_text(
                f"'{name}' has {cfg.n_layer} layers of {cfg.n_head} heads: it has no layer "
                f"{layer}, head {head}."
            )
        )
        return None
    return ChosenModel(name, str(model_path(name)), other)


def draw_pixel_views(s: Shown, views: list[HeadView], pixel_figs: list, words: dict) -> None:
    """One model's pixel view and its caption, or two models' side by side with their shared
    weight and each one's statistics."""
    if len(views) == 1:
        st.plotly_chart(
            pixel_figs[0], key="att_pixels", on_select=rerun_for_query, selection_mode="points"
        )
        own = repr(s.chosen.model.layouts[words["layer"]])
        layout_words = (
            f"This layer runs under {as_text(views[0].layout)} (its own layout: {as_text(own)})."
            if s.under
            else f"The model's own layout is {as_text(views[0].layout)}."
        )
        st.caption(f"{words['query']} {words['outlined']} {layout_words}")
        return
    mine, theirs = views
    query = np.array([s.query])
    stats = [head_metrics(v.row.reshape(1, 1, -1), query, s.geometry) for v in views]
    st.markdown(
        as_text(
            f"{mine.name} and {theirs.name}, layer {words['layer']}, head {words['head']}, "
            f"pixel ({s.row}, {s.col}): the two rows share "
            f"{float(shared_mass(mine.row, theirs.row)):.0%} of their weight. {words['query']}"
        )
    )
    a, b = st.columns(2)
    for column, v, fig, m, key in (
        (a, mine, pixel_figs[0], stats[0], "att_pixels"),
        (b, theirs, pixel_figs[1], stats[1], "att_pixels_b"),
    ):
        with column:
            st.plotly_chart(fig, key=key, on_select=rerun_for_query, selection_mode="points")
            st.caption(
                as_text(
                    f"{v.name} ({v.layout}): entropy {float(m['entropy'][0]):.2f} bits, 90% of "
                    f"the weight on {float(m['k90'][0]):.0f} keys, mean distance "
                    f"{float(m['distance'][0]):.1f} px."
                )
                + f" {words['outlined']} One colour scale for both."
            )


MAP_WORDS = "Row i is query i's attention over keys j <= i; colour is log10 of the weight."


def draw_maps(map_figs: list) -> None:
    """The N x N map of each model (two: side by side), with the caption."""
    columns = st.columns(2) if len(map_figs) > 1 else [st.container()]
    for column, fig, key in zip(columns, map_figs, ("att_map", "att_map_b"), strict=False):
        with column:
            st.plotly_chart(fig, key=key, on_select=rerun_for_query, selection_mode="points")
    st.caption(MAP_WORDS)


def export_items(
    s: Shown, views: list[HeadView], pixel_figs, map_figs, words: dict, grid: tuple
) -> list[Exportable]:
    """The downloads: the grid (its figure and maps) and each view's pixel figure and map,
    with their data."""
    chosen, image_name, image_sha1, under = s.chosen, s.image_name, s.image_sha1, s.under
    row, col, channel = s.row, s.col, s.channel
    grid_fig, per_pixel = grid
    layer, head, tile = words["layer"], words["head"], tile_for(s.geometry.n_tokens, MAP_SIDE)
    meta = {
        "model": chosen.name,
        "image": image_name,
        "image_sha1": image_sha1,
        "layer": layer,
        "head": head,
        "query_pixel": [row, col],
        "query_channel": channel,
        "layout": views[0].layout,
        "outline": words["outline_spec"],
        "compared_with": words["compare_name"],
        "under": under or "its own layouts",
    }
    # under another attention: named in every file, e.g. dense-under-axial-width-28-_...
    model_stem = safe_name(chosen.name) + (f"-under-{safe_name(under)[:80]}" if under else "")
    items = [
        Exportable(
            f"{model_stem}_{safe_name(image_name)}_r{row}c{col}_grid",
            grid_fig,
            {"maps": per_pixel},
            meta,
        )
    ]
    for k, (v, pixel_fig, map_fig) in enumerate(zip(views, pixel_figs, map_figs, strict=True)):
        stem = f"{model_stem if k == 0 else safe_name(v.name)}_{safe_name(image_name)}"
        m = (
            meta
            if k == 0
            else {
                **meta,
                "model": v.name,
                "layout": v.layout,
                "compared_with": chosen.name,
                "under": "its own layouts",
            }
        )
        items += [
            Exportable(
                f"{stem}_L{layer}H{head}_r{row}c{col}_pixel", pixel_fig, {"weights": v.weights}, m
            ),
            Exportable(
                f"{stem}_L{layer}H{head}_head",
                map_fig,
                {"probs": v.maps, "tile": np.array(tile)},
                m,
            ),
        ]
    return items


def every_layer_and_head(s: Shown) -> None:
    """The button that prepares every layer x head of this model and image as files (the grid
    and pixel views for the query ``s`` shows), and their export once prepared."""
    if st.button("Prepare every layer x head (zip)", key="att_batch"):
        cfg = s.chosen.model.config
        refusal = over_budget(  # every N x N map of every layer: refused when too big
            "Every layer x head", capture_memory(cfg, cfg.n_layer, cfg.n_head)
        )
        if refusal:
            st.error(refusal)
        else:
            attention = capture_image(
                s.chosen.model,
                s.image,
                query=(s.row, s.col),
                intervention=intervention_of(s.chosen.path, s.under),
            )
            name = s.chosen.name
            st.session_state.att_batch_items = model_items(
                attention,
                model_name=f"{name} under {s.under}" if s.under else name,
                image_name=s.image_name,
            )
    if st.session_state.get("att_batch_items"):
        export_panel(
            st.session_state.att_batch_items,
            "att_batch_export",
            "Export the whole batch",
            default=("png", "svg", "pdf", "npz"),  # HTML: 5 MB a figure (plotly.js inlined)
        )
