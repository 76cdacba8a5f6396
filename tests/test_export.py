"""Export: every format is valid and carries its metadata; the batch CLI is deterministic."""

import base64
import io
import json
import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from PIL import Image

from kernels import layouts as L
from models import ModelConfig, SparseTransformer, save_model
from models.tokens import Geometry
from tests.figure_util import image_rgba
from tools.export import main
from viz.charts import search_figure
from viz.export import (
    VIEWS,
    Exportable,
    content_key,
    export_bytes,
    export_files,
    index_markdown,
    model_items,
)
from viz.head_tables import coverage_figure
from viz.layout_view import part_names, pixel_view
from viz.maps import attention_map_figure
from viz.mosaics import head_grid_figure
from viz.pixels import layout_pixel_figure, pixel_grid_figure


def decode(a) -> np.ndarray:
    """A plotly array as written into HTML/JSON: a list, or a typed array {dtype, bdata}."""
    if isinstance(a, dict):
        return np.frombuffer(base64.b64decode(a["bdata"]), dtype=a["dtype"]).astype(float)
    return np.asarray(a, dtype=float)


META = {"model": "m", "layer": 1, "head": 0, "query_pixel": [3, 4], "image_sha1": "abc"}


def items() -> list[Exportable]:
    rng = np.random.default_rng(0)
    g = Geometry(6, 7, 1)
    lay = L.strided(7)
    probs = np.tril(rng.random((42, 42)))
    rows = [
        {
            "layer": i,
            "head": h,
            "coverage": 0.5,
            "coverage_std": 0.1,
            "coverage_local": 0.3,
            "coverage_column": 0.2,
            "entropy": 2.0,
            "k90": 5.0,
            "distance": 2.0,
            "type": "local",
        }
        for i in range(2)
        for h in range(2)
    ]
    search = [
        {"layout": "strided(l=7)", "density": 0.2, "coverage": 0.9},
        {"layout": "fixed(l=7, c=1)", "density": 0.15, "coverage": 0.5},
    ]
    return [
        Exportable("map", attention_map_figure(probs, 1, "map"), {"probs": probs}, META),
        Exportable(
            "pixel",
            pixel_grid_figure(
                rng.random((6, 7)),
                title="pixel",
                query=(3, 4),
                colorbar_title="w",
                outline=rng.random((6, 7)) > 0.5,
            ),
            {"w": rng.random((6, 7))},
            META,
        ),
        Exportable(
            "layout",
            layout_pixel_figure(pixel_view(lay, g, 30), part_names(lay), (4, 2), "layout"),
            {},
            META,
        ),
        Exportable(
            "grid", head_grid_figure(rng.random((2, 2, 6, 7)), "grid", query=(1, 1)), {}, META
        ),
        Exportable("coverage", coverage_figure(rows, "coverage"), {}, META),
        Exportable("search", search_figure(search, "search"), {}, META),
    ]


@pytest.mark.parametrize("item", items(), ids=lambda i: i.name)
def test_every_format_is_valid_and_has_metadata(item):
    png = export_bytes(item, "png", dpi=192)
    with Image.open(io.BytesIO(png)) as im:
        w, h = item.figure.layout.width or 700, item.figure.layout.height or 500
        assert im.size == (round(w * 2), round(h * 2))  # CSS px at 96 dpi, asked 192
        assert json.loads(im.info["Description"])["head"] == 0
    svg = export_bytes(item, "svg")
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg") and b'"image_sha1": "abc"' in svg
    pdf = export_bytes(item, "pdf")
    assert pdf.startswith(b"%PDF") and len(re.findall(rb"/Type\s*/Page[^s]", pdf)) == 1
    html = export_bytes(item, "html").decode()
    assert "figure-metadata" in html and "Plotly.newPlot" in html
    assert item.figure.layout.title.text in html
    # the figure's own numbers are in the page: decode the data passed to Plotly.newPlot
    start = html.index("[", html.index("Plotly.newPlot("))
    traces, _ = json.JSONDecoder().raw_decode(html[start:])
    if "source" in traces[0]:  # an image (the head grid): its PNG, byte for byte
        assert traces[0]["source"] == item.figure.data[0].source
        return
    key = "z" if "z" in traces[0] else "x"
    expected = np.asarray(getattr(item.figure.data[0], key), dtype=float)
    np.testing.assert_array_equal(decode(traces[0][key]).reshape(expected.shape), expected)


def item_named(name: str) -> Exportable:
    (found,) = [it for it in items() if it.name == name]
    return found


def test_npz_round_trips_the_arrays_exactly():
    item = item_named("map")
    with np.load(io.BytesIO(export_bytes(item, "npz"))) as z:
        assert np.array_equal(z["probs"], item.data["probs"])
        assert json.loads(str(z["metadata"]))["query_pixel"] == [3, 4]


def test_unknown_format_is_refused():
    with pytest.raises(ValueError, match="unknown format"):
        export_bytes(item_named("map"), "gif")


def test_batch_cli_writes_what_its_index_lists_with_stable_names(tmp_path, capsys):
    torch.manual_seed(0)
    save_model(
        SparseTransformer(ModelConfig.from_name("fmnist-tiny", layout="strided(l=28)")),
        tmp_path / "tiny",
    )
    image = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (28, 28), dtype=np.uint8)).save(image)
    listings = []
    for run in ("a", "b"):
        out = tmp_path / run
        rc = main(
            [
                "--model",
                str(tmp_path / "tiny"),
                "--image",
                str(image),
                "--layers",
                "1",
                "--heads",
                "all",
                "--views",
                "grid,pixel,layout",
                "--formats",
                "png,npz",
                "--out",
                str(out),
            ]
        )
        assert rc == 0
        files = sorted(p.name for p in out.iterdir() if p.name != "index.md")
        linked = sorted(re.findall(r"\]\(([^)]+)\)", (out / "index.md").read_text()))
        assert files == linked
        listings.append(files)
    assert listings[0] == listings[1]
    assert "tiny_x_L1H0_r14c14_pixel.png" in listings[0]
    assert main(["--model", str(tmp_path / "tiny"), "--image", str(image), "--formats", "gif"]) == 2
    assert main(["--model", str(tmp_path / "nope"), "--image", str(image)]) == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize("layout", [L.strided(7), L.fixed(7, 2)], ids=repr)
def test_exact_mask_figure_is_the_layout_and_exports(layout):
    """The exact N x N mask is drawn as one PNG image: its pixels are the layout's part codes
    in the part colours, and the exports draw that same picture."""
    from viz.layout_view import mask_view
    from viz.maps import mask_figure
    from viz.style import _part_rgb

    n = 49
    codes, tile = mask_view(layout, n)
    assert tile == 1
    names = part_names(layout)
    fig = mask_figure(codes, names, tile, "mask")
    payload = fig.data[0].source.split(",", 1)[1]
    rgb = np.asarray(Image.open(io.BytesIO(base64.b64decode(payload))).convert("RGB"))
    palette = _part_rgb(names)  # [parts + 1, 3]
    decoded = (rgb[:, :, None, :] == palette[None, None]).all(-1).argmax(-1)  # [n, n]
    np.testing.assert_array_equal(decoded, codes)
    assert (codes > 0).sum() == layout.nnz(n)
    item = Exportable("mask", fig, {"mask": codes}, {"layout": repr(layout)})
    with Image.open(io.BytesIO(export_bytes(item, "png", dpi=96))) as im:
        drawn = np.asarray(im.convert("RGB"))
    for color in palette[1:]:  # every part colour reaches the exported picture
        assert (drawn == color).all(-1).any()
    assert export_bytes(item, "pdf").startswith(b"%PDF")


def attention_arrays(**changes):
    """What analysis.attention.capture_image returns, built by hand: 2 layers of 3 heads on a
    6 x 7 image, query pixel (3, 4)."""
    from analysis.attention import ImageAttention

    rng = np.random.default_rng(1)
    g = Geometry(6, 7, 1)
    fields = dict(
        image=rng.integers(0, 256, (6, 7, 1), dtype=np.uint8),
        geometry=g,
        query=(3, 4),
        layers=[0, 1],
        heads=[0, 2],
        layouts=[L.strided(7), L.fixed(7, 2)],
        rows=rng.random((2, 3, 42)).astype(np.float32),
        maps=rng.random((2, 2, 42, 42)).astype(np.float32),
    )
    return ImageAttention(**(fields | changes))


def test_model_items_are_drawn_from_the_arrays():
    att = attention_arrays()
    made = model_items(att, model_name="runs/tiny", image_name="shirt.png")
    by = {it.name: it for it in made}
    assert list(by) == [
        "tiny_shirt_r3c4_grid",
        "tiny_shirt_L0H0_head",
        "tiny_shirt_L0H0_r3c4_pixel",
        "tiny_shirt_L0H2_head",
        "tiny_shirt_L0H2_r3c4_pixel",
        "tiny_shirt_L0_r3c4_layout",
        "tiny_shirt_L1H0_head",
        "tiny_shirt_L1H0_r3c4_pixel",
        "tiny_shirt_L1H2_head",
        "tiny_shirt_L1H2_r3c4_pixel",
        "tiny_shirt_L1_r3c4_layout",
    ]
    np.testing.assert_array_equal(  # the chosen heads only
        by["tiny_shirt_r3c4_grid"].data["maps"], att.rows.reshape(2, 3, 6, 7)[:, [0, 2]]
    )
    np.testing.assert_array_equal(by["tiny_shirt_L1H2_head"].data["probs"], att.maps[1, 1])
    pixel = by["tiny_shirt_L1H2_r3c4_pixel"]
    np.testing.assert_array_equal(pixel.data["weights"], att.rows[1, 2].reshape(6, 7))
    assert pixel.meta == {
        "model": "runs/tiny",
        "image": "shirt.png",
        "image_sha1": content_key(att.image),
        "query_pixel": [3, 4],
        "layer": 1,
        "layout": "fixed(l=7, c=2)",
        "head": 2,
        "view": "pixel",
    }
    layout = by["tiny_shirt_L0_r3c4_layout"]
    np.testing.assert_array_equal(
        layout.data["part_codes"], pixel_view(L.strided(7), att.geometry, 25)
    )
    assert layout.figure.layout.title.text == "strided(l=7): keys of pixel (3, 4)"


def test_model_items_views_and_what_they_need():
    att = attention_arrays(maps=None)
    names = [it.name for it in model_items(att, model_name="m", image_name="x", views=["grid"])]
    assert names == ["m_x_r3c4_grid"]
    assert len(model_items(att, model_name="m", image_name="x", views=["pixel", "layout"])) == 6
    with pytest.raises(ValueError, match="N x N maps"):
        model_items(att, model_name="m", image_name="x", views=VIEWS)
    with pytest.raises(ValueError, match="unknown views"):
        model_items(att, model_name="m", image_name="x", views=["grid", "movie"])


def test_export_files_and_their_index():
    made = [item_named("map"), item_named("layout")]
    seen = []
    files = export_files(made, ["npz", "svg"], on_file=seen.append)
    assert list(files) == seen == ["map.npz", "map.svg", "layout.npz", "layout.svg"]
    index = index_markdown(made, ["npz", "svg"])
    assert index.startswith("# Exported figures\n")
    assert re.findall(r"\]\(([^)]+)\)", index) == seen
    assert "**map** — map: [npz](map.npz) · [svg](map.svg)" in index


def test_content_key_tells_shapes_and_contents_apart():
    a = np.zeros((4, 6, 1), dtype=np.uint8)
    assert content_key(a) == content_key(a.copy()) and len(content_key(a)) == 12
    assert content_key(a) != content_key(a.reshape(6, 4, 1))
    b = a.copy()
    b[0, 0, 0] = 1
    assert content_key(a) != content_key(b)


def test_grid_of_chosen_layers_and_heads_is_labelled_with_them():
    """Export page, Layers [3], Heads [1], view grid: the grid shows layer 3 as layer 3 and head
    1 alone, in every format, and says so in its metadata."""
    att = attention_arrays(
        layers=[3],
        heads=[1],
        layouts=[L.strided(7)],
        rows=np.random.default_rng(2).random((1, 3, 42)).astype(np.float32),
        maps=None,
    )
    (grid,) = model_items(att, model_name="m", image_name="x", views=["grid"])
    np.testing.assert_array_equal(grid.data["maps"], att.rows.reshape(1, 3, 6, 7)[:, [1]])
    assert grid.meta["layers"] == [3] and grid.meta["heads"] == [1]
    lay = grid.figure.layout
    assert list(lay.yaxis.ticktext) == ["layer 3"] and list(lay.xaxis.ticktext) == ["head 1"]
    svg = export_bytes(grid, "svg").decode()
    assert "layer 3" in svg and "head 1" in svg
    assert "layer 0" not in svg and "head 0" not in svg and "head 2" not in svg
    with Image.open(io.BytesIO(export_bytes(grid, "png"))) as im:
        meta = json.loads(im.info["Description"])
    assert meta["layers"] == [3] and meta["heads"] == [1] and meta["view"] == "grid"
    html = export_bytes(grid, "html").decode()
    assert '"ticktext":["layer3"]' in html.replace(" ", "")
    assert '"ticktext":["head1"]' in html.replace(" ", "")
    assert grid.figure.layout.title.text == "pixel (3, 4): head 1"
    assert '"layers": [3]' in html


def map_item(n: int) -> Exportable:
    probs = np.tril(np.random.default_rng(3).random((n, n))).astype(np.float32)
    probs /= probs.sum(1, keepdims=True)
    return Exportable("map", attention_map_figure(probs, 1, "map"), {"probs": probs}, META)


def test_an_n_by_n_map_exports_as_one_raster_image():
    """A 300 x 300 map (90,000 cells) is one embedded image in SVG and PDF, not a rectangle per
    cell: it was a 17 MB SVG taking seconds (784 x 784: 114 MB, a minute)."""
    import time

    item = map_item(300)
    assert item.heavy is False and item.cells == 90_000
    t0 = time.perf_counter()
    svg = export_bytes(item, "svg")
    pdf = export_bytes(item, "pdf")
    seconds = time.perf_counter() - t0
    assert len(svg) < 1_000_000 and len(pdf) < 500_000, (len(svg), len(pdf))
    assert svg.count(b"<image") <= 2 and svg.count(b"<path") < 200  # the map, its colour bar
    assert seconds < 10
    # the picture embedded is the map's own, pixel for pixel: every query row and key kept
    # (resampled to the figure's resolution, a 784 x 784 map lost ~110 of each)
    payload = re.search(rb'href="data:image/png;base64,([^"]+)"', svg).group(1)
    embedded = np.asarray(Image.open(io.BytesIO(base64.b64decode(payload))).convert("RGBA"))
    np.testing.assert_array_equal(embedded, image_rgba(item.figure.data[0]))


def test_the_raster_map_is_the_vector_map(monkeypatch):
    """A heatmap drawn as one image or as cells: the PNG is the same picture (orientation,
    colours). (A pooled mask's shares: the attention map is an image already.)"""
    import viz.export as ve
    from viz.maps import mask_figure

    shares = np.tril(np.random.default_rng(3).random((60, 60)))
    item = Exportable("mask", mask_figure(shares, ["local"], 4, "mask"), {"shares": shares})
    pictures = []
    for cells in (10**9, 1):  # vector cells, then one raster image
        monkeypatch.setattr(ve, "RASTER_CELLS", cells)
        with Image.open(io.BytesIO(export_bytes(item, "png", dpi=96))) as im:
            pictures.append(np.asarray(im.convert("RGB"), dtype=float))
    vector, raster = pictures
    assert vector.shape == raster.shape
    assert np.abs(vector - raster).mean() < 4, np.abs(vector - raster).mean()


def test_heavy_formats_of_big_maps_are_opt_in_and_estimated():
    from viz.export import HEAVY_FORMATS, estimate, export_zip, planned

    big, small = map_item(320), item_named("pixel")
    assert big.heavy and not small.heavy and "html" in HEAVY_FORMATS
    pairs = planned([big, small], ["png", "html"], heavy=False)
    assert [(i.name, f) for i, f in pairs] == [("map", "png"), ("pixel", "png"), ("pixel", "html")]
    assert len(planned([big, small], ["png", "html"], heavy=True)) == 4
    light = estimate([big, small], ["png", "html"], heavy=False)
    heavy = estimate([big, small], ["png", "html"], heavy=True)
    assert light.files == 3 and heavy.files == 4 and heavy.bytes > light.bytes
    assert "3 files" in light.describe() and "MB" in light.describe()
    data, count = export_zip([big, small], ["png", "html"], heavy=False)
    import zipfile

    infos = zipfile.ZipFile(io.BytesIO(data)).infolist()
    assert [i.filename for i in infos] == ["map.png", "pixel.png", "pixel.html", "index.md"]
    assert count == 4
    # the estimate is of the files' size, within 3x (the zip deflates them: its HTML, plotly.js
    # inlined, shrinks ~3x, which put the zip itself right at the edge of that bound)
    made = sum(i.file_size for i in infos)
    assert light.bytes / 3 < made < light.bytes * 3, (light.bytes, made)
    assert len(data) < made


def test_an_export_stops_at_the_next_file_when_cancelled():
    from viz.export import ExportCancelled, export_zip

    made = []
    with pytest.raises(ExportCancelled):
        export_zip(items(), ["npz"], on_file=made.append, cancelled=lambda: len(made) >= 2)
    assert len(made) == 2


def test_a_picture_exports_its_pixels_with_metadata_and_dpi():
    """The Complete page's samples: the PNG is the grid's exact pixels, with the metadata and
    its dpi; the NPZ carries the same metadata, software included."""
    pixels = np.random.default_rng(4).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    item = Exportable("s", None, {"samples": pixels}, {"model": "m", "seed": 3}, picture=pixels)
    with Image.open(io.BytesIO(export_bytes(item, "png", dpi=200))) as im:
        np.testing.assert_array_equal(np.asarray(im), pixels)
        meta = json.loads(im.info["Description"])
        assert round(im.info["dpi"][0]) == 200
    assert meta["seed"] == 3 and meta["software"].startswith("sparse-transformer-explorer")
    with np.load(io.BytesIO(export_bytes(item, "npz"))) as z:
        assert json.loads(str(z["metadata"]))["software"] == meta["software"]
    with pytest.raises(ValueError, match="picture"):
        export_bytes(item, "svg")


def test_figure_png_carries_its_dpi():
    with Image.open(io.BytesIO(export_bytes(item_named("pixel"), "png", dpi=192))) as im:
        assert round(im.info["dpi"][0]) == 192


def test_html_metadata_cannot_end_its_script_tag():
    item = Exportable("x", item_named("pixel").figure, {}, {"image": "</script><b>x</b>.png"})
    html = export_bytes(item, "html").decode()
    start = html.index('id="figure-metadata">') + len('id="figure-metadata">')
    text = html[start : html.index("</script>", start)]
    assert json.loads(text)["image"] == "</script><b>x</b>.png"


def test_a_colour_bar_of_named_categories_exports_its_names():
    from analysis.metrics import HEAD_TYPES
    from viz.head_tables import type_timeline_figure

    codes = np.arange(2 * 2 * 2).reshape(2, 2, 2) % len(HEAD_TYPES)  # [steps, layers, heads]
    item = Exportable("types", type_timeline_figure(codes, [1, 10], title="t"), {}, META)
    svg = export_bytes(item, "svg").decode()
    # the page's colour bar names the head types; so does the static figure's
    assert all(name in svg for name in HEAD_TYPES)
