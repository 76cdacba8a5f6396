"""Models & speed page: the model card, the measured cost of attention against N (drawn from
the benchmark's own rows), and the benchmark tables, as the repository has them."""

import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import streamlit as st

from app_pages.export_panel import export_panel
from app_pages.models_cache import ROOT, models_dir
from app_pages.text import as_text
from models.datasets import DatasetError
from models.files import FileInputError, read_file
from models.uploads import ImageInputError, read_image_file
from viz.export import Exportable
from viz.speed_figure import METRICS, command_text, series, speed_figure

# written by `python -m tools.bench_kernels --device cpu` (docs/BENCHMARKS.md); the variable
# points the page at another run's rows
CPU_BENCH = Path(
    os.environ.get("SPARSE_EXPLORER_CPU_BENCH", ROOT / "docs" / "benchmarks" / "cpu_attention.json")
)

IMAGE = re.compile(r"^!\[(?P<alt>[^\]]*)\]\((?P<src>[^)]+)\)\s*$")
SPEED_WIDTH = 800  # px: with the legend at its right, the plot area is about square
MAX_TEXT_BYTES = 4 * 2**20  # a model card, docs/BENCHMARKS.md or the benchmark's JSON
# the errors reading a named path raises (models/files.py): one line each, never a traceback
READ_ERRORS = (FileInputError, ImageInputError, DatasetError, UnicodeDecodeError)


def shown_path(path: Path) -> str:
    return str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


def show_markdown(path: Path) -> None:
    """Render a Markdown file, drawing its local images (st.markdown cannot resolve them); a
    file that cannot be read (missing, not a regular file, too large) is one message."""
    if not path.exists():
        st.info(f"{shown_path(path)} is not there yet.")
        return
    try:
        text = read_file(path, MAX_TEXT_BYTES, what="page").decode("utf-8")
    except READ_ERRORS as e:
        st.error(as_text(f"{shown_path(path)} cannot be shown: {e}"))
        return
    chunk: list[str] = []
    for line in text.splitlines():
        m = IMAGE.match(line)
        if m and not m["src"].startswith("http"):
            st.markdown("\n".join(chunk))
            chunk = []
            image = (path.parent / m["src"]).resolve()
            try:
                st.image(read_image_file(image), caption=m["alt"])
            except READ_ERRORS as e:
                st.warning(as_text(f"{m['alt'] or m['src']}: not shown ({e})"))
        else:
            chunk.append(line)
    st.markdown("\n".join(chunk))


def read_bench(path: Path) -> dict | None:
    """The benchmark's JSON, or None (with the reason shown) when it is missing or unreadable."""
    where = shown_path(path)
    if not path.exists():
        st.info(f"{where} is not there yet: run `python -m tools.bench_kernels --device cpu`.")
        return None
    try:
        data = json.loads(read_file(path, MAX_TEXT_BYTES, what="benchmark"))
        if not isinstance(data.get("attention"), list):
            raise ValueError("it has no 'attention' rows")
    except READ_ERRORS as e:
        st.error(as_text(f"{where} cannot be read ({e}); run the benchmark again to rewrite it."))
        return None
    except (ValueError, AttributeError) as e:
        st.error(f"{where} cannot be read ({e}); run the benchmark again to rewrite it.")
        return None
    return data


def show_kernel_notes() -> None:
    """What kernels.dispatch's first-use checks found wrong in this server process (nothing to
    say when no model has run attention here: then it is not even imported, nor torch)."""
    dispatch = sys.modules.get("kernels.dispatch")
    for note in dispatch.kernel_notes() if dispatch is not None else []:
        st.warning(as_text(note))


def show_speed_curves() -> None:
    """Time against N, log-log, as measured: dense against strided and fixed. The chart has
    its own width (SPEED_WIDTH, less in a narrower window): about square, the slopes read true,
    where the page's full width flattened them."""
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
    st.plotly_chart(fig, width=SPEED_WIDTH, key="speed_chart")
    shape = data.get("shape", {})
    st.caption(
        f"Measured {data.get('date', '?')} on a {data.get('machine', '?')}, torch "
        f"{data.get('torch', '?')}: B={shape.get('B')}, H={shape.get('H')}, "
        f"D={shape.get('D')}, {shape.get('dtype')}; `{command_text(data.get('command', ''))}`."
        " On a log-log plot a cost growing as N^p is a line of slope p: dense attention "
        "climbs at 2, the factorized layouts at 1.5 (l ~ sqrt(N)). Shown: dense and the "
        "composed kernels; click a greyed legend entry to add the masked SDPA or "
        "FlexAttention paths. Points missing at large N were not run (out of memory: see "
        "the tables under Benchmarks)."
    )
    lines = series(rows, metric)
    arrays = {
        f"{case}_{layout}".replace(" ", "_"): np.array([ns, ms], dtype=float)
        for (case, layout), (ns, ms) in lines.items()
    }
    export_panel(
        [Exportable(f"attention_speed_{metric}", fig, arrays, {"source": CPU_BENCH.name})],
        "speed_export",
        "Export this figure",
    )


st.title("Models & speed")
st.caption(
    "The shipped models' card (data, architecture, bits/dim, samples, what the dense "
    "model learned) and the measured speed of kernels and sampling."
)
# a Triton kernel family that failed its first-use check on this server's GPU
# (kernels/dispatch.py): "auto" runs the composed path instead, and says so here
show_kernel_notes()
# the measured speed first, where a newcomer looks; the card and the full tables below it
show_speed_curves()
card, bench = st.tabs(["Model card", "Benchmarks"])
with card:
    show_markdown(models_dir() / "README.md")
with bench:
    show_markdown(ROOT / "docs" / "BENCHMARKS.md")
