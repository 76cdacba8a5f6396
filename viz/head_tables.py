"""A number or a type per layer and head as a coloured table: a prescribed layout's coverage
with each head's type (coverage_figure), any number per head such as the rise in bits/dim
without it (head_table_figure), and each head's type at every snapshot of training
(type_timeline_figure)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from analysis.metrics import HEAD_TYPES
from viz.style import _unit_heatmap, type_colorscale


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
