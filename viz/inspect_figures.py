"""Figures of the inspection pages, built from arrays: who looks here, head summaries and
rollout, predicted distributions and bits maps, head ablation, and the training timeline.

Like viz/figures.py (whose clickable pixel view the pages reuse), nothing here runs a model or
imports streamlit. Every figure is one axes of heatmaps and scatter traces, the trace kinds that
viz.export draws again with matplotlib for PNG, SVG and PDF: several maps side by side are one
mosaic heatmap with a blank cell between tiles, curves are scatter traces with markers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.colors as pc
import plotly.graph_objects as go

from analysis.metrics import HEAD_TYPES
from viz.figures import _tile_axis, mosaic

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


def _line_trace(x, y, k: int, name: str, marker_size: int, hovertemplate: str, customdata=None):
    """One model's or head's curve: lines and markers in colour ``k`` (``marker_size`` 0: the
    line alone, for curves of hundreds of points whose markers would only add SVG nodes)."""
    return go.Scatter(
        x=x,
        y=y,
        mode="lines+markers" if marker_size else "lines",
        marker=dict(size=marker_size, color=color(k)),
        line=dict(color=color(k), width=1.5),
        name=name,
        customdata=customdata,
        hovertemplate=hovertemplate,
    )


def _line_layout(fig: go.Figure, title: str, *, height: int, legend_y: float) -> None:
    """The line figures' layout: a small title, white plot, legend in a row below."""
    fig.update_layout(
        title=dict(text=title, font=dict(size=13)),
        height=height,
        margin=dict(l=50, r=10, t=50, b=40),
        plot_bgcolor="white",
        legend=dict(orientation="h", y=legend_y),
    )


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
    fig = go.Figure(
        go.Heatmap(
            z=mosaic(shown, np.nan, np.float64),
            **_mosaic_hover(maps, col_labels, row_labels, value_name),
            colorscale=colorscale,
            zmin=zmin,
            zmax=zmax,
            showscale=colorbar_title is not None,
            colorbar=dict(title=colorbar_title, thickness=12) if colorbar_title else None,
            name="tiles",
            hoverongaps=False,
        )
    )
    fig.update_xaxes(
        tickvals=_tile_axis(col_labels, w)["tickvals"],
        ticktext=list(col_labels),
        side="top",
        showgrid=False,
        zeroline=False,
        constrain="domain",
    )
    fig.update_yaxes(
        **_tile_axis(row_labels, h), autorange="reversed", scaleanchor="x", constrain="domain"
    )
    fig.update_layout(
        title=dict(text=title, font=dict(size=13)),
        height=int(min(900, max(260, tile_px * n_r + 110))),
        margin=dict(l=70 if any(row_labels) else 20, r=20, t=80, b=20),
        plot_bgcolor="white",
    )
    return fig


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


def distribution_figure(
    probs: Mapping[str, np.ndarray], true_value: int | Mapping[str, int] | None, title: str
) -> go.Figure:
    """Predicted distributions over the 256 values, one curve per model ({name: [256]}), and the
    true value marked on each curve (a black ring, with its probability in the hover); one
    true value for all curves, or one per curve ({name: value}: the three channels of a colour
    pixel)."""
    fig = go.Figure()
    values = np.arange(256)
    for k, (name, p) in enumerate(probs.items()):
        p = np.asarray(p, dtype=np.float64)
        truth = true_value.get(name) if isinstance(true_value, Mapping) else true_value
        fig.add_trace(
            _line_trace(  # 256 points: the line alone (hover still finds each value)
                values, p, k, name, 0, f"{name}: value %{{x}}, p = %{{y:.4f}}<extra></extra>"
            )
        )
        if truth is not None:
            fig.add_trace(
                go.Scatter(
                    x=[truth],
                    y=[p[truth]],
                    mode="markers",
                    marker=dict(
                        symbol="circle-open", size=12, color=TRUE_COLOR, line=dict(width=2)
                    ),
                    name=f"true value ({name})",
                    showlegend=k == 0,
                    hovertemplate=f"true value %{{x}}: {name} p = %{{y:.4f}}<extra></extra>",
                )
            )
    fig.update_xaxes(title="pixel value", range=[-2, 257])
    fig.update_yaxes(title="probability", rangemode="tozero")
    _line_layout(fig, title, height=340, legend_y=-0.25)
    return fig


MAX_MARKERS = 200  # curves_figure draws a marker at each point up to this many points
MAX_LEGEND = 12  # and a legend up to this many curves


def curves_figure(
    steps: Sequence[int],
    series: Mapping[str, np.ndarray],
    *,
    title: str,
    y_title: str,
    x: Sequence[float] | None = None,
    x_title: str = "step",
    log_x: bool = False,
    height: int = 340,
) -> go.Figure:
    """Curves of values over training steps, one trace per name.

    ``x`` places the points (default: the steps); with the snapshots log-spaced, the pages pass
    their index so every snapshot gets the same room, and ticks name the steps."""
    xs = np.asarray(list(steps) if x is None else list(x), dtype=np.float64)
    fig = go.Figure()
    # a marker at each point while they are few; past that the lines alone (every marker is an
    # SVG node for the browser to draw: 32 heads x 16 snapshots = 512)
    marker_size = 4 if len(series) * len(xs) <= MAX_MARKERS else 0
    for k, (name, ys) in enumerate(series.items()):
        ys = np.asarray(ys, dtype=np.float64)
        fig.add_trace(
            _line_trace(
                xs,
                ys,
                k,
                name,
                marker_size,
                f"{name}: step %{{customdata}}, %{{y:.4g}}<extra></extra>",
                customdata=np.asarray(steps),
            )
        )
    if x is not None:  # ticks name the steps (at most ~10 of them)
        every = max(1, len(xs) // 10)
        fig.update_xaxes(
            tickvals=list(xs[::every]), ticktext=[str(s) for s in list(steps)[::every]]
        )
    fig.update_xaxes(title=x_title, type="log" if log_x else None)
    fig.update_yaxes(title=y_title)
    _line_layout(fig, title, height=height, legend_y=-0.3)
    # a legend of dozens of curves (every head) repeats ten colours and is redrawn at every
    # step: the hover names each curve instead
    fig.update_layout(showlegend=len(series) <= MAX_LEGEND)
    return fig


def head_table_figure(
    values: np.ndarray,
    *,
    title: str,
    colorbar_title: str,
    labels: np.ndarray | None = None,
    colorscale: str | list = "Reds",
    zmin: float | None = None,
    zmax: float | None = None,
) -> go.Figure:
    """One number per layer x head (values [L, H]) as a heatmap called "heads"; ``labels``
    [L, H] (e.g. the head types) go into the hover."""
    values = np.asarray(values, dtype=np.float64)
    n_layer, n_head = values.shape
    text = np.array(
        [
            [
                f"layer {i}, head {j}: {values[i, j]:.4g}"
                + (f" ({labels[i, j]})" if labels is not None else "")
                for j in range(n_head)
            ]
            for i in range(n_layer)
        ]
    )
    fig = go.Figure(
        go.Heatmap(
            z=values,
            text=text,
            hovertemplate="%{text}<extra></extra>",
            colorscale=colorscale,
            zmin=zmin,
            zmax=zmax,
            colorbar=dict(title=colorbar_title, thickness=12),
            name="heads",
        )
    )
    fig.update_xaxes(
        tickvals=list(range(n_head)), ticktext=[f"head {j}" for j in range(n_head)], side="top"
    )
    fig.update_yaxes(
        tickvals=list(range(n_layer)),
        ticktext=[f"layer {i}" for i in range(n_layer)],
        autorange="reversed",
    )
    fig.update_layout(
        title=dict(text=title, font=dict(size=13)),
        height=max(240, 34 * n_layer + 110),
        margin=dict(l=70, r=20, t=80, b=20),
        plot_bgcolor="white",
    )
    return fig


def type_colorscale() -> list[list]:
    """A discrete colour scale for head-type codes 0..len(HEAD_TYPES) - 1."""
    k = len(HEAD_TYPES)
    scale = []
    for i, name in enumerate(HEAD_TYPES):
        scale += [[i / k, TYPE_COLORS[name]], [(i + 1) / k, TYPE_COLORS[name]]]
    return scale


def type_timeline_figure(codes: np.ndarray, steps: Sequence[int], *, title: str) -> go.Figure:
    """Each head's type at each snapshot: codes [S, L, H] (indices into HEAD_TYPES) as a
    heatmap called "types", one row per head (layer.head), one column per snapshot."""
    codes = np.asarray(codes)
    n_steps, n_layer, n_head = codes.shape
    z = codes.reshape(n_steps, n_layer * n_head).T.astype(np.float64)  # [L*H, S]
    rows = [f"L{i} H{j}" for i in range(n_layer) for j in range(n_head)]
    names = np.asarray(HEAD_TYPES)[codes.reshape(n_steps, -1).T]
    text = np.array(
        [
            [f"{rows[r]}, step {steps[s]}: {names[r, s]}" for s in range(n_steps)]
            for r in range(len(rows))
        ]
    )
    k = len(HEAD_TYPES)
    fig = go.Figure(
        go.Heatmap(
            z=z,
            text=text,
            hovertemplate="%{text}<extra></extra>",
            colorscale=type_colorscale(),
            zmin=-0.5,
            zmax=k - 0.5,
            colorbar=dict(
                title="type",
                thickness=12,
                tickvals=list(range(k)),
                ticktext=list(HEAD_TYPES),
            ),
            xgap=1,
            ygap=1,
            name="types",
        )
    )
    every = max(1, n_steps // 10)
    fig.update_xaxes(
        tickvals=list(range(0, n_steps, every)),
        ticktext=[str(s) for s in list(steps)[::every]],
        title="step",
    )
    fig.update_yaxes(tickvals=list(range(len(rows))), ticktext=rows, autorange="reversed")
    fig.update_layout(
        title=dict(text=title, font=dict(size=13)),
        height=max(260, 16 * len(rows) + 120),
        margin=dict(l=70, r=20, t=50, b=40),
        plot_bgcolor="white",
    )
    return fig


def diverging_range(values: np.ndarray, floor: float = 1e-6) -> float:
    """A symmetric colour range for differences: the 99th percentile of |values|."""
    v = np.abs(np.asarray(values, dtype=np.float64))
    v = v[np.isfinite(v)]
    return float(max(np.percentile(v, 99) if v.size else 0.0, floor))


def bpd_figure(
    *,
    train: tuple[np.ndarray, np.ndarray] | None,
    test: tuple[np.ndarray, np.ndarray] | None,
    probes: tuple[np.ndarray, np.ndarray] | None,
    selected_step: int | None = None,
    title: str = "bits/dim during training",
) -> go.Figure:
    """Bits/dim against the step: (steps, values) of the training batches (smoothed by the
    caller or not), the held-out evaluations and the probe images at the snapshots; the
    snapshot at ``selected_step`` ringed (a trace called "selected")."""
    fig = go.Figure()
    for k, (name, pair, mode) in enumerate(
        [
            ("train (batch)", train, "lines"),
            ("test", test, "lines+markers"),
            ("probe images (snapshots)", probes, "lines+markers"),
        ]
    ):
        if pair is None or len(pair[0]) == 0:
            continue
        x, y = (np.asarray(a, dtype=np.float64) for a in pair)
        fig.add_trace(
            go.Scatter(
                x=x,
                y=y,
                mode=mode,
                marker=dict(size=5 if "markers" in mode else 2, color=color(k)),
                line=dict(color=color(k), width=1.5),
                name=name,
                hovertemplate=f"{name}: step %{{x}}, %{{y:.4f}} bits/dim<extra></extra>",
            )
        )
        if name.startswith("probe") and selected_step is not None:
            hit = np.nonzero(x == selected_step)[0]
            if len(hit) and np.isfinite(y[hit[0]]):
                fig.add_trace(
                    go.Scatter(
                        x=[selected_step],
                        y=[y[hit[0]]],
                        mode="markers",
                        marker=dict(
                            symbol="circle-open", size=13, color=TRUE_COLOR, line=dict(width=2)
                        ),
                        name="selected",
                        hoverinfo="skip",
                        showlegend=False,
                    )
                )
    fig.update_xaxes(title="step", rangemode="tozero")
    fig.update_yaxes(title="bits/dim")
    _line_layout(fig, title, height=340, legend_y=-0.3)
    return fig
