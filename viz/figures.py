"""Plotly figures for the app, built from arrays (never from streamlit state).

Pixel grids are drawn as square scatter markers, one per pixel, not as a heatmap: Streamlit's
``on_select`` returns clicked points for scatter traces but not for heatmaps, and a click on a
pixel is how a person picks a query. Rows grow downwards as in the image. For the same reason
the all-heads grid and the N x N map, heatmaps for speed, carry an invisible scatter of click
targets (one point per tile, one per map row) that ``clicked_tile`` and ``clicked_map_row``
read. Every such invisible layer has ``marker.maxdisplayed = 1``: plotly still hovers and
selects every point (they are data), but puts one in the page instead of hundreds of SVG nodes
(a pixel view's first draw 60 -> 25 ms in Chromium; a click on the Attention page 425 -> 355
ms end to end).
"""

from __future__ import annotations

import base64
import io

import numpy as np
import plotly.graph_objects as go
from PIL import Image

# one colour per layout part, the same in every figure
PART_COLORS = {
    "causal": "#7f7f7f",
    "local": "#1f77b4",
    "column": "#ff7f0e",
    "block": "#2ca02c",
    "summary": "#d62728",
    # the other families' parts (kernels/layouts.py): distinct within each layout
    "dilated": "#9467bd",
    "sink": "#d62728",
    "window": "#1f77b4",
    "row": "#2ca02c",
    "neighborhood": "#bcbd22",
    "vertical": "#8c564b",
    "global": "#e377c2",
    "random": "#17becf",
}
NOT_ALLOWED = "#f4f4f4"
OTHER_PART = "#9467bd"
QUERY_COLOR = "#000000"
SEARCH_SIZE = (700, 430)  # the layout search's plot area in px, roughly (labels are placed in it)


def _part_colorscale(names: list[str]) -> list[list]:
    """A discrete colour scale for codes 0..len(names) (0 = not allowed)."""
    colors = [NOT_ALLOWED] + [PART_COLORS.get(n, OTHER_PART) for n in names]
    k = len(colors)
    scale = []
    for i, c in enumerate(colors):
        scale += [[i / k, c], [(i + 1) / k, c]]
    return scale


def _part_rgb(names: list[str]) -> np.ndarray:
    """uint8 [len(names) + 1, 3]: the colour of code k (0 = not allowed)."""
    colors = [NOT_ALLOWED] + [PART_COLORS.get(n, OTHER_PART) for n in names]
    return np.array([[int(c[i : i + 2], 16) for i in (1, 3, 5)] for c in colors], dtype=np.uint8)


def _png_data_uri(rgb: np.ndarray) -> str:
    """uint8 [H, W, 3] as a data: URI of a PNG (what go.Image's ``source`` takes)."""
    buf = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _unit_heatmap(
    z: np.ndarray, name: str, colorscale: str | list, hovertemplate: str | None, **trace
) -> go.Figure:
    """A figure of one heatmap trace called ``name``, its colour scale over [0, 1]."""
    return go.Figure(
        go.Heatmap(
            z=z,
            zmin=0,
            zmax=1,
            colorscale=colorscale,
            hovertemplate=hovertemplate,
            name=name,
            **trace,
        )
    )


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


def pixel_grid_figure(
    values: np.ndarray,
    *,
    title: str,
    query: tuple[int, int] | None = None,
    colorscale: str | list = "Viridis",
    zmin: float | None = None,
    zmax: float | None = None,
    hover: np.ndarray | None = None,
    hover_values: np.ndarray | None = None,
    hover_template: str | None = None,
    colorbar_title: str | None = None,
    outline: np.ndarray | None = None,
    size_px: int = 420,
    rgb: np.ndarray | None = None,
) -> go.Figure:
    """A clickable H x W pixel view coloured by ``values`` [H, W], sized by its container (or
    showing the colour picture ``rgb`` [H, W, 3] uint8, ``values`` then only in the hover).

    Drawn as a heatmap (cells that scale with the chart), under a scatter of invisible points
    named "pixels", one at each pixel's centre, which carries the hover text and the click
    (Streamlit's ``on_select`` reports scatter points, not heatmap cells): the point nearest
    the cursor is the pixel under it at any chart size, where visible square markers of a fixed
    size in px would overlap on a small chart and a click would pick a neighbour.
    ``query`` (row, col) is ringed in black; ``outline`` [H, W] bool rings those pixels
    (the prescribed layout over a learned map); ``hover`` [H, W] str replaces the default
    hover text; or, cheaper to send and draw (numbers, not 784 strings), ``hover_template``
    with %{y} the row, %{x} the column and %{customdata[k]} value k of ``hover_values``
    [H, W, K]. Point i of the first trace is pixel (i // W, i % W). Both axes are fixed to the
    image (no autorange beyond it) with square cells; ``size_px`` is the height of the plot
    area, the width follows the container.
    """
    h, w = values.shape
    words = _pixel_hover(h, w, hover, hover_values, hover_template)
    fig = go.Figure(_pixel_points(values, colorscale, zmin, zmax, words))
    if rgb is not None:  # a colour picture: pixel centres at 0..W-1, 0..H-1 as the points
        fig.add_trace(go.Image(z=np.asarray(rgb, dtype=np.uint8), hoverinfo="skip", name="image"))
    else:
        fig.add_trace(_pixel_heatmap(values, colorscale, zmin, zmax, colorbar_title))
    # rings: sized for the smallest chart the pages draw (~260 px a side), inside a cell above
    ring_px = max(3, int(260 / max(h, w) * 0.9))
    if outline is not None and outline.any():
        r, c = np.nonzero(outline)
        fig.add_trace(_ring_trace(c, r, "layout", "#ff7f0e", 1.5, ring_px))
    if query is not None:
        fig.add_trace(_ring_trace([query[1]], [query[0]], "query", QUERY_COLOR, 3, ring_px))
    _pixel_axes(fig, h, w)
    fig.update_layout(
        title=dict(text=title, font=dict(size=13)),
        height=size_px + 80,
        margin=dict(l=45, r=10, t=40, b=40),
        plot_bgcolor="white",
        clickmode="event+select",
        dragmode=False,
        hovermode="closest",
        showlegend=False,
    )
    return fig


def _pixel_hover(
    h: int,
    w: int,
    hover: np.ndarray | None,
    hover_values: np.ndarray | None,
    hover_template: str | None,
) -> dict:
    """The hover arguments of the pixel points: given strings, a template over numbers, or the
    pixel's value."""
    if hover is not None:
        return dict(text=hover.reshape(-1), hovertemplate="%{text}<extra></extra>")
    if hover_template is not None:
        custom = np.asarray(hover_values, dtype=np.float32).reshape(h * w, -1)
        return dict(customdata=custom, hovertemplate=hover_template + "<extra></extra>")
    return dict(hovertemplate="row %{y}, col %{x}: %{marker.color:.4g}<extra></extra>")


def _pixel_points(
    values: np.ndarray, colorscale: str | list, zmin: float | None, zmax: float | None, words: dict
) -> go.Scatter:
    """The invisible points "pixels", one at each pixel's centre: the hover and the click."""
    h, w = values.shape
    rows, cols = np.divmod(np.arange(h * w), w)
    invisible = dict(marker=dict(opacity=0))
    return go.Scatter(
        x=cols,
        y=rows,
        mode="markers",
        marker=dict(
            symbol="square",
            size=4,
            opacity=0,
            maxdisplayed=1,  # see the module docstring: hovered and clicked, not drawn
            color=values.reshape(-1),
            colorscale=colorscale,
            cmin=zmin,
            cmax=zmax,
            showscale=False,
            line=dict(width=0),
        ),
        selected=invisible,
        unselected=invisible,
        name="pixels",
        **words,
        showlegend=False,
    )


def _pixel_heatmap(
    values: np.ndarray,
    colorscale: str | list,
    zmin: float | None,
    zmax: float | None,
    colorbar_title: str | None,
) -> go.Heatmap:
    """The pixels' colours, a heatmap called "image" (with a colour bar when it has a title)."""
    return go.Heatmap(
        z=values,
        colorscale=colorscale,
        zmin=zmin,
        zmax=zmax,
        showscale=colorbar_title is not None,
        colorbar=dict(title=colorbar_title, thickness=12, len=0.8, y=1, yanchor="top")
        if colorbar_title
        else None,
        hoverinfo="skip",
        name="image",
    )


def _ring_trace(x, y, name: str, color: str, width: float, size_px: int) -> go.Scatter:
    """Square rings around pixels (the query, a layout's keys), never dimmed by a selection."""
    keep = dict(marker=dict(opacity=1))
    return go.Scatter(
        x=x,
        y=y,
        mode="markers",
        hoverinfo="skip",
        name=name,
        marker=dict(symbol="square-open", size=size_px, color=color, line=dict(width=width)),
        selected=keep,
        unselected=keep,
    )


def _pixel_axes(fig: go.Figure, h: int, w: int) -> None:
    """Axes fixed to the image, rows downwards, square cells at the top of the chart."""
    fig.update_xaxes(
        range=[-0.5, w - 0.5],
        autorange=False,
        showgrid=False,
        zeroline=False,
        title="column",
        constrain="domain",
    )
    fig.update_yaxes(
        range=[h - 0.5, -0.5],
        autorange=False,
        showgrid=False,
        zeroline=False,
        title="row",
        scaleanchor="x",
        scaleratio=1,
        constrain="domain",
        constraintoward="top",  # a narrow chart: the blank band goes below, not above
    )


def layout_pixel_figure(
    codes: np.ndarray, names: list[str], query: tuple[int, int], title: str
) -> go.Figure:
    """Which pixels a query may attend to, coloured by layout part (codes [H, W])."""
    labels = np.array(["not allowed", *names])[codes]
    h, w = codes.shape
    rows, cols = np.divmod(np.arange(h * w), w)
    hover = np.array(
        [
            f"row {r}, col {c}: {lab}"
            for r, c, lab in zip(rows, cols, labels.reshape(-1), strict=True)
        ]
    ).reshape(h, w)
    return pixel_grid_figure(
        codes.astype(float),
        title=title,
        query=query,
        hover=hover,
        colorscale=_part_colorscale(names),
        zmin=-0.5,
        zmax=len(names) + 0.5,
    )


def clicked_pixel(event, width: int) -> tuple[int, int] | None:
    """The (row, col) of the pixel clicked in a pixel_grid_figure, from st.plotly_chart's
    selection event; None when nothing on the pixel trace was clicked."""
    try:
        points = event["selection"]["points"]
    except (KeyError, TypeError):
        return None
    for p in points:
        if p.get("curve_number", p.get("curveNumber", 0)) == 0:
            idx = p.get("point_index", p.get("pointIndex"))
            if idx is not None:
                return divmod(int(idx), width)
            if "x" in p and "y" in p:
                return int(round(p["y"])), int(round(p["x"]))
    return None


def attention_overlay_figure(
    image: np.ndarray,
    weights: np.ndarray,
    *,
    title: str,
    query: tuple[int, int] | None = None,
    outline: np.ndarray | None = None,
    hover: np.ndarray | None = None,
    hover_values: np.ndarray | None = None,
    hover_template: str | None = None,
    opacity: float = 0.6,
) -> go.Figure:
    """One head's weights [H, W] drawn translucently over the image itself: the grayscale
    ``image`` [H, W] in [0, 1] as the base layer (a clickable pixel_grid_figure, its heatmap
    called "image"), the weights a heatmap called "weights" of ``opacity`` on top (pixels of
    zero weight left clear), then the ``outline`` of a layout and the ``query`` ring; the
    hover as in pixel_grid_figure."""
    fig = pixel_grid_figure(
        image,
        title=title,
        query=query,
        colorscale=[[0, "black"], [1, "white"]],
        zmin=0,
        zmax=1,
        hover=hover,
        hover_values=hover_values,
        hover_template=hover_template,
        outline=outline,
    )
    z = np.where(weights > 0, weights, np.nan).astype(np.float32)
    fig.add_trace(
        go.Heatmap(
            z=z,
            zmin=0,
            colorscale="Viridis",
            opacity=opacity,
            colorbar=dict(title="weight", thickness=12, len=0.8, y=1, yanchor="top"),
            hoverinfo="skip",
            name="weights",
        )
    )
    # above the image, under the outline and query rings (trace 0 stays the clickable pixels)
    data = list(fig.data)
    fig.data = tuple(data[:2] + data[-1:] + data[2:-1])
    return fig


def _clicked_point(event, trace: int) -> int | None:
    """The index of the first point of trace number ``trace`` in st.plotly_chart's selection
    event; None when none of its points was clicked."""
    try:
        points = event["selection"]["points"]
    except (KeyError, TypeError):
        return None
    for p in points:
        if p.get("curve_number", p.get("curveNumber")) == trace:
            idx = p.get("point_index", p.get("pointIndex", p.get("point_number")))
            if isinstance(idx, int):
                return idx
    return None


# the click targets' trace numbers: each figure draws its heatmap first, its targets second
GRID_TILES_TRACE = 1
MAP_ROWS_TRACE = 1


def clicked_tile(event, n_head: int) -> tuple[int, int] | None:
    """The (row, column) of the head_grid_figure tile clicked (its layer and head positions
    in the grid), from st.plotly_chart's selection event; None when no tile was clicked."""
    idx = _clicked_point(event, GRID_TILES_TRACE)
    return None if idx is None else divmod(idx, n_head)


def clicked_map_row(event) -> int | None:
    """The row of the attention_map_figure clicked (a query, or a tile of queries when the
    map is pooled), from st.plotly_chart's selection event; None when none was."""
    return _clicked_point(event, MAP_ROWS_TRACE)


def _tile_axis(labels: list[str], size: int) -> dict:
    """An axis of a mosaic of tiles ``size`` cells long with a blank line between them: one
    tick, labelled, at the middle of each tile."""
    return dict(
        tickvals=[k * (size + 1) + (size - 1) / 2 for k in range(len(labels))],
        ticktext=labels,
        showgrid=False,
        zeroline=False,
    )


# the head grid's one shared colour scale: weights up to this percentile of the grid's positive
# weights span the colours (the few sharpest pixels above it saturate), drawn on a power scale
# (weight ** GRID_POWER): a linear scale to the grid's maximum left every diffuse head dark
GRID_PERCENTILE = 99.0
GRID_POWER = 0.5
_GRID_TICKS = np.array([0.0, 0.25, 0.5, 0.75, 1.0])


def grid_scale(maps: np.ndarray, shared: bool) -> tuple[np.ndarray, dict, str]:
    """The head grid's colours of ``maps`` [L, H, h, w] in 0..1, its colour bar, and a line
    that says how the colours were scaled (the figure's subtitle).

    Each tile on its own scale: a tile's weights over its own maximum (linear), the colour bar
    in shares of that maximum. One shared scale: every weight over the cap (the GRID_PERCENTILE
    percentile of the grid's positive weights, the brighter ones saturating), to the power
    GRID_POWER, the colour bar labelled with the weights themselves."""
    n_layer, n_head = maps.shape[:2]
    if not shared:
        peak = maps.reshape(n_layer, n_head, -1).max(-1)[:, :, None, None]
        scaled = maps / np.where(peak > 0, peak, 1.0)
        text = [f"{v:.0%}" for v in _GRID_TICKS]
        bar = "share of its tile's peak"
        said = "each tile on its own scale: its weights over its own peak"
    else:
        positive = maps[maps > 0]
        cap = float(np.percentile(positive, GRID_PERCENTILE)) if positive.size else 1.0
        cap = cap if cap > 0 else 1.0
        scaled = np.clip(maps / cap, 0.0, 1.0) ** GRID_POWER
        text = [f"{cap * v ** (1 / GRID_POWER):.2g}" for v in _GRID_TICKS]
        bar = f"weight (square root, cap {cap:.2g})"
        said = (
            f"one scale for all tiles: square root of the weight, capped at {cap:.3g} (the "
            f"{GRID_PERCENTILE:g}th percentile of the weights; brighter pixels saturate)"
        )
    colorbar = dict(
        title=dict(text=bar, side="right"),
        tickvals=list(_GRID_TICKS),
        ticktext=text,
        thickness=12,
        len=0.9,
        y=1,
        yanchor="top",
    )
    return scaled, colorbar, said


def head_grid_figure(
    maps: np.ndarray,
    title: str,
    layers: list[int] | None = None,
    heads: list[int] | None = None,
    query: tuple[int, int] | None = None,
    shared_scale: bool = False,
):
    """An overview of every layer x head: maps [L, H, h, w] (e.g. one query's attention over
    the image), each scaled to its own maximum so faint heads stay readable, or with
    ``shared_scale`` on one scale that does not drown the diffuse heads (grid_scale: a robust
    cap and a square root), with a colour bar that says which. ``layers`` and
    ``heads`` name the layers the rows and the heads the columns show (default 0..L-1, 0..H-1).

    Drawn as one mosaic heatmap (one trace, not L x H subplots: ten times faster to build),
    with a blank line between tiles, under an invisible scatter "tiles" (trace
    GRID_TILES_TRACE) of one point per tile: the cursor anywhere on a tile is nearest its
    point, which carries the hover (layer, head, peak weight and where) and the click that
    clicked_tile reads. Point k is tile divmod(k, H).
    """
    n_layer, n_head, h, w = maps.shape
    scaled, colorbar, said = grid_scale(maps, shared_scale)
    # float32: half the bytes of float64 to send and parse at every rerun
    fig = _unit_heatmap(
        mosaic(scaled, np.nan, np.float64).astype(np.float32),
        "heads",
        "Viridis",
        None,
        hoverinfo="skip",
        showscale=True,
        colorbar=colorbar,
    )
    layer_names = list(layers or range(n_layer))
    head_names = list(heads or range(n_head))
    fig.add_trace(_tile_targets(maps, _tile_hover(maps, layer_names, head_names, query)))
    columns = [f"head {j}" for j in head_names]
    fig.update_xaxes(**_tile_axis(columns, w), side="top", constrain="domain")
    rows = [f"layer {i}" for i in layer_names]
    fig.update_yaxes(
        **_tile_axis(rows, h),
        autorange="reversed",
        scaleanchor="x",
        constrain="domain",
        constraintoward="top",
    )
    fig.update_layout(
        shapes=[] if query is None else _query_in_every_tile(maps.shape, query),
        # the subtitle says how the colours are scaled (the colour bar's title, shorter, too)
        title=dict(text=title, subtitle=dict(text=said, font=dict(size=11))),
        height=max(300, 130 * n_layer + 100),
        margin=dict(l=70, r=20, t=100, b=20),
        plot_bgcolor="white",
        # every point of the chart hovers (and clicks) the tile whose centre is nearest
        hovermode="closest",
        hoverdistance=-1,
        clickmode="event+select",
        dragmode=False,
        showlegend=False,
    )
    return fig


def mosaic(tiles: np.ndarray, fill, dtype) -> np.ndarray:
    """Tiles [R, C, h, w, ...] laid out as one array [R (h + 1) - 1, C (w + 1) - 1, ...] of
    ``dtype``, a line of ``fill`` between tiles."""
    n_r, n_c, h, w = tiles.shape[:4]
    out = np.full((n_r * (h + 1) - 1, n_c * (w + 1) - 1, *tiles.shape[4:]), fill, dtype=dtype)
    for i in range(n_r):
        for j in range(n_c):
            r0, c0 = i * (h + 1), j * (w + 1)
            out[r0 : r0 + h, c0 : c0 + w] = tiles[i, j]
    return out


def _tile_hover(
    maps: np.ndarray, layer_names: list, head_names: list, query: tuple[int, int] | None
) -> list[str]:
    """Each tile's hover: its layer and head, its peak weight and where, the query's weight."""
    n_layer, n_head, _, w = maps.shape
    ti, tj = np.divmod(np.arange(n_layer * n_head), n_head)
    at_r, at_c = np.divmod(maps.reshape(n_layer * n_head, -1).argmax(-1), w)
    peaks = maps.reshape(n_layer * n_head, -1).max(-1)
    return [
        f"layer {layer_names[i]}, head {head_names[j]}<br>peak {v:.4f} at row {r}, col {c}"
        + (f"<br>at the query: {maps[i, j, query[0], query[1]]:.4f}" if query else "")
        + "<br>click to show this head"
        for i, j, r, c, v in zip(ti, tj, at_r, at_c, peaks, strict=True)
    ]


def _tile_targets(maps: np.ndarray, hover: list[str]) -> go.Scatter:
    """The invisible points "tiles", one at each tile's centre: the hover and the click."""
    n_layer, n_head, h, w = maps.shape
    ti, tj = np.divmod(np.arange(n_layer * n_head), n_head)
    invisible = dict(marker=dict(opacity=0))
    return go.Scatter(
        x=tj * (w + 1) + (w - 1) / 2,
        y=ti * (h + 1) + (h - 1) / 2,
        mode="markers",
        marker=dict(size=8, opacity=0, maxdisplayed=1),  # hovered, clicked, not drawn
        selected=invisible,
        unselected=invisible,
        text=hover,
        hovertemplate="%{text}<extra></extra>",
        name="tiles",
        showlegend=False,
    )


def _query_in_every_tile(shape: tuple[int, ...], query: tuple[int, int]) -> list[dict]:
    """A square around the query pixel in every tile of a mosaic of ``shape`` [L, H, h, w],
    as layout shapes (set at once: plotly checks the whole list again at every add_shape)."""
    n_layer, n_head, h, w = shape
    qr, qc = query
    shapes = []
    for i in range(n_layer):
        for j in range(n_head):
            x, y = j * (w + 1) + qc, i * (h + 1) + qr
            shapes.append(
                dict(
                    type="rect",
                    x0=x - 0.5,
                    x1=x + 0.5,
                    y0=y - 0.5,
                    y1=y + 0.5,
                    line=dict(color="#ff7f0e", width=1.5),
                    name="query",
                )
            )
    return shapes


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
    invisible = dict(marker=dict(opacity=0))
    fig.add_trace(
        go.Scatter(
            x=centres,
            y=centres,
            mode="markers",
            marker=dict(size=4, opacity=0, maxdisplayed=1),  # hovered, clicked, not drawn
            selected=invisible,
            unselected=invisible,
            hoverinfo="none",  # hovered (so clickable) but silent: the cell's label shows
            name="queries",
            showlegend=False,
        )
    )
    _map_axes(fig, n)
    fig.update_layout(
        title=title,
        height=520,
        margin=dict(l=40, r=20, t=50, b=40),
        hovermode="y",
        clickmode="event+select",
        dragmode=False,
        showlegend=False,
    )
    return fig


def coverage_figure(rows: list[dict], title: str) -> go.Figure:
    """Per layer x head coverage of a prescribed layout (rows from analysis.learned.analyze_model),
    each cell labelled with the head's type."""
    n_layer = max(r["layer"] for r in rows) + 1
    n_head = max(r["head"] for r in rows) + 1
    z = np.zeros((n_layer, n_head))
    text = np.empty((n_layer, n_head), dtype=object)
    hover = np.empty((n_layer, n_head), dtype=object)
    for r in rows:
        z[r["layer"], r["head"]] = r["coverage"]
        text[r["layer"], r["head"]] = f"{r['coverage']:.2f}<br>{r['type']}"
        parts = ", ".join(
            f"{k[9:]} {v:.2f}"
            for k, v in r.items()
            if k.startswith("coverage_") and not k.endswith("_std")
        )
        hover[r["layer"], r["head"]] = (
            f"layer {r['layer']}, head {r['head']}: coverage {r['coverage']:.3f} ± "
            f"{r['coverage_std']:.3f} ({parts})<br>entropy {r['entropy']:.2f} bits, k90 "
            f"{r['k90']:.1f}, distance {r['distance']:.2f} px, type {r['type']}"
        )
    fig = _unit_heatmap(
        z,
        "coverage",
        "Blues",
        "%{customdata}<extra></extra>",
        customdata=hover,
        text=text,
        texttemplate="%{text}",
        colorbar=dict(title="coverage"),
        x=[f"head {h}" for h in range(n_head)],
        y=[f"layer {i}" for i in range(n_layer)],
    )
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(title=title, height=120 + 70 * n_layer, margin=dict(l=60, r=20, t=50, b=30))
    return fig


# where a scatter label may go around its marker, in order of preference: plotly's
# textposition and the side of the marker it puts the label's centre on (x, y signs)
_LABEL_SPOTS = (
    ("top center", 0, 1),
    ("bottom center", 0, -1),
    ("middle right", 1, 0),
    ("middle left", -1, 0),
    ("top right", 1, 1),
    ("bottom left", -1, -1),
    ("top left", -1, 1),
    ("bottom right", 1, -1),
)
_MARKER_R = 5.0  # px: half a size-10 marker


def label_positions(
    x: list[float], y: list[float], texts: list[str], *, width_px: float, height_px: float
) -> list[str]:
    """A textposition for each labelled point such that no two labels, nor a label and a
    marker, overlap where that can be had (greedy, in the order given; a label that fits
    nowhere goes on top). The plot area is ``width_px`` x ``height_px`` over the points' x
    range and y in [0, 1.05]."""
    x0, x1 = min(x, default=0.0), max(x, default=1.0)
    span = (x1 - x0) or 1.0
    char_w, line_h = 6.5, 14.0  # a 12 px font: an average character, a line
    markers = [
        ((xi - x0) / span * width_px, yi / 1.05 * height_px, _MARKER_R, _MARKER_R)
        for xi, yi in zip(x, y, strict=True)
    ]
    placed: list[tuple[float, float, float, float]] = []  # boxes: centre, half width, height

    def box_at(i: int, sx: int, sy: int) -> tuple[float, float, float, float]:
        mx, my = markers[i][:2]
        hw, hh = len(texts[i]) * char_w / 2, line_h / 2
        cx = mx + sx * (_MARKER_R + hw) if sx else mx
        cy = my + sy * (_MARKER_R + hh) if sy else my
        return cx, cy, hw, hh

    def free(box, i: int) -> bool:
        cx, cy, hw, hh = box
        others = placed + [m for k, m in enumerate(markers) if k != i]
        return all(abs(cx - bx) >= hw + bw or abs(cy - by) >= hh + bh for bx, by, bw, bh in others)

    out = []
    for i in range(len(texts)):
        fits = [(spot, box_at(i, sx, sy)) for spot, sx, sy in _LABEL_SPOTS]
        spot, box = next(((s, b) for s, b in fits if free(b, i)), fits[0])
        placed.append(box)
        out.append(spot)
    return out


def search_figure(rows: list[dict], title: str) -> go.Figure:
    """Coverage against density for candidate layouts (rows from analysis.learned.layout_search).
    Labels are placed around their markers so that close candidates (several sit near density
    0.10) do not print over each other."""
    fig = go.Figure()
    families = (("strided", PART_COLORS["column"]), ("fixed", PART_COLORS["summary"]))
    ordered = [r for family, _ in families for r in rows if r["layout"].startswith(family)]
    labels = [r["layout"].split("(")[1].rstrip(")") for r in ordered]
    spots = dict(
        zip(
            [r["layout"] for r in ordered],
            label_positions(
                [r["density"] for r in ordered],
                [r["coverage"] for r in ordered],
                labels,
                width_px=SEARCH_SIZE[0],
                height_px=SEARCH_SIZE[1],
            ),
            strict=True,
        )
    )
    for family, color in families:
        sel = [r for r in rows if r["layout"].startswith(family)]
        fig.add_trace(
            go.Scatter(
                x=[r["density"] for r in sel],
                y=[r["coverage"] for r in sel],
                mode="markers+text",
                text=[r["layout"].split("(")[1].rstrip(")") for r in sel],
                textposition=[spots[r["layout"]] for r in sel],
                name=family,
                marker=dict(size=10, color=color),
                customdata=[r["layout"] for r in sel],
                hovertemplate="%{customdata}: density %{x:.4f}, coverage %{y:.3f}<extra></extra>",
            )
        )
    fig.update_xaxes(title="density (share of dense causal pairs)")
    fig.update_yaxes(title="coverage (share of attention kept)", range=[0, 1.05])
    fig.update_layout(title=title, height=520, margin=dict(l=60, r=20, t=50, b=40))
    return fig
