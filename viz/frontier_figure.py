"""The sparsity frontier drawn: bits/dim against the keys a query keeps, one line per family.

Plain data in (the dict analysis.frontier.measure_frontier returns, as python -m tools.frontier
writes it to JSON: assets/frontier/dense.json), a plotly figure, arrays and sentences out.

    frontier_figure  each family's lower envelope as a line (its other points faint markers),
                     dense as a horizontal reference, the top-k oracle highlighted, the trained
                     models and the fitted per-head layouts as their own markers; every point's
                     hover names its spec, density, keys, bits/dim and coverage, and its
                     customdata says what a click opens (clicked_target)
    read_frontier    a JSON file checked (FrontierError says what is wrong with it)
    at_density       each family's point nearest a density (Learned vs prescribed's sentence)
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import plotly.graph_objects as go

#: a colour per family, in analysis.frontier.FAMILIES' order; top-k is drawn thicker
COLORS = {
    "local": "#8c564b",
    "strided": "#1f77b4",
    "fixed": "#17becf",
    "dilated": "#bcbd22",
    "sinks": "#7f7f7f",
    "axial": "#2ca02c",
    "neighborhood": "#9467bd",
    "block_sparse": "#e377c2",
    "bigbird": "#ff7f0e",
    "topk": "#d62728",
    "moba": "#a05195",
}
LABELS = {"topk": "top-k (oracle)", "moba": "MoBA", "block_sparse": "block sparse"}
#: the customdata columns of every clickable point: what a click opens, then the hover's
OPEN_SPEC, OPEN_MODEL, LABEL, SPEC, DENSITY, KEYS, BPD, COVERAGE = range(8)
HOVER = (
    "<b>%{customdata[2]}</b><br>%{customdata[3]}<br>density %{customdata[4]:.3f} of the pairs"
    "<br>%{customdata[5]:.1f} keys a query<br>%{customdata[6]:.4f} bits/dim"
    "<br>coverage %{customdata[7]}<extra></extra>"
)


def shipped_frontier_path() -> Path:
    """Where the shipped frontier is: assets/frontier/dense.json (python -m tools.frontier
    --images 256 for the shipped dense model), or $SPARSE_EXPLORER_FRONTIER (read on every
    call, so tests and servers can point elsewhere)."""
    default = Path(__file__).resolve().parents[1] / "assets" / "frontier" / "dense.json"
    return Path(os.environ.get("SPARSE_EXPLORER_FRONTIER", default))


def recorded_model(result: dict) -> Path | None:
    """The folder of the model a frontier was measured on (its "model", a path relative to the
    project as tools.frontier records it), resolved; None when it names none."""
    recorded = result.get("model")
    if not recorded:
        return None
    where = Path(str(recorded))
    root = Path(__file__).resolve().parents[1]
    return (where if where.is_absolute() else root / where).resolve()


class FrontierError(ValueError):
    """A frontier file or result that cannot be drawn: the message says why."""


def family_label(family: str) -> str:
    return LABELS.get(family, family)


def check_frontier(result: object) -> dict:
    """``result`` if it is a frontier (the keys and point fields drawn here), else
    FrontierError naming what is missing."""
    if not isinstance(result, dict):
        raise FrontierError("it is not a frontier result (a JSON object is expected)")
    missing = [k for k in ("dense_bpd", "points", "envelopes", "n_tokens") if k not in result]
    if missing:
        raise FrontierError(f"it has no {', '.join(missing)} (not a tools.frontier result)")
    if not isinstance(result["points"], list) or not result["points"]:
        raise FrontierError("it has no points")
    fields = ("family", "spec", "density", "keys", "bpd")
    for i, p in enumerate(result["points"]):
        if not isinstance(p, dict) or any(f not in p for f in fields):
            raise FrontierError(f"point {i} lacks one of {', '.join(fields)}")
        if not all(_finite(p[f]) for f in ("density", "keys", "bpd")) or p["keys"] <= 0:
            raise FrontierError(f"point {i} ({p['spec']}) has a number that is not one")
    if not _finite(result["dense_bpd"]):
        raise FrontierError("its dense bits/dim is not a number")
    if not isinstance(result["envelopes"], dict):
        raise FrontierError("its envelopes are not a table of families")
    for key in ("trained", "fitted"):
        if not isinstance(result.get(key, []), list):
            raise FrontierError(f"its {key} points are not a list")
    return result


def read_frontier(path: str | Path) -> dict:
    """The frontier JSON at ``path``, checked (FrontierError: absent, unreadable, not JSON, or
    not a frontier; the message names the file)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FrontierError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise FrontierError(f"{path} cannot be read: {e}") from None
    try:
        result = json.loads(text)
    except json.JSONDecodeError as e:
        raise FrontierError(f"{path} is not JSON: {e}") from None
    try:
        return check_frontier(result)
    except FrontierError as e:
        raise FrontierError(f"{path}: {e}") from None


def _finite(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _coverage_text(c: object) -> str:
    return "-" if c is None else f"{float(c):.1%}"


def families_of(result: dict) -> list[str]:
    """The families of the points, in the order they come."""
    return list(dict.fromkeys(p["family"] for p in result["points"]))


def fitted_spec(fitted: dict) -> str:
    """A fitted point's per-layer layouts as one text ("spec; spec; ..."), or its one spec
    when every layer chose the same."""
    layers = [str(s) for s in fitted.get("layers", [])]
    return layers[0] if len(set(layers)) == 1 else "; ".join(layers)


def _row(open_spec, open_model, label, spec, p) -> list:
    return [
        open_spec,
        open_model,
        label,
        spec,
        float(p["density"]),
        float(p["keys"]),
        float(p["bpd"]),
        _coverage_text(p.get("coverage")),
    ]


def frontier_figure(result: dict, model: str, title: str | None = None) -> go.Figure:
    """The frontier of ``result`` (check_frontier's shape) for the model named ``model``: what
    a click on a point opens is that model under the point's spec (a trained point: that
    trained model, as it is)."""
    check_frontier(result)
    fig = go.Figure(_dense_trace(result, model))
    for family in families_of(result):
        fig.add_traces(_family_traces(result, family, model))
    trained = result.get("trained", [])
    if trained:
        fig.add_trace(_trained_trace(trained))
    fitted = result.get("fitted", [])
    if fitted:
        fig.add_trace(_fitted_trace(fitted, model))
    images = result.get("images")
    fig.update_layout(
        title=title
        or f"{model}: bits/dim under each sparse attention"
        + (f" ({images} test images)" if images else ""),
        xaxis={"title": {"text": "keys a query keeps (log scale)"}, "type": "log"},
        yaxis={"title": {"text": "test bits/dim (lower is better)"}},
        legend={"font": {"size": 11}},
        margin={"l": 60, "r": 20, "t": 50, "b": 50},
        height=520,
        hovermode="closest",
        clickmode="event+select",
    )
    return fig


def _dense_trace(result: dict, model: str) -> go.Scatter:
    """Dense attention's bits/dim as a flat dashed line across the keys of every point."""
    keys = [float(p["keys"]) for p in result["points"]]
    dense_keys = (int(result["n_tokens"]) + 1) / 2  # a causal query keeps (N + 1) / 2 on average
    dense = {"density": 1.0, "keys": dense_keys, "bpd": result["dense_bpd"]}
    return go.Scatter(
        x=[min(keys) * 0.85, dense_keys],
        y=[result["dense_bpd"]] * 2,
        mode="lines",
        name=f"dense: {result['dense_bpd']:.4f} bits/dim",
        line={"color": "#222222", "dash": "dash", "width": 1.5},
        customdata=[_row("", model, "dense (its own attention)", "dense()", dense)] * 2,
        hovertemplate=HOVER,
    )


def _family_traces(result: dict, family: str, model: str) -> list[go.Scatter]:
    """A family's lower envelope as a line (top-k thicker) and, faint, its other points."""
    mine = [p for p in result["points"] if p["family"] == family]
    on = set(result["envelopes"].get(family, []))
    line = sorted((p for p in mine if p["spec"] in on), key=lambda p: p["keys"])
    off = [p for p in mine if p["spec"] not in on]
    color = COLORS.get(family, "#555555")
    oracle = family == "topk"
    label = family_label(family)
    traces = [
        go.Scatter(
            x=[p["keys"] for p in line],
            y=[p["bpd"] for p in line],
            mode="lines+markers",
            name=label,
            legendgroup=family,
            line={"color": color, "width": 4 if oracle else 2},
            marker={"color": color, "size": 10 if oracle else 7},
            customdata=[_row(p["spec"], model, label, p["spec"], p) for p in line],
            hovertemplate=HOVER,
        )
    ]
    if off:
        traces.append(
            go.Scatter(
                x=[p["keys"] for p in off],
                y=[p["bpd"] for p in off],
                mode="markers",
                name=f"{label}: off its envelope",
                legendgroup=family,
                showlegend=False,
                opacity=0.35,
                marker={"color": color, "size": 6, "symbol": "circle-open"},
                customdata=[_row(p["spec"], model, label, p["spec"], p) for p in off],
                hovertemplate=HOVER,
            )
        )
    return traces


def _trained_trace(trained: list[dict]) -> go.Scatter:
    """The models trained under a layout as gold stars, named; a click opens that model."""
    names = [Path(str(t.get("model", "?"))).name for t in trained]
    return go.Scatter(
        x=[t["keys"] for t in trained],
        y=[t["bpd"] for t in trained],
        mode="markers+text",
        name="trained under its layout",
        text=names,
        textposition="top center",
        marker={
            "symbol": "star",
            "size": 17,
            "color": "#ffd700",
            "line": {"color": "#222222", "width": 1.5},
        },
        customdata=[
            _row("", name, f"trained: the {name} model", str(t.get("spec", "?")), t)
            for name, t in zip(names, trained, strict=True)
        ],
        hovertemplate=HOVER,
    )


def _fitted_trace(fitted: list[dict], model: str) -> go.Scatter:
    """The fitted per-head layouts as black diamonds; a click opens the model under one."""
    return go.Scatter(
        x=[f["keys"] for f in fitted],
        y=[f["bpd"] for f in fitted],
        mode="markers",
        name="fitted per head",
        marker={
            "symbol": "diamond",
            "size": 13,
            "color": "#111111",
            "line": {"color": "#ffffff", "width": 1.5},
        },
        customdata=[
            _row(
                fitted_spec(f),
                model,
                f"fitted per head, budget {float(f.get('budget', 0)):.0%}",
                _short(fitted_spec(f)),
                f,
            )
            for f in fitted
        ],
        hovertemplate=HOVER,
    )


def _short(spec: str, limit: int = 160) -> str:
    """A long per-layer spec cut for the hover (the click opens the whole)."""
    return spec if len(spec) <= limit else spec[: limit - 3] + "..."


def clicked_target(event) -> tuple[str, str] | None:
    """(model name, spec: "" for its own attention) of the point clicked in a
    frontier_figure, from st.plotly_chart's selection event; None when none was."""
    try:
        points = event["selection"]["points"]
    except (KeyError, TypeError):
        return None
    for p in points:
        data = p.get("customdata") if isinstance(p, dict) else None
        if isinstance(data, (list, tuple)) and len(data) > OPEN_MODEL:
            return str(data[OPEN_MODEL]), str(data[OPEN_SPEC])
    return None


def frontier_arrays(result: dict) -> dict[str, np.ndarray]:
    """Every point as columns (the export's NPZ): kind (family point, envelope, trained,
    fitted), family, spec, density, keys, bpd, coverage (NaN where none)."""
    rows = []
    envelopes = result["envelopes"]
    for p in result["points"]:
        on = p["spec"] in envelopes.get(p["family"], [])
        rows.append(("envelope" if on else "point", p["family"], p["spec"], p))
    for t in result.get("trained", []):
        rows.append(("trained", Path(str(t.get("model", "?"))).name, str(t.get("spec")), t))
    for f in result.get("fitted", []):
        rows.append(("fitted", f"budget {float(f.get('budget', 0)):.0%}", fitted_spec(f), f))
    return {
        "kind": np.array([r[0] for r in rows]),
        "family": np.array([r[1] for r in rows]),
        "spec": np.array([r[2] for r in rows]),
        "density": np.array([float(r[3]["density"]) for r in rows]),
        "keys": np.array([float(r[3]["keys"]) for r in rows]),
        "bpd": np.array([float(r[3]["bpd"]) for r in rows]),
        "coverage": np.array(
            [np.nan if r[3].get("coverage") is None else float(r[3]["coverage"]) for r in rows]
        ),
        "dense_bpd": np.array(float(result["dense_bpd"])),
    }


# "at a budget" means from this share of it to a little over it (a layout's density moves in
# steps; strided(l=28) keeps 10.5 % of the pairs on 28 x 28)
BUDGET_BAND = (0.7, 1.15)


def pick_at_density(points: Sequence[dict], density: float) -> dict:
    """A family's choice at a budget: of its points whose density lies in BUDGET_BAND times
    ``density``, the one that keeps the most attention (coverage; the lowest bits/dim where no
    coverage was measured), so a badly aligned choice does not stand for the family; with none
    in the band, the point nearest the budget."""
    lo, hi = (f * density for f in BUDGET_BAND)
    band = [p for p in points if lo <= p["density"] <= hi]
    if not band:
        return min(points, key=lambda p: (abs(p["density"] - density), p["density"]))

    def merit(p: dict) -> float:
        if p.get("coverage") is not None:
            return -float(p["coverage"])
        return float(p["bpd"]) if p.get("bpd") is not None else math.inf

    return min(band, key=merit)


def at_density(result: dict, density: float = 0.1) -> list[dict]:
    """Each family's choice at ``density`` (pick_at_density, of all its points, on its envelope
    or not): {family, label, spec, density, keys, bpd, coverage}, the highest coverage first
    (a family without coverage last)."""
    out = []
    for family in families_of(result):
        mine = [p for p in result["points"] if p["family"] == family]
        p = pick_at_density(mine, density)
        out.append({"family": family, "label": family_label(family), **_fields(p)})
    return sorted(out, key=lambda r: -1.0 if r["coverage"] is None else -r["coverage"])


def _fields(p: dict) -> dict:
    return {
        "spec": p["spec"],
        "density": float(p["density"]),
        "keys": float(p["keys"]),
        "bpd": None if p.get("bpd") is None else float(p["bpd"]),
        "coverage": None if p.get("coverage") is None else float(p["coverage"]),
    }


def coverage_sentence(rows: Sequence[dict], density: float = 0.1, who: str = "this model") -> str:
    """ "At 10% of the keys, this model's attention is kept 82% by top-k, 60% by axial, ..."
    from at_density's rows (those with a coverage)."""
    kept = [r for r in rows if r.get("coverage") is not None]
    if not kept:
        return f"No family's coverage of {who}'s attention was measured."
    parts = [f"{r['coverage']:.0%} by {r['label']}" for r in kept]
    return (
        f"At about {density:.0%} of the keys, {who}'s attention is kept "
        + ", ".join(parts[:-1])
        + (" and " if len(parts) > 1 else "")
        + parts[-1]
        + "."
    )


def frontier_summary(result: dict, density: float = 0.1) -> list[str]:
    """What a frontier says, in a few sentences of its own numbers: dense, the envelopes near
    ``density`` (the best static family, top-k), the trained models and the fitted layouts."""
    dense = float(result["dense_bpd"])
    out = [
        f"Dense attention (every earlier key): {dense:.4f} bits/dim on "
        f"{result.get('images', '?')} test images."
    ]
    near = {r["family"]: r for r in at_density(result, density)}
    static = [r for f, r in near.items() if f not in ("topk", "moba")]
    if static:
        best = min(static, key=lambda r: r["bpd"])
        out.append(
            f"Near {density:.0%} of the pairs the best static layout is {best['label']} "
            f"({best['spec']}: {best['keys']:.0f} keys a query, {best['bpd']:.4f} bits/dim, "
            f"{best['bpd'] - dense:+.4f} from dense)."
        )
    if "topk" in near:
        t = near["topk"]
        out.append(
            f"Top-k, which keeps each query's largest weights (an oracle: it needs the "
            f"scores it skips), reaches {t['bpd']:.4f} bits/dim with {t['keys']:.0f} keys "
            f"({t['bpd'] - dense:+.4f})."
        )
    for t in result.get("trained", []):
        out.append(
            f"The {Path(str(t.get('model', '?'))).name} model, trained under "
            f"{t.get('spec', '?')} ({float(t['keys']):.0f} keys), scores {float(t['bpd']):.4f} "
            f"bits/dim ({float(t['bpd']) - dense:+.4f} from dense)."
        )
    for f in result.get("fitted", []):
        out.append(
            f"Fitted per head within {float(f.get('budget', 0)):.0%}: {float(f['bpd']):.4f} "
            f"bits/dim at {float(f['keys']):.0f} keys, coverage "
            f"{_coverage_text(f.get('coverage'))}."
        )
    return out


def coverage_bars(rows: Sequence[dict], title: str) -> go.Figure:
    """at_density's rows as dots: the share of the attention each family keeps (its spec and
    density in the hover), top-k in its red."""
    kept = [r for r in rows if r.get("coverage") is not None]
    fig = go.Figure(
        go.Scatter(  # dots, not bars: every export format draws a scatter (viz/export.py)
            x=[r["label"] for r in kept],
            y=[r["coverage"] for r in kept],
            mode="markers+text",
            text=[f"{r['coverage']:.0%}" for r in kept],
            textposition="top center",
            marker={"color": [COLORS.get(r["family"], "#555555") for r in kept], "size": 14},
            customdata=[[r["spec"], r["density"], r["keys"]] for r in kept],
            hovertemplate="<b>%{x}</b><br>%{customdata[0]}<br>density %{customdata[1]:.3f}, "
            "%{customdata[2]:.1f} keys a query<br>keeps %{y:.1%} of the attention<extra></extra>",
            name="coverage",
        )
    )
    fig.update_layout(
        title=title,
        yaxis={
            "title": {"text": "attention kept (coverage)"},
            "range": [0, 1.08],
            "tickformat": ".0%",
        },
        margin={"l": 60, "r": 20, "t": 50, "b": 80},
        height=360,
    )
    return fig
