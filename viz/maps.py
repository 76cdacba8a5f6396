"""N x N maps, query i downwards and key j across: a layout's mask (exact part codes, or the
allowed share of each tile of a pooled view, the hover naming the query and key ranges of a
tile) and one head's attention (log-scaled, the means of tiles for a long sequence).

The attention map is an image under an invisible scatter of one point per map row (trace
MAP_ROWS_TRACE): the row's hover, and the click that clicked_map_row reads (a click on a row
picks its first query).
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from viz.style import (
    LABELS_FIT,
    PART_COLORS,
    _clicked_point,
    _part_rgb,
    _unit_heatmap,
    click_targets,
    colorbar_margin,
    colorbar_only,
    png_data_uri,
    scale_rgba,
)


def _tile_names(count: int, tile: int, n: int, word: str) -> list[str]:
    """The names of the ``count`` tiles of ``tile`` tokens along one side of a pooled N x N
    map: "queries 400-403"... (``word`` "queries" or "keys"); the last one may be shorter."""
    return [f"{word} {k * tile}-{min(k * tile + tile - 1, n - 1)}" for k in range(count)]


# a pooled mask cell's hover: its tiles' names are its coordinates (category axes), so the hover
# names exact ranges with no string per cell (410 kB of ranges per cell made the attention map,
# then a heatmap too, a head switch's largest part)
TILE_HOVER = "%{y}, %{x}"


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


def _map_axes(n: int, tile: int = 1, categories: bool = False) -> dict:
    """The axes of an N x N map (a layout's ``xaxis`` and ``yaxis``): query i downwards, key j
    across, square cells. In tokens: cell k (an image's pixel, at x0 = 0, dx = tile) centred at
    its first token k * tile, which the hover of a row, hovered by y, names on the axis.
    ``categories``: the cells are categories named by their ranges (a pooled heatmap's,
    _tile_names), cell k at k. Pooled (tile > 1), the ticks are at the token numbers, where an
    exact map has them: token t at t - (tile - 1) / 2 (in cells, that over tile)."""
    count = -(-n // tile)
    unit = 1 / tile if categories else 1  # axis units per token
    where = dict(range=[-tile / 2 * unit, (count - 0.5) * tile * unit])
    if categories:
        where["type"] = "category"
    ticks = {}
    if tile > 1:
        tokens = list(range(0, n, _tick_step(n)))
        ticks = dict(
            tickmode="array",
            tickvals=[(t - (tile - 1) / 2) * unit for t in tokens],
            ticktext=[str(t) for t in tokens],
        )
    # fixed to the map (constrain="domain": a narrow chart shrinks the square, it does not
    # widen an axis beyond the map), the square at the top of the chart
    yaxis = dict(
        autorange=False,
        title="query i",
        scaleanchor="x",
        **{**where, "range": where["range"][::-1]},
        **ticks,
        constrain="domain",
        constraintoward="top",
        **LABELS_FIT,
    )
    xaxis = dict(title="key j", autorange=False, constrain="domain", **where, **ticks, **LABELS_FIT)
    return dict(xaxis=xaxis, yaxis=yaxis)


def _tick_step(n: int) -> int:
    """A round step (1, 2 or 5 times a power of ten) that puts at most 8 ticks on 0..n."""
    power = 1
    while True:
        for f in (1, 2, 5):
            if n / (f * power) <= 8:
                return f * power
        power *= 10


def mask_figure(codes: np.ndarray, names: list[str], tile: int, title: str) -> go.Figure:
    """The N x N layout: exact part codes (tile = 1) or pooled density per tile."""
    if tile == 1:
        n = codes.shape[0]
        # drawn as one PNG (a few kB) rather than N^2 heatmap cells (MBs of JSON, seconds of
        # plotly.js on the first page); the legend names the colours and the hover says where
        fig = go.Figure(
            go.Image(
                source=png_data_uri(_part_rgb(names)[codes], optimize=True),
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
            x=_tile_names(codes.shape[1], tile, n, "keys"),
            y=_tile_names(codes.shape[0], tile, n, "queries"),
            colorbar=dict(title="allowed share"),
        )
    fig.update_layout(
        **_map_axes(n, tile, categories=tile > 1),
        title=title,
        height=520,
        margin=dict(l=40, r=20, t=50, b=40),
        plot_bgcolor="white",
        legend=dict(orientation="h", y=-0.15),
    )
    return fig


# the attention map's colours: log10 p from ATTENTION_LOG_MIN (and below) to 0
ATTENTION_COLORS = "Viridis"
ATTENTION_LOG_MIN = -6


def attention_map_figure(
    probs: np.ndarray, tile: int, title: str, n_tokens: int | None = None
) -> go.Figure:
    """One head's N x N attention map (pooled by ``tile`` when tile > 1), log-scaled colour;
    ``n_tokens``: N, when it is not a multiple of the tile (the last row and column of tiles
    then hold fewer tokens: the hover and ticks name only those there are).

    Drawn as one PNG image "attention" (tens of kB, where a heatmap sent 4 bytes a cell and made
    plotly.js colour every one: a layer switch's largest message and drawing, docs/BENCHMARKS.md)
    with a colour bar of its own (the image has none). Over it, an invisible scatter "queries"
    (trace MAP_ROWS_TRACE) of one point per map row on the diagonal: hovering is by row
    (hovermode "y"), so the cursor anywhere on a row hovers its point, which names the row's
    queries and the keys they weigh most (map_row_peaks), and a click on the row reaches it
    (clicked_map_row). The axes are in tokens, a row's point at its first query (_map_axes).
    """
    n = probs.shape[0] * tile if n_tokens is None else n_tokens
    # pairs with no weight (outside the layout, or above the diagonal) are left transparent
    log_p = np.full(probs.shape, np.nan, dtype=np.float32)
    np.log10(probs, out=log_p, where=probs > 0)
    colours = scale_rgba((log_p - ATTENTION_LOG_MIN) / -ATTENTION_LOG_MIN, ATTENTION_COLORS)
    # pixel k at its first token k * tile (_map_axes)
    image = go.Image(
        source=png_data_uri(colours),
        x0=0,
        dx=tile,
        y0=0,
        dy=tile,
        hoverinfo="skip",
        name="attention",
    )
    decades = np.arange(ATTENTION_LOG_MIN, 1)
    bar = colorbar_only(
        ATTENTION_COLORS,
        dict(
            title="log10 p",
            tickvals=list((decades - ATTENTION_LOG_MIN) / -ATTENTION_LOG_MIN),
            ticktext=[str(d) for d in decades],
            len=0.8,
            y=1,
            yanchor="top",
            **LABELS_FIT,
        ),
    )
    # a single query's row, or a pooled row of queries: what its hover says
    if tile == 1:
        hover = "query %{y}: most weight on key %{customdata[2]}, log10 p = %{customdata[4]:.2f}"
    else:
        hover = (
            "queries %{customdata[0]}-%{customdata[1]}: most weight on keys %{customdata[2]}-"
            "%{customdata[3]}, log10 of mean p = %{customdata[4]:.2f}"
        )
    firsts = np.arange(min(probs.shape)) * tile  # each row's first query (on the diagonal)
    targets = click_targets(
        firsts,
        firsts,
        name="queries",
        size=4,
        customdata=map_row_peaks(log_p, tile, n),
        hovertemplate=hover + "<br>click to show query %{customdata[0]}<extra></extra>",
    )
    return go.Figure(
        data=[image, targets, bar],
        layout=dict(
            **_map_axes(n, tile),
            title=title,
            height=520,
            margin=colorbar_margin(40, 50, 40, 80),
            hovermode="y",
            clickmode="event+select",
            dragmode=False,
            showlegend=False,
        ),
    )


def map_row_peaks(log_p: np.ndarray, tile: int, n: int) -> np.ndarray:
    """float32 [rows, 5], one line per row of a (pooled) map of log10 weights ``log_p``
    (NaN: none): the row's first and last query, the first and last key of its heaviest cell,
    and that cell's log10 weight (NaN, and its keys 0, for a row with no weight)."""
    rows = np.arange(min(log_p.shape))
    filled = np.where(np.isnan(log_p[rows]), -np.inf, log_p[rows])
    peak = filled.argmax(axis=1)
    value = filled[rows, peak]
    first = rows * tile
    peak_first = peak * tile
    return np.stack(
        [
            first,
            np.minimum(first + tile - 1, n - 1),
            peak_first,
            np.minimum(peak_first + tile - 1, n - 1),
            np.where(np.isfinite(value), value, np.nan),
        ],
        axis=1,
    ).astype(np.float32)


# the click targets' trace number: the map draws its image first, its targets second (its
# colour bar third)
MAP_ROWS_TRACE = 1


def clicked_map_row(event) -> int | None:
    """The row of the attention_map_figure clicked (a query, or a tile of queries when the
    map is pooled), from st.plotly_chart's selection event; None when none was."""
    return _clicked_point(event, MAP_ROWS_TRACE)
