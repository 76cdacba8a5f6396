"""Models & speed page: the model card, the measured cost of attention against N (drawn from
the benchmark's own rows), and the benchmark tables, as the repository has them."""

import json
import os
import re
from pathlib import Path

import numpy as np
import streamlit as st

from app_pages.common import ROOT, export_panel, models_dir
from viz.export import Exportable
from viz.speed_figure import METRICS, series, speed_figure

# written by `python -m tools.bench_kernels --device cpu` (docs/BENCHMARKS.md); the variable
# points the page at another run's rows
CPU_BENCH = Path(
    os.environ.get("SPARSE_EXPLORER_CPU_BENCH", ROOT / "docs" / "benchmarks" / "cpu_attention.json")
)

IMAGE = re.compile(r"^!\[(?P<alt>[^\]]*)\]\((?P<src>[^)]+)\)\s*$")


def show_markdown(path: Path) -> None:
    """Render a Markdown file, drawing its local images (st.markdown cannot resolve them)."""
    if not path.is_file():
        st.info(
            f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} is not there yet."
        )
        return
    chunk: list[str] = []
    for line in path.read_text().splitlines():
        m = IMAGE.match(line)
        if m and not m["src"].startswith("http"):
            st.markdown("\n".join(chunk))
            chunk = []
            image = (path.parent / m["src"]).resolve()
            if image.is_file():
                st.image(str(image), caption=m["alt"])
        else:
            chunk.append(line)
    st.markdown("\n".join(chunk))


def read_bench(path: Path) -> dict | None:
    """The benchmark's JSON, or None (with the reason shown) when it is missing or unreadable."""
    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    if not path.is_file():
        st.info(f"{where} is not there yet: run `python -m tools.bench_kernels --device cpu`.")
        return None
    try:
        data = json.loads(path.read_text())
        if not isinstance(data.get("attention"), list):
            raise ValueError("it has no 'attention' rows")
    except (OSError, ValueError, AttributeError) as e:
        st.error(f"{where} cannot be read ({e}); run the benchmark again to rewrite it.")
        return None
    return data


def show_speed_curves() -> None:
    """Time against N, log-log, as measured: dense against strided and fixed."""
    data = read_bench(CPU_BENCH)
    if data is None:
        return
    metric = st.radio(
        "Measure",
        list(METRICS),
        format_func=METRICS.get,
        horizontal=True,
        key="speed_metric",
    )
    rows = data["attention"]
    fig = speed_figure(rows, metric)
    st.plotly_chart(fig, use_container_width=True, key="speed_chart")
    shape = data.get("shape", {})
    st.caption(
        f"Measured {data.get('date', '?')} on a {data.get('machine', '?')}, torch "
        f"{data.get('torch', '?')}: B={shape.get('B')}, H={shape.get('H')}, D={shape.get('D')}, "
        f"{shape.get('dtype')}; `{data.get('command', '')}`. On a log-log plot a cost growing "
        "as N^p is a line of slope p: dense attention climbs at 2, the factorized layouts at "
        "1.5 (l ~ sqrt(N)). Points missing at large N were not run (out of memory: see the "
        "table below)."
    )
    lines = series(rows, metric)
    arrays = {
        f"{case}_{layout}".replace(" ", "_"): np.array([ns, ms], dtype=float)
        for (case, layout), (ns, ms) in lines.items()
    }
    export_panel(
        [Exportable(f"attention_speed_{metric}", fig, arrays, {"source": str(CPU_BENCH.name)})],
        "speed_export",
        "Export this figure",
    )


st.title("Models & speed")
st.caption(
    "The shipped models' card (data, architecture, bits/dim, samples, what the dense "
    "model learned) and the measured speed of kernels and sampling."
)
card, bench = st.tabs(["Model card", "Benchmarks"])
with card:
    show_markdown(models_dir() / "README.md")
with bench:
    show_speed_curves()
    show_markdown(ROOT / "docs" / "BENCHMARKS.md")
