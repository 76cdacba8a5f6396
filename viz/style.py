"""What the figures share: the colours of layout parts, lines and head types, the colour
scales, and the few plotly pieces several figure modules build with (a heatmap over [0, 1], an
image's PNG and colour bar, the line charts' layout, the point a click selected).

The figures a click rebuilds are made in one go, ``go.Figure(data=traces, layout=dict(...))``,
their axes included: every ``update_layout``, ``update_xaxes`` or ``update_yaxes`` call parses
and checks its property paths again (a pixel view took 10 ms to build that way, 3 ms in one go;
docs/BENCHMARKS.md). The pieces here return dicts and traces for that reason. Their axes and
colour bars carry LABELS_FIT, for the browser's sake."""

from __future__ import annotations

import base64
import io

import numpy as np
import plotly.colors as pc
import plotly.graph_objects as go
from PIL import Image

from analysis.metrics import HEAD_TYPES

# an axis's or colour bar's tick labels fit the chart (its margins hold them): by default
# plotly.js checks each label's box against the chart's edges again as it places every label of
# the axis (a label count squared; ~12 ms of a pixel click's drawing, docs/BENCHMARKS.md)
LABELS_FIT = dict(ticklabeloverflow="allow")

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


# one colour per model or head line, the same in every figure (plotly's default cycle)
LINE_COLORS = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)


TYPE_COLORS = {
    "row": "#1f77b4",
    "column": "#ff7f0e",
    "local": "#2ca02c",
    "sparse": "#d62728",
    "global": "#9467bd",
}


TRUE_COLOR = "#000000"


# colour scales as lists: plotly.js knows neither "Magma" nor "RdBu_r" by name (a name it does
# not know is drawn with its default scale)
def _rgb_scale(name: str) -> list[list]:
    """A named plotly colour scale as [[position, "rgb(r, g, b)"], ...]."""
    return [
        [float(pos), pc.convert_colors_to_same_type(c, "rgb")[0][0]]
        for pos, c in pc.get_colorscale(name)
    ]


BITS_COLORS = _rgb_scale("Magma")


DIFF_COLORS = _rgb_scale("RdBu_r")


def color(i: int) -> str:
    return LINE_COLORS[i % len(LINE_COLORS)]


def type_colorscale() -> list[list]:
    """A discrete colour scale for head-type codes 0..len(HEAD_TYPES) - 1."""
    k = len(HEAD_TYPES)
    scale = []
    for i, name in enumerate(HEAD_TYPES):
        scale += [[i / k, TYPE_COLORS[name]], [(i + 1) / k, TYPE_COLORS[name]]]
    return scale


def png_data_uri(pixels: np.ndarray, optimize: bool = False) -> str:
    """uint8 [H, W, 3] (RGB) or [H, W, 4] (RGBA) as a data: URI of a PNG, what go.Image's
    ``source`` takes: the browser decodes it, plotly.js draws one <image> (a heatmap colours
    every cell in script, then encodes the canvas as a PNG itself). ``optimize``: smallest, and
    slowest to make (for an image drawn once); else the fastest compression (a click's image:
    a quarter larger, a third of the time)."""
    buf = io.BytesIO()
    mode = "RGBA" if pixels.shape[-1] == 4 else "RGB"
    how = dict(optimize=True) if optimize else dict(compress_level=1)
    Image.fromarray(pixels, mode).save(buf, format="PNG", **how)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def scale_rgba(values: np.ndarray, colorscale: str | list) -> np.ndarray:
    """uint8 [..., 4]: ``values`` in [0, 1] coloured as plotly.js colours a heatmap with
    ``colorscale`` over zmin=0, zmax=1 (linear in RGB between the scale's stops); NaN is
    transparent (the plot's background shows, as a heatmap leaves it)."""
    stops = pc.get_colorscale(colorscale) if isinstance(colorscale, str) else colorscale
    where = np.array([float(p) for p, _ in stops])
    rgb = np.array(pc.convert_colors_to_same_type([c for _, c in stops], "tuple")[0]) * 255
    v = np.clip(np.nan_to_num(values, nan=0.0), 0.0, 1.0)
    out = np.empty((*v.shape, 4), dtype=np.uint8)
    for k in range(3):
        out[..., k] = np.rint(np.interp(v, where, rgb[:, k]))
    out[..., 3] = np.where(np.isnan(values), 0, 255)
    return out


# the ``meta`` of a trace that draws only a colour bar (colorbar_only): viz/export.py draws its bar
COLOUR_BAR = "colour bar"


def colorbar_only(colorscale: str | list, colorbar: dict) -> go.Scatter:
    """A trace that draws nothing but a colour bar over [0, 1]: the bar of a figure whose
    colours are an image (go.Image has none)."""
    return go.Scatter(
        x=[None],
        y=[None],
        mode="markers",
        marker=dict(
            color=[0.0], cmin=0, cmax=1, colorscale=colorscale, showscale=True, colorbar=colorbar
        ),
        hoverinfo="skip",
        showlegend=False,
        name="colour bar",
        meta=COLOUR_BAR,
    )


def diverging_range(values: np.ndarray, floor: float = 1e-6) -> float:
    """A symmetric colour range for differences: the 99th percentile of |values|."""
    v = np.abs(np.asarray(values, dtype=np.float64))
    v = v[np.isfinite(v)]
    return float(max(np.percentile(v, 99) if v.size else 0.0, floor))


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


# the ``meta`` of a scatter that only carries a chart's hover and clicks (nothing to draw in a
# static export): viz/export.py leaves such traces out
CLICK_TARGETS = "click targets"


def click_targets(
    x, y, *, name: str, size: int, drawn_in_exports: bool = False, marker=None, **hover
) -> go.Scatter:
    """Invisible points that carry a chart's hover and clicks: Streamlit's ``on_select``
    reports clicked scatter points, not heatmap cells. ``marker.maxdisplayed = 1``: plotly
    still hovers and selects every point (they are data) but puts one in the page instead of
    hundreds of SVG nodes to lay out at every draw. ``drawn_in_exports``: the points carry
    what a static export draws (a pixel view's colours); else the export leaves them out.
    ``marker``: more of the marker's properties; ``hover``: the trace's hover properties."""
    invisible = dict(marker=dict(opacity=0))  # a click selects a point: it stays invisible
    return go.Scatter(
        x=x,
        y=y,
        mode="markers",
        marker=dict(size=size, opacity=0, maxdisplayed=1, **(marker or {})),
        selected=invisible,
        unselected=invisible,
        name=name,
        showlegend=False,
        meta=None if drawn_in_exports else CLICK_TARGETS,
        **hover,
    )


def colorbar_margin(left: int, top: int, bottom: int, right: int) -> dict:
    """Margins for a chart with a colour bar on its right, ``right`` pixels wide enough for the
    bar, its ticks and its title. Fixed (autoexpand off): a colour bar that pushes the margin
    out makes plotly.js lay out and draw the whole chart a second time at every update, the
    largest part of a click's drawing on a small machine (docs/BENCHMARKS.md)."""
    return dict(l=left, r=right, t=top, b=bottom, autoexpand=False)


def _line_layout(title: str, *, height: int, legend_y: float) -> dict:
    """The line figures' layout: a small title, white plot, legend in a row below."""
    return dict(
        title=dict(text=title, font=dict(size=13)),
        height=height,
        margin=dict(l=50, r=10, t=50, b=40),
        plot_bgcolor="white",
        legend=dict(orientation="h", y=legend_y),
    )


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
