"""The Attention page's head views: the query's rows and a layer's maps (cached), and the
chosen head of one model, or of two side by side, drawn with their captions and exports."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import streamlit as st

from analysis.attention import head_maps, query_rows, run_under
from analysis.maps import pixel_map
from analysis.metrics import head_metrics, shared_mass
from app_pages.models_cache import (
    every_row_of,
    fits_every_row,
    get_model,
    load_or_explain,
    model_path,
)
from app_pages.pickers import ChosenModel
from app_pages.text import as_text
from viz.export import Exportable, safe_name
from viz.layout_view import pool_tiles, tile_for
from viz.pixels import attention_overlay_figure, pixel_grid_figure

# the N x N map is drawn with at most this many cells a side (tile means above): 196 for the
# 784 tokens of a 28 x 28 image, 38k cells, what a ~450 px chart shows anyway (392 drew 154k
# heatmap cells, the largest part of the page's redraw in the browser)
MAP_SIDE = 196

T = TypeVar("T")


# the page's parts (st.fragment keys), each rerun alone: the query's inputs, the all-heads grid
# and the head views. A new query changes all three; a new layer or head the head views only
# (the model and image pickers above them are not rerun, sent or drawn again)
QUERY_PARTS = ["att_query", "att_grid", "att_views"]


def rerun_for_query() -> None:
    """The callback of a click or an input that moves the query: rerun the parts it changes."""
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


def other_model(
    s: Shown, name: str, layer: int, head: int
) -> tuple[ChosenModel, np.ndarray] | None:
    """The model to compare with and its rows for this query, [L, H, N]; None (explained)
    when it cannot be loaded or cannot show this image, layer and head."""
    geometry = s.geometry
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
    path = str(model_path(name))
    return ChosenModel(name, path, other), cached_rows(path, s.image_sha1, s.query, s.image)


def draw_one(s: Shown, mine: HeadView, pixel_fig, map_fig, words: dict) -> None:
    """One model's pixel view and N x N map side by side, with their captions."""
    model, under = s.chosen.model, s.under
    a, b = st.columns(2)
    with a:
        st.plotly_chart(
            pixel_fig, key="att_pixels", on_select=rerun_for_query, selection_mode="points"
        )
        own = repr(model.layouts[words["layer"]])
        layout_words = (
            f"This layer runs under {as_text(mine.layout)} (its own layout: {as_text(own)})."
            if under
            else f"The model's own layout is {as_text(mine.layout)}."
        )
        st.caption(f"{words['query']} {words['outlined']} {layout_words}")
    with b:
        st.plotly_chart(map_fig, key="att_map", on_select=rerun_for_query, selection_mode="points")
        st.caption(words["map"])


def draw_two(
    s: Shown, views: list[HeadView], pixel_figs: list, map_figs: list, words: dict
) -> None:
    """Two models' pixel views and maps, their shared weight and each one's statistics."""
    row, col, geometry, query = s.row, s.col, s.geometry, s.query
    mine, theirs = views
    stats = [head_metrics(v.row.reshape(1, 1, -1), np.array([query]), geometry) for v in views]
    st.markdown(
        as_text(
            f"{mine.name} and {theirs.name}, layer {words['layer']}, head {words['head']}, "
            f"pixel ({row}, {col}): the two rows share "
            f"{float(shared_mass(mine.row, theirs.row)):.0%} of their weight."
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
    a, b = st.columns(2)
    for column, fig, key in ((a, map_figs[0], "att_map"), (b, map_figs[1], "att_map_b")):
        with column:
            st.plotly_chart(fig, key=key, on_select=rerun_for_query, selection_mode="points")
    st.caption(f"{words['query']} {words['map']}")


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
