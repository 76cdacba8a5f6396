"""Models & speed page: the model card and the benchmark tables, as the repository has them."""

import re
from pathlib import Path

import streamlit as st

from app_pages.common import ROOT, models_dir

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


st.title("Models & speed")
st.caption(
    "The shipped models' card (data, architecture, bits/dim, samples, what the dense "
    "model learned) and the measured speed of kernels and sampling."
)
card, bench = st.tabs(["Model card", "Benchmarks"])
with card:
    show_markdown(models_dir() / "README.md")
with bench:
    show_markdown(ROOT / "docs" / "BENCHMARKS.md")
