"""One image's pixels as clickable figures: a pixel view coloured by any values (attention,
bits, a layout's parts) or showing the colour picture, and one head's weights over the image.

A pixel view is a heatmap under a scatter of invisible points, one per pixel: Streamlit's
``on_select`` returns clicked points for scatter traces but not for heatmaps, and a click on a
pixel is how a person picks a query (viz.style.click_targets). Rows grow downwards as in the
image.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from viz.style import (
    LABELS_FIT,
    QUERY_COLOR,
    _part_colorscale,
    click_targets,
    colorbar_margin,
)


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
    traces = [_pixel_points(values, colorscale, zmin, zmax, words)]
    if rgb is not None:  # a colour picture: pixel centres at 0..W-1, 0..H-1 as the points
        traces.append(go.Image(z=np.asarray(rgb, dtype=np.uint8), hoverinfo="skip", name="image"))
    else:
        traces.append(_pixel_heatmap(values, colorscale, zmin, zmax, colorbar_title))
    # rings: sized for the smallest chart the pages draw (~260 px a side), inside a cell above
    ring_px = max(3, int(260 / max(h, w) * 0.9))
    if outline is not None and outline.any():
        r, c = np.nonzero(outline)
        traces.append(_ring_trace(c, r, "layout", "#ff7f0e", 1.5, ring_px))
    if query is not None:
        traces.append(_ring_trace([query[1]], [query[0]], "query", QUERY_COLOR, 3, ring_px))
    has_colorbar = colorbar_title is not None and rgb is None
    return go.Figure(
        data=traces,
        layout=dict(
            **_pixel_axes(h, w),
            title=dict(text=title, font=dict(size=13)),
            height=size_px + 80,
            margin=colorbar_margin(45, 40, 40, 90)
            if has_colorbar
            else dict(l=45, r=10, t=40, b=40),
            plot_bgcolor="white",
            clickmode="event+select",
            dragmode=False,
            hovermode="closest",
            showlegend=False,
        ),
    )


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
    return click_targets(
        cols,
        rows,
        name="pixels",
        size=4,
        drawn_in_exports=True,  # a static export draws them: squares in the pixels' colours
        marker=dict(
            symbol="square",
            color=values.reshape(-1),
            colorscale=colorscale,
            cmin=zmin,
            cmax=zmax,
            showscale=False,
            line=dict(width=0),
        ),
        **words,
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
        colorbar=dict(title=colorbar_title, thickness=12, len=0.8, y=1, yanchor="top", **LABELS_FIT)
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


def _pixel_axes(h: int, w: int) -> dict:
    """Axes fixed to the image, rows downwards, square cells at the top of the chart (a
    layout's ``xaxis`` and ``yaxis``)."""
    xaxis = dict(
        range=[-0.5, w - 0.5],
        autorange=False,
        showgrid=False,
        zeroline=False,
        title="column",
        constrain="domain",
        **LABELS_FIT,
    )
    yaxis = dict(
        range=[h - 0.5, -0.5],
        autorange=False,
        showgrid=False,
        zeroline=False,
        title="row",
        scaleanchor="x",
        scaleratio=1,
        constrain="domain",
        constraintoward="top",  # a narrow chart: the blank band goes below, not above
        **LABELS_FIT,
    )
    return dict(xaxis=xaxis, yaxis=yaxis)


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
    fig.update_layout(margin=colorbar_margin(45, 40, 40, 90))  # the weights' colour bar
    # above the image, under the outline and query rings (trace 0 stays the clickable pixels)
    data = list(fig.data)
    fig.data = tuple(data[:2] + data[-1:] + data[2:-1])
    return fig


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
