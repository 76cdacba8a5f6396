"""Many small pixel maps side by side as one heatmap, a blank line between tiles (a mosaic):
every layer x head of one query's attention (head_grid_figure, a click target per tile that
clicked_tile reads) and rows of per-layer maps such as head mean, max and rollout, or bits maps
(mosaic_figure). One trace rather than a subplot per tile: ten times faster to build.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from viz.style import (
    LABELS_FIT,
    _clicked_point,
    click_targets,
    colorbar_margin,
    colorbar_only,
    png_data_uri,
    scale_rgba,
)


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


def _tile_axis(labels: list[str], size: int) -> dict:
    """An axis of a mosaic of tiles ``size`` cells long with a blank line between them: one
    tick, labelled, at the middle of each tile."""
    return dict(
        tickvals=[k * (size + 1) + (size - 1) / 2 for k in range(len(labels))],
        ticktext=labels,
        showgrid=False,
        zeroline=False,
        **LABELS_FIT,
    )


# the head grid's one shared colour scale: weights up to this percentile of the grid's positive
# weights span the colours (the few sharpest pixels above it saturate), drawn on a power scale
# (weight ** GRID_POWER): a linear scale to the grid's maximum left every diffuse head dark
GRID_PERCENTILE = 99.0


GRID_POWER = 0.5


GRID_COLORS = "Viridis"


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
        **LABELS_FIT,
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

    Drawn as one mosaic image "heads" (one trace, not L x H subplots: ten times faster to
    build), a blank line between tiles, under an invisible scatter "tiles" (trace
    GRID_TILES_TRACE) of one point per tile: the cursor anywhere on a tile is nearest its
    point, which carries the hover (layer, head, peak weight and where) and the click that
    clicked_tile reads. Point k is tile divmod(k, H). Over them, the query's square in every
    tile (a line trace "query") and the colour bar (the image has none of its own).
    """
    n_layer, n_head, h, w = maps.shape
    scaled, colorbar, said = grid_scale(maps, shared_scale)
    # the colours as one PNG (tens of kB, not a heatmap's 150: the page's largest chart, drawn
    # again at every new query); its hover is the tiles' points, so no cell needs its number
    traces = [
        go.Image(
            source=png_data_uri(scale_rgba(mosaic(scaled, np.nan, np.float64), GRID_COLORS)),
            hoverinfo="skip",
            name="heads",
        )
    ]
    layer_names = list(layers or range(n_layer))
    head_names = list(heads or range(n_head))
    traces.append(_tile_targets(maps, _tile_hover(maps, layer_names, head_names, query)))
    if query is not None:
        traces.append(_query_in_every_tile(maps.shape, query))
    traces.append(colorbar_only(GRID_COLORS, colorbar))
    columns = [f"head {j}" for j in head_names]
    rows = [f"layer {i}" for i in layer_names]
    layout = dict(
        xaxis=dict(**_tile_axis(columns, w), side="top", constrain="domain"),
        yaxis=dict(
            **_tile_axis(rows, h),
            autorange="reversed",
            scaleanchor="x",
            constrain="domain",
            constraintoward="top",
        ),
        # the subtitle says how the colours are scaled (the colour bar's title, shorter, too)
        title=dict(text=title, subtitle=dict(text=said, font=dict(size=11))),
        height=max(300, 130 * n_layer + 120),
        # room above the column names for the title and its subtitle (at 800 px the subtitle
        # spans the grid's width, and the names sat under it)
        margin=colorbar_margin(70, 120, 20, 80),
        plot_bgcolor="white",
        # every point of the chart hovers (and clicks) the tile whose centre is nearest
        hovermode="closest",
        hoverdistance=-1,
        clickmode="event+select",
        dragmode=False,
        showlegend=False,
    )
    return go.Figure(data=traces, layout=layout)


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
    return click_targets(
        tj * (w + 1) + (w - 1) / 2,
        ti * (h + 1) + (h - 1) / 2,
        name="tiles",
        size=8,
        text=hover,
        hovertemplate="%{text}<extra></extra>",
    )


def _query_in_every_tile(shape: tuple[int, ...], query: tuple[int, int]) -> go.Scatter:
    """A square around the query pixel in every tile of a mosaic of ``shape`` [L, H, h, w]:
    one line trace "query" (32 layout shapes took plotly.js longer to draw than the mosaic)."""
    n_layer, n_head, h, w = shape
    qr, qc = query
    x0 = np.arange(n_head)[None, :] * (w + 1) + qc - 0.5  # [1, H]: each tile's square's left
    y0 = np.arange(n_layer)[:, None] * (h + 1) + qr - 0.5  # [L, 1]: its top
    x0, y0 = np.broadcast_arrays(x0, y0)
    # each square: 5 corners (closed), then a gap (None) before the next
    xs = np.stack([x0, x0 + 1, x0 + 1, x0, x0, np.full(x0.shape, np.nan)], -1).reshape(-1)
    ys = np.stack([y0, y0, y0 + 1, y0 + 1, y0, np.full(y0.shape, np.nan)], -1).reshape(-1)
    return go.Scatter(
        x=xs,
        y=ys,
        mode="lines",
        line=dict(color="#ff7f0e", width=1.5),
        hoverinfo="skip",
        showlegend=False,
        name="query",
    )


# the click targets' trace number: the grid draws its image first, its targets second
GRID_TILES_TRACE = 1


def clicked_tile(event, n_head: int) -> tuple[int, int] | None:
    """The (row, column) of the head_grid_figure tile clicked (its layer and head positions
    in the grid), from st.plotly_chart's selection event; None when no tile was clicked."""
    idx = _clicked_point(event, GRID_TILES_TRACE)
    return None if idx is None else divmod(idx, n_head)


def mosaic_figure(
    maps: np.ndarray,
    *,
    title: str,
    col_labels: Sequence[str],
    row_labels: Sequence[str] | None = None,
    colorscale: str | list = "Viridis",
    zmin: float | None = None,
    zmax: float | None = None,
    colorbar_title: str | None = None,
    per_tile: bool = False,
    value_name: str = "value",
    tile_px: int = 180,
) -> go.Figure:
    """Maps [R, C, h, w] (or [C, h, w], one row) side by side as one heatmap called "tiles",
    a blank line between tiles, each column labelled on top and each row on the left.

    One colour scale for all tiles (``zmin``..``zmax``, a colour bar titled ``colorbar_title``)
    so that tiles compare; with ``per_tile`` each tile is scaled to its own maximum instead (the
    hover still gives the raw value). Hover: tile, pixel row and column, value.
    """
    maps = np.asarray(maps, dtype=np.float64)
    if maps.ndim == 3:
        maps = maps[None]
    n_r, n_c, h, w = maps.shape
    row_labels = list(row_labels) if row_labels is not None else [""] * n_r
    if len(col_labels) != n_c or len(row_labels) != n_r:
        raise ValueError(f"need {n_c} column and {n_r} row labels for maps {maps.shape}")
    shown = maps
    if per_tile:
        shown = _over_own_peak(maps)
        zmin, zmax = (0.0, 1.0) if zmin is None else (zmin, 1.0)
    heatmap = go.Heatmap(
        z=mosaic(shown, np.nan, np.float64),
        **_mosaic_hover(maps, col_labels, row_labels, value_name),
        colorscale=colorscale,
        zmin=zmin,
        zmax=zmax,
        showscale=colorbar_title is not None,
        # the title along the bar: a fixed margin (colorbar_margin) holds it
        colorbar=dict(title=dict(text=colorbar_title, side="right"), thickness=12, **LABELS_FIT)
        if colorbar_title
        else None,
        name="tiles",
        hoverongaps=False,
    )
    layout = dict(
        xaxis=dict(
            tickvals=_tile_axis(col_labels, w)["tickvals"],
            ticktext=list(col_labels),
            side="top",
            showgrid=False,
            zeroline=False,
            constrain="domain",
            **LABELS_FIT,
        ),
        yaxis=dict(
            **_tile_axis(row_labels, h), autorange="reversed", scaleanchor="x", constrain="domain"
        ),
        title=dict(text=title, font=dict(size=13)),
        height=int(min(900, max(260, tile_px * n_r + 110))),
        margin=colorbar_margin(70 if any(row_labels) else 20, 80, 20, 90 if colorbar_title else 20),
        plot_bgcolor="white",
    )
    return go.Figure(data=[heatmap], layout=layout)


def _over_own_peak(maps: np.ndarray) -> np.ndarray:
    """Maps [R, C, h, w], each over its own largest magnitude (an all-zero map left as it is)."""
    n_r, n_c = maps.shape[:2]
    peak = np.nanmax(np.abs(maps).reshape(n_r, n_c, -1), axis=-1)[:, :, None, None]
    return maps / np.where(peak > 0, peak, 1.0)


def _mosaic_hover(
    maps: np.ndarray, col_labels: Sequence[str], row_labels: list[str], value_name: str
) -> dict:
    """The mosaic's hover: the tile's name as text, the pixel and the raw value as numbers
    (customdata), so that no string is formatted per cell (18,816 of them for 8 layers x 3
    summaries of 28 x 28)."""
    n_r, n_c, h, w = maps.shape
    names = np.array(
        [[" ".join(x for x in (row, col) if x) for col in col_labels] for row in row_labels],
        dtype=object,
    )
    text = mosaic(np.broadcast_to(names[:, :, None, None], maps.shape), "", object)
    rr, cc = np.indices((h, w))
    pixels = np.broadcast_to(np.stack([rr, cc], -1), (n_r, n_c, h, w, 2))
    custom = mosaic(np.concatenate([pixels, maps[..., None]], -1), np.nan, np.float32)
    return dict(
        text=text,
        customdata=custom,
        hovertemplate="%{text}<br>row %{customdata[0]}, col %{customdata[1]}: "
        + value_name
        + " %{customdata[2]:.4g}<extra></extra>",
    )
