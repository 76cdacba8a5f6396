"""Figures of the Playground's race, built from arrays: bits/dim of every layout against steps
or against seconds of its own training.

Like the other figure modules, nothing here runs a model or imports streamlit; the curves are
scatter traces (what viz.export redraws with matplotlib), the baselines flat two-point traces.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go

from viz.style import _line_layout, color

BASELINE_COLOR = "#7f7f7f"
MAX_TRAIN_POINTS = 400  # a long race's train curve is averaged down to about this many points


@dataclass(frozen=True)
class Curve:
    """One layout's numbers: train bits/dim at every step, held-out at some (arrays)."""

    name: str
    steps: np.ndarray  # int [S]
    seconds: np.ndarray  # float [S]: its own training time at each step
    train_bpd: np.ndarray  # float [S]
    test_steps: np.ndarray  # int [E]
    test_seconds: np.ndarray  # float [E]
    test_bpd: np.ndarray  # float [E]


def smooth(x: np.ndarray, y: np.ndarray, points: int = MAX_TRAIN_POINTS) -> tuple:
    """(x, y) as a running mean over windows of len / points samples, at the window ends: a
    batch's bits/dim is noisy, and hundreds of points a curve cost the browser for nothing."""
    window = max(1, len(y) // points)
    if window == 1 or len(y) < window:
        return x, y
    kept = len(y) // window * window
    y_mean = y[len(y) - kept :].reshape(-1, window).mean(1)
    return x[len(y) - kept :][window - 1 :: window], y_mean


def race_curves_figure(
    curves: Sequence[Curve],
    *,
    against: str = "steps",
    baselines: Mapping[str, float] | None = None,
    title: str | None = None,
    height: int = 360,
) -> go.Figure:
    """Train (thin line, smoothed) and held-out (markers) bits/dim of every layout against
    ``against`` ("steps" or "seconds": each layout's own training time), one colour a layout,
    and the ``baselines`` (name: bits/dim) as flat grey lines across the range."""
    if against not in ("steps", "seconds"):
        raise ValueError(f"against must be 'steps' or 'seconds', got {against!r}")
    fig = go.Figure()
    unit = "step" if against == "steps" else "s"
    fmt = "%{x}" if against == "steps" else "%{x:.1f}"
    right = 0.0
    for k, c in enumerate(curves):
        x = np.asarray(c.steps if against == "steps" else c.seconds, dtype=np.float64)
        y = np.asarray(c.train_bpd, dtype=np.float64)
        x, y = smooth(x, y)
        if len(x):
            right = max(right, float(x[-1]))
        fig.add_trace(
            go.Scatter(
                x=x,
                y=y,
                mode="lines",
                line=dict(color=color(k), width=1),
                opacity=0.55,
                name=f"{c.name} train",
                legendgroup=c.name,
                hovertemplate=f"{c.name} train: {unit} {fmt}, %{{y:.3f}}<extra></extra>",
            )
        )
        tx = np.asarray(c.test_steps if against == "steps" else c.test_seconds, dtype=np.float64)
        if len(tx):
            right = max(right, float(tx[-1]))
        fig.add_trace(
            go.Scatter(
                x=tx,
                y=np.asarray(c.test_bpd, dtype=np.float64),
                mode="lines+markers",
                marker=dict(size=5, color=color(k)),
                line=dict(color=color(k), width=2),
                name=f"{c.name} held-out",
                legendgroup=c.name,
                hovertemplate=f"{c.name} held-out: {unit} {fmt}, %{{y:.3f}}<extra></extra>",
            )
        )
    for name, value in (baselines or {}).items():
        if not np.isfinite(value):
            continue
        fig.add_trace(
            go.Scatter(
                x=[0.0, max(right, 1.0)],
                y=[value, value],
                mode="lines",
                line=dict(color=BASELINE_COLOR, width=1, dash="dot"),
                name=f"{name} ({value:.2f})",
                hovertemplate=f"{name}: {value:.3f} bits/dim<extra></extra>",
            )
        )
    x_title = "step" if against == "steps" else "seconds of its own training steps"
    fig.update_xaxes(title=x_title, rangemode="tozero")
    fig.update_yaxes(title="bits/dim")
    fig.update_layout(
        **_line_layout(title or f"bits/dim against {against}", height=height, legend_y=-0.28)
    )
    return fig


def coinciding(curves: Sequence[Curve], tol: float = 1e-6) -> list[list[str]]:
    """Groups (two or more names) of curves with the same train and held-out bits/dim at every
    step they share, to ``tol``: drawn, they are one line, and a page has to say why."""
    groups: list[list[int]] = []
    for i, c in enumerate(curves):
        for group in groups:
            if _same(curves[group[0]], c, tol):
                group.append(i)
                break
        else:
            groups.append([i])
    return [[curves[i].name for i in g] for g in groups if len(g) > 1]


def _same(a: Curve, b: Curve, tol: float) -> bool:
    n = min(len(a.train_bpd), len(b.train_bpd))
    m = min(len(a.test_bpd), len(b.test_bpd))
    if n == 0 and m == 0:
        return False
    ya, yb = np.asarray(a.train_bpd[:n], float), np.asarray(b.train_bpd[:n], float)
    ta, tb = np.asarray(a.test_bpd[:m], float), np.asarray(b.test_bpd[:m], float)
    return bool(np.allclose(ya, yb, rtol=0, atol=tol) and np.allclose(ta, tb, rtol=0, atol=tol))


def separation(curves: Sequence[Curve], gap: float) -> tuple[int, float] | None:
    """(step, seconds) of the first held-out point from which on the layouts' held-out
    bits/dim stay at least ``gap`` apart (best to worst, at the steps they all have); None
    when they never do (or fewer than two curves)."""
    if len(curves) < 2:
        return None
    common = set(int(s) for s in curves[0].test_steps)
    for c in curves[1:]:
        common &= set(int(s) for s in c.test_steps)
    steps = sorted(common)
    if not steps:
        return None
    spread = []
    for s in steps:
        values = [float(c.test_bpd[list(c.test_steps).index(s)]) for c in curves]
        spread.append(max(values) - min(values))
    first = None
    for k in range(len(steps)):
        if all(v >= gap for v in spread[k:]):
            first = k
            break
    if first is None:
        return None
    c0 = curves[0]
    seconds = float(c0.test_seconds[list(c0.test_steps).index(steps[first])])
    return steps[first], seconds
