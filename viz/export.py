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
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from html import escape
from pathlib import Path
from typing import Protocol

import numpy as np
import plotly.graph_objects as go

from kernels.layouts import Layout
from models.tokens import Geometry
from viz.layout_view import part_names, pixel_view
from viz.maps import attention_map_figure
from viz.mosaics import head_grid_figure
from viz.pixels import layout_pixel_figure, pixel_grid_figure
from viz.style import CLICK_TARGETS, COLOUR_BAR

FORMATS = ("png", "svg", "pdf", "html", "npz")
VERSION = "0.1.0"
SOFTWARE = f"sparse-transformer-explorer {VERSION}"
CSS_DPI = 96  # plotly sizes are CSS pixels
# A heatmap of more cells than this is drawn as ONE raster image (imshow) in PNG, SVG and PDF,
# as the page draws it: as one vector rectangle per cell, an N x N map's SVG holds a path per
# pair, hundreds of MB at 784 tokens (docs/BENCHMARKS.md, "Exports"). Smaller ones stay vector
# (crisp at any zoom).
RASTER_CELLS = 64 * 64
# An item drawing more cells than this (an N x N map: 784 x 784 = 615k pixels) is heavy: its
# HTML (plotly.js inlined, and the map: ~6 MB each, one a layer and head in a batch) is made
# only when asked for.
HEAVY_CELLS = 100_000
HEAVY_FORMATS = ("html",)
_MATPLOTLIB = threading.Lock()


@dataclass
class Exportable:
    """A figure, the arrays it was drawn from, and what it shows.

    ``picture`` (uint8 [H, W] or [H, W, 3]) makes it a picture instead of a figure (the
    Complete page's grid of samples): its PNG is those exact pixels, its formats png and npz.
    """

    name: str  # a deterministic file stem
    figure: go.Figure | None
    data: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, object] = field(default_factory=dict)
    picture: np.ndarray | None = None

    @property
    def title(self) -> str:
        if self.figure is not None and self.figure.layout.title.text:
            return self.figure.layout.title.text
        return self.name

    @property
    def formats(self) -> tuple[str, ...]:
        """The formats this item can be written in."""
        return ("png", "npz") if self.figure is None else FORMATS

    @cached_property
    def cells(self) -> int:
        """How many cells (heatmap cells, image pixels, pixel markers) its figure draws: its
        weight (counted once: a page's export panel asks for every item and format at every
        run)."""
        if self.figure is None:
            return 0 if self.picture is None else int(np.prod(self.picture.shape[:2]))
        total = 0
        for tr in self.figure.data:
            if isinstance(tr, go.Heatmap) and tr.z is not None:
                total += int(np.size(tr.z))
            elif isinstance(tr, go.Image):
                total += _image_size(tr)
            elif isinstance(tr, go.Scatter) and tr.x is not None and not _drawn_apart(tr):
                total += len(tr.x)
        return total

    @property
    def heavy(self) -> bool:
        """An N x N map (or anything as big): its HEAVY_FORMATS are made only on request."""
        return self.cells > HEAVY_CELLS


# plotly's line dashes as matplotlib's line styles
_DASHES = {"solid": "-", "dash": "--", "dot": ":", "dashdot": "-.", "longdash": (0, (8, 3))}


def _drawn_apart(tr: go.Scatter) -> bool:
    """A scatter whose points are not drawn: click targets, or a colour bar's one point."""
    return tr.meta in (CLICK_TARGETS, COLOUR_BAR)


def _click_targets(tr) -> bool:
    """A scatter that only carries hover and clicks (viz.style.click_targets: the grid's
    tiles, the map's rows): nothing to draw in a static figure."""
    return isinstance(tr, go.Scatter) and tr.meta == CLICK_TARGETS


def _arr(a) -> np.ndarray | None:
    """A plotly array property as numpy (plotly may hold lists, tuples or arrays)."""
    return None if a is None else np.asarray(a)


def _cmap(colorscale, name: str = "plotly"):
    """The plotly colour scale (a name or [[pos, colour], ...]) as a matplotlib colormap."""
    import plotly.colors as pc
    from matplotlib.colors import LinearSegmentedColormap

    scale = pc.get_colorscale(colorscale) if isinstance(colorscale, str) else colorscale
    return LinearSegmentedColormap.from_list(name, [(float(p), _rgb01(c)) for p, c in scale])


def _rgb01(color: str) -> tuple[float, ...]:
    """A plotly colour as (r, g, b) in 0..1: plotly reads hex and rgb(...), matplotlib a CSS
    name (the overlay's "black" to "white")."""
    import plotly.colors as pc
    from matplotlib.colors import to_rgb

    rgb = pc.convert_colors_to_same_type(color, "rgb")[0]
    return tuple(c / 255 for c in pc.unlabel_rgb(rgb[0])) if rgb else to_rgb(color)


def _edges(start, step, n):
    start = 0.0 if start is None else float(start)
    step = 1.0 if step is None else float(step)
    return start + step * (np.arange(n + 1) - 0.5)


def _source_picture(trace: go.Image):
    """The PIL image of an image trace's data: URI ``source``, opened (its header read, its
    pixels decoded only when asked for); None when the trace has ``z`` instead."""
    if not trace.source:
        return None
    from PIL import Image

    return Image.open(io.BytesIO(base64.b64decode(trace.source.split(",", 1)[1])))


def _image_pixels(trace: go.Image) -> np.ndarray:
    """uint8 [H, W, 3 or 4] of an image trace, from its data: URI ``source`` or its ``z``."""
    picture = _source_picture(trace)
    if picture is None:
        return np.asarray(trace.z, dtype=np.uint8)
    # transparent pixels (a mosaic's lines between tiles) stay transparent
    return np.asarray(picture.convert("RGBA" if "A" in picture.getbands() else "RGB"))


def _image_size(trace: go.Image) -> int:
    """How many pixels an image trace holds (a PNG's header read, not its pixels decoded)."""
    picture = _source_picture(trace)
    if picture is None:
        return int(np.prod(np.shape(trace.z)[:2]))
    width, height = picture.size
    return width * height


def _draw(fig: go.Figure):
    """A matplotlib figure drawing what the plotly figure shows (the trace kinds viz/ uses)."""
    from matplotlib.figure import Figure

    lay = fig.layout
    width = (lay.width or 700) / CSS_DPI
    height = (lay.height or 500) / CSS_DPI
    # a bare Figure, not pyplot: no global figure registry shared by the worker threads
    mfig = Figure(figsize=(width, height), dpi=CSS_DPI)
    ax = mfig.subplots()
    legend = False
    for tr in fig.data:
        if isinstance(tr, go.Image):
            _draw_image(ax, tr)
        elif isinstance(tr, go.Heatmap):
            _draw_heatmap(mfig, ax, tr)
        elif isinstance(tr, go.Scatter) and tr.meta == COLOUR_BAR:
            _draw_colour_bar(mfig, ax, tr)
        elif isinstance(tr, go.Scatter) and not _click_targets(tr):
            legend = _draw_scatter(mfig, ax, tr) or legend
    _draw_rectangles(ax, lay.shapes or ())
    _set_axes(ax, lay)
    if lay.title and lay.title.text:
        ax.set_title(lay.title.text, fontsize=10)
    if legend:
        ax.legend(fontsize=7, loc="best")
    mfig.tight_layout()
    return mfig


def _draw_image(ax, tr: go.Image) -> None:
    """An RGB(A) picture: a PNG data URI (an N x N map, a mosaic) or z. Unresampled in SVG and
    PDF (interpolation "none": a 784 x 784 map keeps every row and key; "nearest" resampled it
    to the figure's resolution, dropping rows), nearest in PNG."""
    rgb = _image_pixels(tr)
    ny, nx = rgb.shape[:2]
    x0, y0 = float(tr.x0 or 0), float(tr.y0 or 0)
    dx, dy = float(tr.dx or 1), float(tr.dy or 1)
    extent = (x0 - dx / 2, x0 + dx * (nx - 0.5), y0 + dy * (ny - 0.5), y0 - dy / 2)
    ax.imshow(rgb, extent=extent, interpolation="none", aspect="auto")


def _draw_heatmap(mfig, ax, tr: go.Heatmap) -> None:
    """A heatmap as cells (vector), or as one raster image past RASTER_CELLS, and its bar."""
    z = np.asarray(tr.z, dtype=float)
    ny, nx = z.shape
    xe, ye = _edges(tr.x0, tr.dx, nx), _edges(tr.y0, tr.dy, ny)
    style = dict(
        cmap=_cmap(tr.colorscale or "Viridis"), vmin=tr.zmin, vmax=tr.zmax, alpha=tr.opacity
    )
    if nx * ny > RASTER_CELLS:  # one embedded image, at the map's own resolution
        mesh = ax.imshow(
            np.ma.masked_invalid(z),
            extent=(xe[0], xe[-1], ye[-1], ye[0]),
            origin="upper",
            interpolation="none",  # unresampled in SVG/PDF; nearest in PNG
            aspect="auto",
            **style,
        )
        ax.set_xlim(xe[0], xe[-1])  # as pcolormesh leaves them (imshow flips y)
        ax.set_ylim(ye[0], ye[-1])
    else:
        mesh = ax.pcolormesh(xe, ye, np.ma.masked_invalid(z), shading="flat", **style)
    if tr.showscale is not False:
        _label_bar(mfig.colorbar(mesh, ax=ax), tr.colorbar)


def _draw_colour_bar(mfig, ax, tr: go.Scatter) -> None:
    """The colour bar of an image's colours (viz.style.colorbar_only), its title and ticks."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    m = tr.marker
    mappable = ScalarMappable(Normalize(m.cmin, m.cmax), _cmap(m.colorscale or "Viridis"))
    _label_bar(mfig.colorbar(mappable, ax=ax), m.colorbar)


def _label_bar(bar, colorbar) -> None:
    """A matplotlib colour bar titled and ticked as the plotly ``colorbar`` says (its ticks
    named where it names them: head types, a grid's shares of its peak)."""
    if colorbar and colorbar.title and colorbar.title.text:
        bar.set_label(colorbar.title.text)
    if colorbar and colorbar.tickvals is not None and colorbar.ticktext:
        bar.set_ticks(list(colorbar.tickvals), labels=list(colorbar.ticktext))


def _draw_scatter(mfig, ax, tr: go.Scatter) -> bool:
    """A scatter as what it stands for: pixel cells, rings, curves or labelled points;
    whether it adds a legend entry."""
    x, y = _arr(tr.x), _arr(tr.y)
    if x is None or len(x) == 0 or x[0] is None:  # a legend-only entry
        ax.scatter([], [], marker="s", color=tr.marker.color, label=tr.name)
        return True
    symbol = tr.marker.symbol or "circle"
    if symbol == "square" and np.ndim(tr.marker.color) == 1:  # a pixel grid: draw it as cells
        _draw_pixel_cells(mfig, ax, tr, x, y)
        return False
    if symbol == "square-open":  # outlines around pixels
        _draw_rings(ax, tr, x, y)
        return False
    if "lines" in (tr.mode or ""):  # curves (the speed and training figures)
        _draw_curve(ax, tr, x, y)
    else:
        _draw_points(ax, tr, x, y)
    return bool(tr.name) and tr.showlegend is not False


def _draw_pixel_cells(mfig, ax, tr: go.Scatter, x: np.ndarray, y: np.ndarray) -> None:
    """A pixel grid's points as coloured cells, with its colour bar when it shows one."""
    xi, yi = x.astype(int), y.astype(int)
    grid = np.full((yi.max() + 1, xi.max() + 1), np.nan)
    grid[yi, xi] = np.asarray(tr.marker.color, dtype=float)
    mesh = ax.pcolormesh(
        np.arange(grid.shape[1] + 1) - 0.5,
        np.arange(grid.shape[0] + 1) - 0.5,
        grid,
        cmap=_cmap(tr.marker.colorscale or "Viridis"),
        vmin=tr.marker.cmin,
        vmax=tr.marker.cmax,
    )
    if tr.marker.showscale:
        _label_bar(mfig.colorbar(mesh, ax=ax), tr.marker.colorbar)


def _draw_rings(ax, tr: go.Scatter, x: np.ndarray, y: np.ndarray) -> None:
    """Square rings around pixels (the query, a layout's keys)."""
    from matplotlib.patches import Rectangle

    lw = (tr.marker.line.width or 1) if tr.marker.line else 1
    for xv, yv in zip(x, y, strict=True):
        ax.add_patch(
            Rectangle(
                (xv - 0.5, yv - 0.5), 1, 1, fill=False, edgecolor=tr.marker.color, linewidth=lw
            )
        )


def _draw_curve(ax, tr: go.Scatter, x: np.ndarray, y: np.ndarray) -> None:
    """A line, with markers where the trace has them, in its colour and dash."""
    line = tr.line or go.scatter.Line()
    ax.plot(
        x,
        y,
        color=line.color or tr.marker.color,
        linestyle=_DASHES.get(line.dash or "solid", "-"),
        linewidth=line.width or 1.5,
        marker="o" if "markers" in tr.mode else None,
        markersize=(tr.marker.size or 6) / 2,
        label=tr.name,
    )


def _draw_points(ax, tr: go.Scatter, x: np.ndarray, y: np.ndarray) -> None:
    """Markers, each with its text above it where the trace shows text."""
    ax.scatter(x, y, color=tr.marker.color, s=(tr.marker.size or 6) ** 2 / 2, label=tr.name)
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


def _draw_rectangles(ax, shapes) -> None:
    """The layout's rectangles in data coordinates (the head grid's query squares)."""
    from matplotlib.patches import Rectangle

    for shape in shapes:
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


def _set_axes(ax, lay) -> None:
    """Titles, ticks, log scales, ranges, a reversed y and square cells as the layout says."""
    for axis, is_x in ((lay.xaxis, True), (lay.yaxis, False)):
        if axis.title and axis.title.text:
            (ax.set_xlabel if is_x else ax.set_ylabel)(axis.title.text)
        if axis.tickvals is not None:
            (ax.set_xticks if is_x else ax.set_yticks)(list(axis.tickvals))
            if axis.ticktext is not None:
                (ax.set_xticklabels if is_x else ax.set_yticklabels)(list(axis.ticktext))
        if axis.type == "log":  # (a log axis' plotly range is in decades: left to matplotlib)
            (ax.set_xscale if is_x else ax.set_yscale)("log")
        elif axis.range is not None:
            (ax.set_xlim if is_x else ax.set_ylim)(*axis.range)
    # (an image leaves the axis reversed already, as plotly draws an image's rows downwards)
    if lay.yaxis.autorange == "reversed" and lay.yaxis.range is None and not ax.yaxis_inverted():
        ax.invert_yaxis()
    if lay.yaxis.scaleanchor == "x":
        ax.set_aspect("equal", adjustable="box")


def _meta_text(meta: dict) -> str:
    return json.dumps({**meta, "software": SOFTWARE}, sort_keys=True, default=str)


def _picture_png(item: Exportable, meta: str, dpi: int) -> bytes:
    """A picture item's PNG: its exact pixels, the metadata in text chunks, and its dpi."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Title", item.title)
    info.add_text("Description", meta)
    info.add_text("Software", SOFTWARE)
    buf = io.BytesIO()
    pixels = np.asarray(item.picture, dtype=np.uint8)
    Image.fromarray(pixels[..., 0] if pixels.ndim == 3 and pixels.shape[2] == 1 else pixels).save(
        buf, format="PNG", pnginfo=info, dpi=(dpi, dpi)
    )
    return buf.getvalue()


def export_bytes(item: Exportable, fmt: str, *, dpi: int = 150) -> bytes:
    """One format of one item, as bytes, with the metadata inside (every format)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    if fmt not in item.formats:
        raise ValueError(f"{item.name} is a picture: it exports as {', '.join(item.formats)}")
    meta = _meta_text(item.meta)
    title = item.title
    if fmt == "png" and item.figure is None:
        return _picture_png(item, meta, dpi)
    if fmt == "html":
        html = item.figure.to_html(full_html=True, include_plotlyjs=True)
        # names are data: "<" as \u003c keeps a name like "</script>" inside the JSON
        data = meta.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
        tag = f'<script type="application/json" id="figure-metadata">{data}</script>'
        head = f"<head><title>{escape(title)}</title>{tag}"
        return html.replace("<head>", head, 1).encode()
    buf = io.BytesIO()
    if fmt == "npz":
        np.savez_compressed(buf, **item.data, metadata=np.array(meta))
        return buf.getvalue()
    info = {
        "png": {"Title": title, "Description": meta, "Software": SOFTWARE},
        "svg": {"Title": title, "Description": meta, "Creator": SOFTWARE},
        "pdf": {"Title": title, "Subject": meta, "Creator": SOFTWARE},
    }[fmt]
    import matplotlib

    with _MATPLOTLIB:  # rcParams are global: one drawing at a time
        mfig = _draw(item.figure)
        # SVG text as text (searchable, selectable), not glyph outlines
        with matplotlib.rc_context({"svg.fonttype": "none"}):
            mfig.savefig(buf, format=fmt, dpi=dpi, metadata=info)
    return buf.getvalue()


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")


def content_key(array: np.ndarray) -> str:
    """A short hash of an array's bytes and shape: the cache key of everything computed from an
    image (or a set of them) and the ``image_sha1`` in the figures' metadata."""
    return hashlib.sha1(array.tobytes() + str(array.shape).encode()).hexdigest()[:12]


class ExportCancelled(Exception):
    """An export stopped before its last file (Cancel, or the session ended)."""


def planned(
    items: Sequence[Exportable], formats: Sequence[str], *, heavy: bool = True
) -> list[tuple[Exportable, str]]:
    """The (item, format) pairs an export makes, in order: the formats each item has, and the
    HEAVY_FORMATS of heavy items (N x N maps) only with ``heavy``."""
    return [
        (item, fmt)
        for item in items
        for fmt in formats
        if fmt in item.formats and (heavy or not (item.heavy and fmt in HEAVY_FORMATS))
    ]


@dataclass(frozen=True)
class Estimate:
    """What an export will take, told before it starts. ``seconds`` is rough (the costs are
    an idle 2-core CPU's; a busy server takes up to five times as long), so describe() does
    not state it: the export's progress bar tells the time left from its own measured pace."""

    files: int
    bytes: int
    seconds: float
    memory: int  # peak bytes while making it: the zip so far plus the largest drawing

    def describe(self) -> str:
        return (
            f"{self.files} files, about {self.bytes / 2**20:.1f} MB, up to "
            f"{self.memory / 2**20:.0f} MB of memory; the time left is measured as it runs"
        )


# per format: seconds and bytes of a figure, seconds per cell, bytes per cell when drawn as one
# raster image and when drawn as vectors (RASTER_CELLS), measured on a 2-core CPU: a 784 x 784
# map (random weights, an image) is PNG 0.4 s / 0.6 MB, SVG 0.3 s / 0.9 MB, PDF 0.3 s / 0.7 MB,
# HTML 0.05 s / 5.7 MB (4.9 MB of it plotly.js, inlined so that the file works offline), NPZ
# 0.03 s / 1.1 MB
_COST = {
    "png": (0.1, 30e3, 1.2e-6, 0.9, 0.9),
    "svg": (0.08, 30e3, 4e-7, 1.6, 200),
    "pdf": (0.08, 20e3, 2.5e-7, 1.1, 30),
    "html": (0.05, 4.9e6, 3e-7, 1.3, 60),
    "npz": (0.01, 1e3, 5e-8, 1.8, 4),
}


def estimate(
    items: Sequence[Exportable], formats: Sequence[str], *, dpi: int = 150, heavy: bool = True
) -> Estimate:
    """Files, bytes, seconds and peak memory of ``export_zip(items, formats, ...)``."""
    entries = []
    for item, fmt in planned(items, formats, heavy=heavy):
        lay = item.figure.layout if item.figure is not None else None
        size = None if lay is None else (lay.width or 700) * (lay.height or 500)
        entries.append((item.cells, fmt, size))
    return _estimate(entries, dpi)


def estimate_views(
    geometry: Geometry,
    n_layers: int,
    n_heads: int,
    views: Sequence[str],
    formats: Sequence[str],
    *,
    dpi: int = 150,
    heavy: bool = True,
) -> Estimate:
    """The estimate of model_items' export before any attention is captured (the Export page
    tells it before it starts): the same figures, counted from the sizes alone."""
    h, w, n = geometry.height, geometry.width, geometry.n_tokens
    cells = []
    if "grid" in views:
        cells.append(n_layers * (h + 1) * n_heads * (w + 1))
    cells += [n * n] * (n_layers * n_heads) * ("head" in views)
    cells += [h * w] * (n_layers * n_heads) * ("pixel" in views)
    cells += [h * w] * n_layers * ("layout" in views)
    entries = [
        (c, fmt, 700 * 520)
        for c in cells
        for fmt in formats
        if fmt in FORMATS and (heavy or not (c > HEAVY_CELLS and fmt in HEAVY_FORMATS))
    ]
    return _estimate(entries, dpi)


def _estimate(entries: list[tuple[int, str, float | None]], dpi: int) -> Estimate:
    """entries: (cells drawn, format, CSS pixels of the figure or None for a picture)."""
    size = seconds = drawing = 0.0
    for cells, fmt, css_pixels in entries:
        base_s, base_b, per_s, raster_b, vector_b = _COST[fmt]
        scale = (dpi / 150) ** 2 if fmt == "png" else 1.0  # more pixels to draw and compress
        seconds += (base_s + per_s * cells) * max(1.0, scale)
        size += (base_b * scale) + (raster_b if cells > RASTER_CELLS else vector_b) * cells
        if fmt in ("png", "svg", "pdf") and css_pixels is not None:
            pixels = css_pixels * (dpi / CSS_DPI) ** 2
            drawing = max(drawing, 12 * pixels + 60 * cells)  # RGBA canvas, copies, the mesh
        else:
            drawing = max(drawing, base_b + 80 * cells)  # the JSON text of every cell
    return Estimate(len(entries), int(size), seconds, int(size + drawing))


def _made_files(
    items: list[Exportable],
    formats: Sequence[str],
    dpi: int,
    heavy: bool,
    on_file: Callable[[str], None] | None,
    cancelled: Callable[[], bool] | None,
) -> Iterator[tuple[str, bytes]]:
    """(file name, bytes) of every planned file, one at a time; ``on_file(name)`` after each;
    ExportCancelled as soon as ``cancelled()`` is true (checked before each)."""
    for count, (item, fmt) in enumerate(planned(items, formats, heavy=heavy)):
        if cancelled is not None and cancelled():
            raise ExportCancelled(f"cancelled after {count} files")
        name = f"{item.name}.{fmt}"
        yield name, export_bytes(item, fmt, dpi=dpi)
        if on_file is not None:
            on_file(name)


def export_files(
    items: list[Exportable],
    formats: Sequence[str],
    *,
    dpi: int = 150,
    heavy: bool = True,
    on_file: Callable[[str], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> dict[str, bytes]:
    """Every format of every item (see planned), {file name: bytes}; ``on_file(name)`` after
    each file; ExportCancelled as soon as ``cancelled()`` is true (checked before each)."""
    return dict(_made_files(items, formats, dpi, heavy, on_file, cancelled))


def export_zip(
    items: list[Exportable],
    formats: Sequence[str],
    *,
    dpi: int = 150,
    heavy: bool = False,
    on_file: Callable[[str], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> tuple[bytes, int]:
    """The batch as one zip, each file compressed into it as soon as it is made (memory: the
    zip so far and one file), with an index.md; returns (zip bytes, number of files). Stops
    with ExportCancelled as soon as ``cancelled()`` is true (checked before each file)."""
    import zipfile

    buf = io.BytesIO()
    count = 0
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in _made_files(items, formats, dpi, heavy, on_file, cancelled):
            z.writestr(name, data)
            count += 1
        z.writestr("index.md", index_markdown(items, formats, heavy=heavy))
    return buf.getvalue(), count + 1


def index_markdown(items: list[Exportable], formats: Sequence[str], *, heavy: bool = True) -> str:
    """index.md of a batch: one line per item, its title and a link to each of its files."""
    lines = ["# Exported figures", ""]
    made: dict[str, list[str]] = {}
    for item, fmt in planned(items, formats, heavy=heavy):
        made.setdefault(item.name, []).append(fmt)
    for item in items:
        links = " · ".join(f"[{fmt}]({item.name}.{fmt})" for fmt in made.get(item.name, []))
        title = item.figure.layout.title.text if item.figure is not None else ""
        lines.append(f"- **{item.name}** — {title or ''}: {links}")
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
        items.append(_grid_item(att, per_pixel, stem, base))
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
                items.append(_pixel_item(per_pixel[li, h].max(axis=2), att.query, stem, hmeta))
        if "layout" in views:
            items.append(_layout_item(att, layout, stem, lmeta))
    return items


def _grid_item(att: AttentionArrays, per_pixel: np.ndarray, stem: str, base: dict) -> Exportable:
    """The chosen layers x the chosen heads as one grid, labelled with their numbers."""
    row, col = att.query
    maps = per_pixel[..., 0][:, att.heads]  # [len(layers), len(heads), H, W]
    some = ("head " if len(att.heads) == 1 else "heads ") + ", ".join(map(str, att.heads))
    shown = "all heads" if len(att.heads) == per_pixel.shape[1] else some
    return Exportable(
        f"{stem}_r{row}c{col}_grid",
        head_grid_figure(
            maps, f"pixel ({row}, {col}): {shown}", layers=att.layers, heads=att.heads
        ),
        {"maps": maps, "layers": np.array(att.layers), "heads": np.array(att.heads)},
        {**base, "view": "grid", "layers": att.layers, "heads": att.heads},
    )


def _pixel_item(weights: np.ndarray, query: tuple[int, int], stem: str, hmeta: dict) -> Exportable:
    """Where the query pixel looks in one head: its weights [H, W] over the image."""
    row, col = query
    layer, h = hmeta["layer"], hmeta["head"]
    return Exportable(
        f"{stem}_L{layer}H{h}_r{row}c{col}_pixel",
        pixel_grid_figure(
            weights,
            title=f"layer {layer}, head {h}: where pixel ({row}, {col}) looks",
            query=(row, col),
            zmin=0,
            colorbar_title="weight",
        ),
        {"weights": weights},
        {**hmeta, "view": "pixel"},
    )


def _layout_item(att: AttentionArrays, layout: Layout, stem: str, lmeta: dict) -> Exportable:
    """A layer's layout around the query pixel: which pixels it may attend to, by part."""
    row, col = att.query
    codes = pixel_view(layout, att.geometry, att.query_token, 0)
    return Exportable(
        f"{stem}_L{lmeta['layer']}_r{row}c{col}_layout",
        layout_pixel_figure(
            codes,
            part_names(layout),
            (row, col),
            f"{layout!r}: keys of pixel ({row}, {col})",
        ),
        {"part_codes": codes},
        {**lmeta, "view": "layout"},
    )
