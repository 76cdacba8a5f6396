"""Charts of numbers on axes: the layout search (coverage against density, its labels kept
apart), predicted distributions over the 256 values, curves over training steps, and bits/dim
during training. The race's curves, the kernels' speed and the sparsity frontier have modules of
their own (viz/race_figures.py, viz/speed_figure.py, viz/frontier_figure.py).

Every chart is scatter traces with lines or markers, which viz.export draws again with
matplotlib for PNG, SVG and PDF.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from viz.style import LABELS_FIT, PART_COLORS, TRUE_COLOR, _line_layout, color

SEARCH_SIZE = (700, 430)  # the layout search's plot area in px, roughly (labels are placed in it)


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
    for family, family_color in families:
        sel = [r for r in rows if r["layout"].startswith(family)]
        fig.add_trace(
            go.Scatter(
                x=[r["density"] for r in sel],
                y=[r["coverage"] for r in sel],
                mode="markers+text",
                text=[r["layout"].split("(")[1].rstrip(")") for r in sel],
                textposition=[spots[r["layout"]] for r in sel],
                name=family,
                marker=dict(size=10, color=family_color),
                customdata=[r["layout"] for r in sel],
                hovertemplate="%{customdata}: density %{x:.4f}, coverage %{y:.3f}<extra></extra>",
            )
        )
    fig.update_xaxes(title="density (share of dense causal pairs)")
    fig.update_yaxes(title="coverage (share of attention kept)", range=[0, 1.05])
    fig.update_layout(title=title, height=520, margin=dict(l=60, r=20, t=50, b=40))
    return fig


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


def distribution_figure(
    probs: Mapping[str, np.ndarray], true_value: int | Mapping[str, int] | None, title: str
) -> go.Figure:
    """Predicted distributions over the 256 values, one curve per model ({name: [256]}), and the
    true value marked on each curve (a black ring, with its probability in the hover); one
    true value for all curves, or one per curve ({name: value}: the three channels of a colour
    pixel)."""
    traces = []
    values = np.arange(256)
    for k, (name, p) in enumerate(probs.items()):
        p = np.asarray(p, dtype=np.float64)
        truth = true_value.get(name) if isinstance(true_value, Mapping) else true_value
        traces.append(
            _line_trace(  # 256 points: the line alone (hover still finds each value)
                values, p, k, name, 0, f"{name}: value %{{x}}, p = %{{y:.4f}}<extra></extra>"
            )
        )
        if truth is not None:
            traces.append(
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
    return go.Figure(
        data=traces,
        layout=dict(
            xaxis=dict(title="pixel value", range=[-2, 257], **LABELS_FIT),
            yaxis=dict(title="probability", rangemode="tozero", **LABELS_FIT),
            **_line_layout(title, height=340, legend_y=-0.25),
        ),
    )


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
    fig.update_layout(**_line_layout(title, height=height, legend_y=-0.3))
    # a legend of dozens of curves (every head) repeats ten colours and is redrawn at every
    # step: the hover names each curve instead
    fig.update_layout(showlegend=len(series) <= MAX_LEGEND)
    return fig


def bpd_figure(
    *,
    train: tuple[np.ndarray, np.ndarray] | None,
    test: tuple[np.ndarray, np.ndarray] | None,
    probes: tuple[np.ndarray, np.ndarray] | None,
    title: str = "bits/dim during training",
) -> go.Figure:
    """Bits/dim against the step: (steps, values) of the training batches (smoothed by the
    caller or not), the held-out evaluations and the probe images at the snapshots. No step is
    marked: the Training page draws it once, not at every move of its step slider."""
    traces = []
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
        traces.append(
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
    return go.Figure(
        data=traces,
        layout=dict(
            xaxis=dict(title="step", rangemode="tozero"),
            yaxis=dict(title="bits/dim"),
            **_line_layout(title, height=340, legend_y=-0.3),
        ),
    )
