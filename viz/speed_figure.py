"""The measured cost of attention against sequence length: the paper's O(N^2) vs O(N·√N), seen.

Built from the rows `python -m tools.bench_kernels --device cpu` writes (one dict per N, case
and layout: docs/benchmarks/cpu_attention.json); plain data in, a plotly figure out.
"""

from __future__ import annotations

import math

import plotly.graph_objects as go

# (case, layout) -> (legend name, colour, dash): dense in black, strided and fixed each in one
# colour, the path drawn by dash (solid: ours)
SERIES = {
    ("dense causal SDPA", "dense"): ("dense causal SDPA", "#222222", "solid"),
    ("composed", "strided"): ("strided, composed", "#1f77b4", "solid"),
    ("composed", "fixed"): ("fixed, composed", "#d62728", "solid"),
    ("masked SDPA", "strided"): ("strided, SDPA + mask", "#1f77b4", "dash"),
    ("masked SDPA", "fixed"): ("fixed, SDPA + mask", "#d62728", "dash"),
    ("FlexAttention", "strided"): ("strided, FlexAttention", "#1f77b4", "dot"),
    ("FlexAttention", "fixed"): ("fixed, FlexAttention", "#d62728", "dot"),
}
METRICS = {"fwd_ms": "forward", "fwd_bwd_ms": "forward + backward"}
# drawn at first: dense and the composed kernels; the other paths are a click on their legend
# entry away (nine lines at once flatten into one band)
SHOWN = {("dense causal SDPA", "dense"), ("composed", "strided"), ("composed", "fixed")}


def command_text(command: str) -> str:
    """A recorded command line with an option repeated with the same value said once
    ("--device cpu --device cpu --crossover" -> "--device cpu --crossover")."""
    words, out, seen = command.split(), [], set()
    i = 0
    while i < len(words):
        word = words[i]
        value = words[i + 1] if i + 1 < len(words) and not words[i + 1].startswith("-") else None
        if word.startswith("--") and value is not None:
            if (word, value) not in seen:
                seen.add((word, value))
                out += [word, value]
            i += 2
            continue
        if not (word.startswith("--") and (word, None) in seen):
            out.append(word)
        if word.startswith("--"):
            seen.add((word, None))
        i += 1
    return " ".join(out)


def log_ticks(values: list[float], ms: bool = False) -> dict:
    """Ticks of a log axis at clean values only: powers of two for N (the sizes measured are),
    decades for times; labelled plainly (1,024; 0.1; 1,000), no minor digits."""
    lo, hi = min(values), max(values)
    if ms:
        ticks = [10.0**k for k in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)]
        text = [f"{t:,.0f}" if t >= 1 else f"{t:g}" for t in ticks]
    else:
        ticks = [2.0**k for k in range(math.floor(math.log2(lo)), math.ceil(math.log2(hi)) + 1)]
        ticks = ticks if len(ticks) <= 8 else ticks[:: math.ceil(len(ticks) / 8)]
        text = [f"{t:,.0f}" for t in ticks]
    return {"tickvals": ticks, "ticktext": text, "minor": {"showgrid": False}}


def series(rows: list[dict], metric: str) -> dict[tuple[str, str], tuple[list[int], list[float]]]:
    """{(case, layout): (N values, times in ms)} of the rows that were run, sorted by N."""
    out: dict[tuple[str, str], tuple[list[int], list[float]]] = {}
    for r in sorted(rows, key=lambda r: r["N"]):
        value = r.get(metric)
        if value is None:
            continue
        ns, ms = out.setdefault((r["case"], r["layout"]), ([], []))
        ns.append(int(r["N"]))
        ms.append(float(value))
    return out


def slope_line(ns: list[int], at_n: int, at_ms: float, power: float) -> list[float]:
    """Times growing as N^power through (at_n, at_ms): the reference slopes."""
    return [at_ms * (n / at_n) ** power for n in ns]


def fitted_power(ns: list[int], ms: list[float]) -> float | None:
    """The least-squares slope of log(ms) against log(N) (2 for O(N^2), 1.5 for O(N·√N)), or
    None with fewer than two points."""
    if len(ns) < 2:
        return None
    xs, ys = [math.log(n) for n in ns], [math.log(t) for t in ms]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else None


def speed_figure(rows: list[dict], metric: str = "fwd_ms", title: str | None = None) -> go.Figure:
    """Log-log time against N for every measured path, with N^2 (through dense's first point)
    and N·√N (through composed strided's first point) drawn as grey guides; each legend entry
    says its fitted slope. The paths in SHOWN are drawn, the others listed in the legend (a
    click shows one). Ticks at powers of two and decades only; the plot area is about square
    (the slopes read true)."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    fig = go.Figure()
    lines = series(rows, metric)
    every_n = sorted({n for ns, _ in lines.values() for n in ns})
    guides = (
        (("dense causal SDPA", "dense"), 2.0, "N² (slope 2)"),
        (("composed", "strided"), 1.5, "N·√N (slope 1.5)"),
    )
    for key, power, name in guides:
        if key in lines and every_n:
            ns, ms = lines[key]
            fig.add_trace(
                go.Scatter(
                    x=every_n,
                    y=slope_line(every_n, ns[0], ms[0], power),
                    mode="lines",
                    name=name,
                    line={"color": "#aaaaaa", "width": 1, "dash": "longdash"},
                    hoverinfo="skip",
                )
            )
    for key, (name, color, dash) in SERIES.items():
        if key not in lines:
            continue
        ns, ms = lines[key]
        power = fitted_power(ns, ms)
        label = name if power is None else f"{name} (slope {power:.2f})"
        fig.add_trace(
            go.Scatter(
                x=ns,
                y=ms,
                mode="lines+markers",
                name=label,
                line={"color": color, "dash": dash},
                marker={"color": color, "size": 6},
                hovertemplate=f"{name}<br>N = %{{x}}<br>%{{y:.1f}} ms<extra></extra>",
                visible=True if key in SHOWN else "legendonly",
            )
        )
    every_ms = [t for _, ms in lines.values() for t in ms]
    fig.update_layout(
        title=title or f"Attention on the CPU, {METRICS[metric]}: time against N",
        xaxis={
            "title": {"text": "sequence length N (tokens)"},
            "type": "log",
            **(log_ticks(every_n) if every_n else {}),
        },
        yaxis={
            "title": {"text": f"{METRICS[metric]} time (ms)"},
            "type": "log",
            **(log_ticks(every_ms, ms=True) if every_ms else {}),
        },
        legend={"font": {"size": 11}},
        margin={"l": 60, "r": 20, "t": 50, "b": 50},
        # drawn 800 px wide (app_pages/models_page.py), the legend on the right: the plot area
        # about square (a 3:1 area flattens the slopes)
        height=620,
    )
    return fig
