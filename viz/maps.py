"""N x N maps, query i downwards and key j across: a layout's mask (exact part codes, or the
allowed share of each tile of a pooled view) and one head's attention (log-scaled, the means of
tiles for a long sequence), each with the hover naming the query and key ranges of a tile.

The attention map carries an invisible scatter of one point per map row (trace MAP_ROWS_TRACE),
which clicked_map_row reads: a click on a row picks that query.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import plotly.graph_objects as go
from PIL import Image

from viz.style import (
    PART_COLORS,
    _clicked_point,
    _part_rgb,
    _unit_heatmap,
    click_targets,
    colorbar_margin,
)


def _png_data_uri(rgb: np.ndarray) -> str:
    """uint8 [H, W, 3] as a data: URI of a PNG (what go.Image's ``source`` takes)."""
    buf = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _tile_ranges(shape: tuple[int, int], tile: int, n: int) -> np.ndarray:
    """uint16 [R, C, 4]: the first and last query and key of every tile of a pooled N x N map
    (hover data: "queries 400-413, keys 292-305"; a typed array, a few bytes a cell)."""
    r, c = shape
    rows = np.arange(r)[:, None].repeat(c, 1) * tile
    cols = np.arange(c)[None, :].repeat(r, 0) * tile
    last = n - 1
    return np.stack(
        [rows, np.minimum(rows + tile - 1, last), cols, np.minimum(cols + tile - 1, last)], -1
    ).astype(np.uint16)


TILE_HOVER = "queries %{customdata[0]}-%{customdata[1]}, keys %{customdata[2]}-%{customdata[3]}"


# a pooled mask's allowed share per tile, white (none) to black (all), with the small shares
# pulled apart from 0: a column part is one key in l per row (1/12 of a 12 x 12 tile at 32 x 32
# x 3), which a linear grey scale draws all but white
MASK_SHARE_SCALE = [
    [0.0, "#ffffff"],
    [0.001, "#d0d0d0"],
    [0.05, "#a0a0a0"],
    [0.2, "#606060"],
    [0.5, "#303030"],
    [1.0, "#000000"],
]


def _map_axes(fig: go.Figure, n: int) -> None:
    """The axes of an N x N map: query i downwards, key j across, square cells."""
    # fixed to the map (constrain="domain": a narrow chart shrinks the square, it does not
    # widen an axis beyond 0..n), the square at the top of the chart
    fig.update_yaxes(
        autorange=False,
        title="query i",
        scaleanchor="x",
        range=[n, 0],
        constrain="domain",
        constraintoward="top",
    )
    fig.update_xaxes(title="key j", range=[0, n], autorange=False, constrain="domain")


def mask_figure(codes: np.ndarray, names: list[str], tile: int, title: str) -> go.Figure:
    """The N x N layout: exact part codes (tile = 1) or pooled density per tile."""
    if tile == 1:
        n = codes.shape[0]
        # drawn as one PNG (a few kB) rather than N^2 heatmap cells (MBs of JSON, seconds of
        # plotly.js on the first page); the legend names the colours and the hover says where
        fig = go.Figure(
            go.Image(
                source=_png_data_uri(_part_rgb(names)[codes]),
                hovertemplate="query %{y}, key %{x}<extra></extra>",
                name="mask",
            )
        )
        for name in names:  # a legend for the parts
            fig.add_trace(
                go.Scatter(
                    x=[None],
                    y=[None],
                    mode="markers",
                    name=name,
                    marker=dict(color=PART_COLORS.get(name), symbol="square"),
                )
            )
    else:
        n = codes.shape[0] * tile
        fig = _unit_heatmap(
            codes,
            "mask",
            MASK_SHARE_SCALE,
            TILE_HOVER + ": %{z:.3f} allowed<extra></extra>",
            x0=tile / 2,
            dx=tile,
            y0=tile / 2,
            dy=tile,
            customdata=_tile_ranges(codes.shape, tile, n),
            colorbar=dict(title="allowed share"),
        )
    _map_axes(fig, n)
    fig.update_layout(
        title=title,
        height=520,
        margin=dict(l=40, r=20, t=50, b=40),
        plot_bgcolor="white",
        legend=dict(orientation="h", y=-0.15),
    )
    return fig


def attention_map_figure(probs: np.ndarray, tile: int, title: str) -> go.Figure:
    """One head's N x N attention map (pooled by ``tile`` when tile > 1), log-scaled colour.

    Over the heatmap, an invisible scatter "queries" (trace MAP_ROWS_TRACE) of one point per
    map row on the diagonal; hovering is by row (hovermode "y"), so a click anywhere on a row
    also reaches its point, which clicked_map_row reads, while the cell's own label shows.
    """
    n = probs.shape[0] * tile
    # pairs with no weight (outside the layout, or above the diagonal) are left blank
    z = np.full(probs.shape, np.nan, dtype=np.float32)  # float32: half the bytes to send
    np.log10(probs, out=z, where=probs > 0)
    if tile == 1:
        where = {"hovertemplate": "query %{y}, key %{x}: log10 p = %{z:.2f}<extra></extra>"}
    else:  # a cell is a tile: name its ranges, not its (fractional) centre
        where = {
            "hovertemplate": TILE_HOVER + ": log10 of mean p = %{z:.2f}<extra></extra>",
            "customdata": _tile_ranges(probs.shape, tile, n),
        }
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x0=(tile - 1) / 2,
            dx=tile,
            y0=(tile - 1) / 2,
            dy=tile,
            zmin=-6,
            zmax=0,
            colorscale="Viridis",
            colorbar=dict(title="log10 p", len=0.8, y=1, yanchor="top"),
            name="attention",
            **where,
        )
    )
    centres = (tile - 1) / 2 + tile * np.arange(probs.shape[0])
    fig.add_trace(
        # hovered (so clickable) but silent: the cell's label shows
        click_targets(centres, centres, name="queries", size=4, hoverinfo="none")
    )
    _map_axes(fig, n)
    fig.update_layout(
        title=title,
        height=520,
        margin=colorbar_margin(40, 50, 40, 80),
        hovermode="y",
        clickmode="event+select",
        dragmode=False,
        showlegend=False,
    )
    return fig


# the click targets' trace number: the map draws its heatmap first, its targets second
MAP_ROWS_TRACE = 1


def clicked_map_row(event) -> int | None:
    """The row of the attention_map_figure clicked (a query, or a tile of queries when the
    map is pooled), from st.plotly_chart's selection event; None when none was."""
    return _clicked_point(event, MAP_ROWS_TRACE)
