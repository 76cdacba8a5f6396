"""Figures and the data behind them as files: PNG, SVG, PDF, HTML and NPZ, no browser needed.

One look on screen and on paper: the static formats are drawn by matplotlib from the very
plotly figure the app shows (its arrays, colour scales, titles, axis labels, colour bars), so a
figure is defined once. HTML is plotly's own standalone page (plotly.js inlined, works offline).
Metadata (model, layout, layer, head, query pixel, image hash, project version) goes inside
every file whose format has a place for it: PNG text chunks, SVG/PDF document info, a JSON
script tag in HTML, a ``metadata`` entry in NPZ.

model_items builds the figures of one model and image from arrays only (what
analysis.attention.capture_image returns); the command line is ``python -m tools.export``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import plotly.graph_objects as go

from kernels.layouts import Layout
from models.tokens import Geometry
from viz.figures import (
    attention_map_figure,
    head_grid_figure,
    layout_pixel_figure,
    pixel_grid_figure,
)
from viz.layout_view import part_names, pixel_view

FORMATS = ("png", "svg", "pdf", "html", "npz")
VERSION = "0.1.0"
CSS_DPI = 96  # plotly sizes are CSS pixels


@dataclass
class Exportable:
    """A figure, the arrays it was drawn from, and what it shows."""

    name: str  # a deterministic file stem
    figure: go.Figure
    data: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, object] = field(default_factory=dict)


def _arr(a) -> np.ndarray | None:
    """A plotly array property as numpy (plotly may hold lists, tuples or arrays)."""
    return None if a is None else np.asarray(a)


def _cmap(colorscale, name: str = "plotly"):
    """The plotly colour scale (a name or [[pos, colour], ...]) as a matplotlib colormap."""
    import plotly.colors as pc
    from matplotlib.colors import LinearSegmentedColormap

    scale = pc.get_colorscale(colorscale) if isinstance(colorscale, str) else colorscale
    stops = []
    for pos, color in scale:
        rgb = pc.unlabel_rgb(pc.convert_colors_to_same_type(color, "rgb")[0][0])
        stops.append((float(pos), tuple(c / 255 for c in rgb)))
    return LinearSegmentedColormap.from_list(name, stops)


def _edges(start, step, n):
    start = 0.0 if start is None else float(start)
    step = 1.0 if step is None else float(step)
    return start + step * (np.arange(n + 1) - 0.5)


def _image_pixels(trace: go.Image) -> np.ndarray:
    """uint8 [H, W, 3 or 4] of an image trace, from its data: URI ``source`` or its ``z``."""
    if trace.source:
        from PIL import Image

        payload = trace.source.split(",", 1)[1]
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(payload))).convert("RGB"))
    return np.asarray(trace.z, dtype=np.uint8)


def _draw(fig: go.Figure):
    """A matplotlib figure drawing what the plotly figure shows (the trace kinds viz/ uses)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    lay = fig.layout
    width = (lay.width or 700) / CSS_DPI
    height = (lay.height or 500) / CSS_DPI
    mfig, ax = plt.subplots(figsize=(width, height), dpi=CSS_DPI)
    legend = False
    for tr in fig.data:
        if isinstance(tr, go.Image):  # an RGB picture: a PNG data URI (mask_figure) or z
            rgb = _image_pixels(tr)
            ny, nx = rgb.shape[:2]
            x0, y0 = float(tr.x0 or 0), float(tr.y0 or 0)
            dx, dy = float(tr.dx or 1), float(tr.dy or 1)
            extent = (x0 - dx / 2, x0 + dx * (nx - 0.5), y0 + dy * (ny - 0.5), y0 - dy / 2)
            ax.imshow(rgb, extent=extent, interpolation="nearest", aspect="auto")
        elif isinstance(tr, go.Heatmap):
            z = np.asarray(tr.z, dtype=float)
            ny, nx = z.shape
            mesh = ax.pcolormesh(
                _edges(tr.x0, tr.dx, nx),
                _edges(tr.y0, tr.dy, ny),
                np.ma.masked_invalid(z),
                cmap=_cmap(tr.colorscale or "Viridis"),
                vmin=tr.zmin,
                vmax=tr.zmax,
                shading="flat",
            )
            if tr.showscale is not False:
                bar = mfig.colorbar(mesh, ax=ax)
                if tr.colorbar and tr.colorbar.title and tr.colorbar.title.text:
                    bar.set_label(tr.colorbar.title.text)
        elif isinstance(tr, go.Scatter):
            x, y = _arr(tr.x), _arr(tr.y)
            if x is None or len(x) == 0 or x[0] is None:  # a legend-only entry
                ax.scatter([], [], marker="s", color=tr.marker.color, label=tr.name)
                legend = True
                continue
            symbol = tr.marker.symbol or "circle"
            color = tr.marker.color
            if symbol == "square" and np.ndim(color) == 1:  # a pixel grid: draw it as cells
                xi, yi = x.astype(int), y.astype(int)
                grid = np.full((yi.max() + 1, xi.max() + 1), np.nan)
                grid[yi, xi] = np.asarray(color, dtype=float)
                mesh = ax.pcolormesh(
                    np.arange(grid.shape[1] + 1) - 0.5,
                    np.arange(grid.shape[0] + 1) - 0.5,
                    grid,
                    cmap=_cmap(tr.marker.colorscale or "Viridis"),
                    vmin=tr.marker.cmin,
                    vmax=tr.marker.cmax,
                )
                if tr.marker.showscale:
                    bar = mfig.colorbar(mesh, ax=ax)
                    if tr.marker.colorbar and tr.marker.colorbar.title:
                        bar.set_label(tr.marker.colorbar.title.text or "")
            elif symbol == "square-open":  # outlines around pixels
                lw = (tr.marker.line.width or 1) if tr.marker.line else 1
                for xv, yv in zip(x, y, strict=True):
                    ax.add_patch(
                        Rectangle(
                            (xv - 0.5, yv - 0.5), 1, 1, fill=False, edgecolor=color, linewidth=lw
                        )
                    )
            else:
                ax.scatter(x, y, color=color, s=(tr.marker.size or 6) ** 2 / 2, label=tr.name)
                legend = legend or bool(tr.name)
                if tr.text is not None and "text" in (tr.mode or ""):
                    for xv, yv, t in zip(x, y, tr.text, strict=True):
                        ax.annotate(
                            str(t),
                            (xv, yv),
                            textcoords="offset points",
                            xytext=(0, 5),
                            ha="center",
                            fontsize=7,
                        )
    for shape in lay.shapes or ():
        if shape.type == "rect" and (shape.xref in (None, "x")):
            ax.add_patch(
                Rectangle(
                    (shape.x0, shape.y0),
                    shape.x1 - shape.x0,
                    shape.y1 - shape.y0,
                    fill=False,
                    edgecolor=shape.line.color,
                    linewidth=shape.line.width or 1,
                )
            )
    for axis, setter in ((lay.xaxis, ax), (lay.yaxis, ax)):
        is_x = axis is lay.xaxis
        if axis.title and axis.title.text:
            (setter.set_xlabel if is_x else setter.set_ylabel)(axis.title.text)
        if axis.tickvals is not None:
            (setter.set_xticks if is_x else setter.set_yticks)(list(axis.tickvals))
            if axis.ticktext is not None:
                (setter.set_xticklabels if is_x else setter.set_yticklabels)(list(axis.ticktext))
        if axis.range is not None:
            (setter.set_xlim if is_x else setter.set_ylim)(*axis.range)
    if lay.yaxis.autorange == "reversed" and lay.yaxis.range is None:
        ax.invert_yaxis()
    if lay.yaxis.scaleanchor == "x":
        ax.set_aspect("equal", adjustable="box")
    if lay.title and lay.title.text:
        ax.set_title(lay.title.text, fontsize=10)
    if legend:
        ax.legend(fontsize=7, loc="best")
    mfig.tight_layout()
    return mfig


def _meta_text(meta: dict) -> str:
    return json.dumps(
        {**meta, "software": f"sparse-transformer-explorer {VERSION}"}, sort_keys=True
    )


def export_bytes(item: Exportable, fmt: str, *, dpi: int = 150) -> bytes:
    """One format of one figure, as bytes."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    meta = _meta_text(item.meta)
    title = item.figure.layout.title.text or item.name
    if fmt == "html":
        html = item.figure.to_html(full_html=True, include_plotlyjs=True)
        tag = f'<script type="application/json" id="figure-metadata">{meta}</script>'
        return html.replace("<head>", f"<head><title>{title}</title>{tag}", 1).encode()
    buf = io.BytesIO()
    if fmt == "npz":
        np.savez_compressed(buf, **item.data, metadata=np.array(meta))
        return buf.getvalue()
    import matplotlib.pyplot as plt

    mfig = _draw(item.figure)
    info = {
        "png": {"Title": title, "Description": meta, "Software": "sparse-transformer-explorer"},
        "svg": {"Title": title, "Description": meta, "Creator": "sparse-transformer-explorer"},
        "pdf": {"Title": title, "Subject": meta, "Creator": "sparse-transformer-explorer"},
    }[fmt]
    mfig.savefig(buf, format=fmt, dpi=dpi, metadata=info)
    plt.close(mfig)
    return buf.getvalue()


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")


def zip_bytes(files: dict[str, bytes]) -> bytes:
    """Files {name: bytes} as one zip archive (what the app offers for a batch)."""
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


def content_key(array: np.ndarray) -> str:
    """A short hash of an array's bytes and shape: the cache key of everything computed from an
    image (or a set of them) and the ``image_sha1`` in the figures' metadata."""
    return hashlib.sha1(array.tobytes() + str(array.shape).encode()).hexdigest()[:12]


def export_files(
    items: list[Exportable],
    formats: Sequence[str],
    *,
    dpi: int = 150,
    on_file: Callable[[str], None] | None = None,
) -> dict[str, bytes]:
    """Every format of every item, {file name: bytes}; ``on_file(name)`` after each file."""
    files = {}
    for item in items:
        for fmt in formats:
            name = f"{item.name}.{fmt}"
            files[name] = export_bytes(item, fmt, dpi=dpi)
            if on_file is not None:
                on_file(name)
    return files


def index_markdown(items: list[Exportable], formats: Sequence[str]) -> str:
    """index.md of a batch: one line per figure, its title and a link to each of its files."""
    lines = ["# Exported figures", ""]
    for item in items:
        links = " · ".join(f"[{fmt}]({item.name}.{fmt})" for fmt in formats)
        lines.append(f"- **{item.name}** — {item.figure.layout.title.text or ''}: {links}")
    return "\n".join(lines) + "\n"


def write_all(
    items: list[Exportable], out: Path, formats: list[str], *, dpi: int = 150, progress: bool = True
) -> list[Path]:
    """Write every format of every item into ``out`` plus an index.md linking them all."""
    from tqdm import tqdm

    out.mkdir(parents=True, exist_ok=True)
    with tqdm(total=len(items) * len(formats), desc="export", disable=not progress) as bar:
        files = export_files(items, formats, dpi=dpi, on_file=lambda _: bar.update())
    written = []
    for name, data in files.items():
        (out / name).write_bytes(data)
        written.append(out / name)
    (out / "index.md").write_text(index_markdown(items, formats))
    return written


VIEWS = ("grid", "head", "pixel", "layout")


class AttentionArrays(Protocol):
    """What model_items draws: an analysis.attention.ImageAttention, made by
    analysis.attention.capture_image (viz never imports it: that module runs models)."""

    image: np.ndarray  # uint8 [H, W, C]
    geometry: Geometry
    query: tuple[int, int]  # the query pixel (row, col)
    layers: list[int]
    heads: list[int]
    layouts: list[Layout]  # one per entry of layers
    rows: np.ndarray  # [len(layers), n_head, N]: the query token's attention in every head
    maps: np.ndarray | None  # [len(layers), len(heads), N, N]; needed for the "head" view

    @property
    def query_token(self) -> int: ...


def model_items(
    att: AttentionArrays, *, model_name: str, image_name: str, views: Sequence[str] = VIEWS
) -> list[Exportable]:
    """The Exportables the app shows for one model and image, from arrays: the overview grid
    of every layer and head, each head's N x N map, where the query pixel looks in each head,
    and each layer's layout around the query pixel (``views``: any of VIEWS)."""
    unknown = [v for v in views if v not in VIEWS]
    if unknown:
        raise ValueError(f"unknown views {unknown}; choose from {', '.join(VIEWS)}")
    if "head" in views and att.maps is None:
        raise ValueError('the "head" view needs the N x N maps: capture_image(..., maps=True)')
    g = att.geometry
    row, col = att.query
    base = {
        "model": model_name,
        "image": image_name,
        "image_sha1": content_key(att.image),
        "query_pixel": [row, col],
    }
    stem = f"{safe_name(Path(model_name).name)}_{safe_name(Path(image_name).stem)}"
    per_pixel = att.rows.reshape(len(att.layers), -1, g.height, g.width, g.channels)
    items = []
    if "grid" in views:
        maps = per_pixel[..., 0]
        items.append(
            Exportable(
                f"{stem}_r{row}c{col}_grid",
                head_grid_figure(maps, f"pixel ({row}, {col}): all heads", layers=att.layers),
                {"maps": maps},
                {**base, "view": "grid"},
            )
        )
    for li, (layer, layout) in enumerate(zip(att.layers, att.layouts, strict=True)):
        lmeta = {**base, "layer": layer, "layout": repr(layout)}
        for hi, h in enumerate(att.heads):
            hmeta = {**lmeta, "head": h}
            if "head" in views:
                probs = att.maps[li, hi]
                items.append(
                    Exportable(
                        f"{stem}_L{layer}H{h}_head",
                        attention_map_figure(probs, 1, f"layer {layer}, head {h}: N x N map"),
                        {"probs": probs},
                        {**hmeta, "view": "head"},
                    )
                )
            if "pixel" in views:
                w = per_pixel[li, h].max(axis=2)
                items.append(
                    Exportable(
                        f"{stem}_L{layer}H{h}_r{row}c{col}_pixel",
                        pixel_grid_figure(
                            w,
                            title=f"layer {layer}, head {h}: where pixel ({row}, {col}) looks",
                            query=(row, col),
                            zmin=0,
                            colorbar_title="weight",
                        ),
                        {"weights": w},
                        {**hmeta, "view": "pixel"},
                    )
                )
        if "layout" in views:
            codes = pixel_view(layout, g, att.query_token, 0)
            items.append(
                Exportable(
                    f"{stem}_L{layer}_r{row}c{col}_layout",
                    layout_pixel_figure(
                        codes,
                        part_names(layout),
                        (row, col),
                        f"{layout!r}: keys of pixel ({row}, {col})",
                    ),
                    {"part_codes": codes},
                    {**lmeta, "view": "layout"},
                )
            )
    return items
