"""The app runs headless through Streamlit's AppTest: every page, every control, no exception."""

import base64
import json
import re
from pathlib import Path

import numpy as np
from streamlit.testing.v1 import AppTest

from tests.figure_util import image_values

APP = str(Path(__file__).resolve().parents[1] / "app.py")


def charts(at) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def chart(at, key: str) -> dict:
    """The figure of the plotly chart drawn with ``key``."""
    return json.loads(at.get_by_key(key).proto.spec)


def trace(spec: dict, name: str) -> dict:
    """The trace called ``name`` of a figure."""
    (found,) = [t for t in spec["data"] if t.get("name") == name]
    return found


def title(spec: dict) -> str:
    return spec["layout"]["title"]["text"]


def table(at, column: str):
    """The one table with ``column``: a dataframe (without selections it keeps no key) or a
    Markdown table (app_pages.text.markdown_table), its numbers read as numbers."""
    found = [d.value for d in at.dataframe if column in d.value.columns]
    found += [
        t
        for t in (markdown_table_of(m.value) for m in at.markdown)
        if t is not None and column in t.columns
    ]
    (one,) = found
    return one


def markdown_table_of(text: str):
    """A Markdown pipe table as a DataFrame (cells unescaped, numeric columns as numbers), or
    None when ``text`` is not one."""
    import pandas as pd

    lines = [line.strip() for line in text.strip().splitlines()]
    if len(lines) < 2 or not all(line.startswith("|") for line in lines):
        return None
    cells = [
        [re.sub(r"\\(.)", r"\1", c.strip()) for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        for line in lines
    ]
    frame = pd.DataFrame(cells[2:], columns=cells[0])
    for c in frame.columns:
        try:
            frame[c] = pd.to_numeric(frame[c])
        except (ValueError, TypeError):
            pass  # a column of text
    return frame


def errors(at) -> str:
    return "\n".join(e.value for e in at.error)


def warnings(at) -> str:
    return "\n".join(w.value for w in at.warning)


def values(a) -> np.ndarray:
    """A plotly array from a figure spec: a list, or plotly 6+'s typed array {dtype, bdata}."""
    if isinstance(a, dict) and "bdata" in a:
        out = np.frombuffer(base64.b64decode(a["bdata"]), dtype=a["dtype"])
        shape = a.get("shape")
        if isinstance(shape, str):  # plotly writes "rows, cols"
            shape = [int(x) for x in shape.split(",")]
        return out.reshape(shape) if shape else out
    return np.asarray(a)


def test_layouts_page_strided_fixed_and_side_by_side():
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception
    assert list(table(at, "allowed pairs (nnz)")["layout"]) == ["strided(l=28)"]
    assert len(charts(at)) == 2  # pixel view + mask
    pixels = trace(chart(at, "lay_pixels_strided"), "pixels")
    assert len(values(pixels["x"])) == 784  # one marker per pixel
    colors = values(pixels["marker"]["color"])
    # query (14, 14) of strided(l=28): the 28 keys of the window + 14 keys above in its column
    assert (colors > 0).sum() == 28 + 14
    at.radio(key="lay_mode").set_value("side by side").run()
    assert not at.exception
    assert list(table(at, "allowed pairs (nnz)")["layout"]) == [
        "strided(l=28)",
        "fixed(l=28, c=2)",
    ]
    assert len(charts(at)) == 4


def test_layouts_page_explains_impossible_parameters():
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.radio(key="lay_mode").set_value("fixed").run()
    at.number_input(key="lay_c").set_value(40).run()  # c > l is impossible for fixed
    assert not at.exception
    assert "c * num_verts <= l" in errors(at)


def test_layouts_page_rgb_and_pooled_mask():
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.selectbox(key="lay_geometry").set_value("32x32 RGB (CIFAR-10)").run()
    assert not at.exception
    assert list(table(at, "allowed pairs (nnz)")["layout"]) == ["strided(l=96)"]
    mask = trace(chart(at, "lay_mask_strided"), "mask")
    assert values(mask["z"]).shape[0] < 3072  # pooled: N = 3072 is drawn as tiles


def tiny_models(tmp_path):
    import torch

    from models import ModelConfig, SparseTransformer, save_model

    for name, layout in [("dense", "dense()"), ("strided", "strided(l=28)")]:
        torch.manual_seed(0)
        save_model(
            SparseTransformer(ModelConfig.from_name("fmnist-tiny", layout=layout)), tmp_path / name
        )
    return tmp_path


def attention_app(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSE_EXPLORER_MODELS", str(tiny_models(tmp_path)))
    at = AppTest.from_file(APP, default_timeout=120)
    at.switch_page("app_pages/attention.py").run()
    assert not at.exception, at.exception
    return at


def test_attention_page_grid_head_and_pixel(tmp_path, monkeypatch):
    at = attention_app(tmp_path, monkeypatch)
    assert len(charts(at)) == 3  # overview grid, pixel view, N x N map
    mosaic = image_values(trace(chart(at, "att_grid"), "heads"))
    assert mosaic.shape == (2 * 29 - 1, 2 * 29 - 1)  # fmnist-tiny: 2 layers x 2 heads of 28 x 28
    pixels = values(trace(chart(at, "att_pixels"), "pixels")["marker"]["color"])
    assert pixels.shape == (784,) and pixels.sum() <= 1.0001  # one softmax row over pixels
    assert pixels.reshape(28, 28)[15:].sum() == 0  # causal: nothing below the query row
    at.button_group(key="att_layer").set_value(1).run()
    at.button_group(key="att_head").set_value(1).run()
    at.selectbox(key="att_outline").set_value("strided(l=28)").run()
    assert not at.exception
    trace(chart(at, "att_pixels"), "layout")  # the outline trace is there
    at.number_input(key="att_row").set_value(3).run()
    assert not at.exception
    at.selectbox(key="att_model").set_value("strided").run()
    assert not at.exception


def test_attention_page_grid_marks_query_and_shares_scale(tmp_path, monkeypatch):
    at = attention_app(tmp_path, monkeypatch)
    spec = chart(at, "att_grid")
    marks = trace(spec, "query")  # one line: a closed square, then a gap, per tile
    x = values(marks["x"]).reshape(-1, 6)
    y = values(marks["y"]).reshape(-1, 6)
    assert len(x) == 4  # 2 layers x 2 heads: the query pixel (14, 14) in every tile
    assert {(float(a[:5].mean()), float(b[:5].mean())) for a, b in zip(x, y, strict=True)} == {
        (j * 29 + 14 - 0.1, i * 29 + 14 - 0.1) for i in range(2) for j in range(2)
    }  # the corners' mean: (x0 + 2 (x0 + 1) + 2 x0) / 5 = x0 + 0.4 = pixel - 0.1
    tiles = image_values(trace(spec, "heads"))
    peaks = [np.nanmax(tiles[i : i + 28, j : j + 28]) for i in (0, 29) for j in (0, 29)]
    assert np.allclose(peaks, 1, atol=0.005)  # each tile scaled to its own maximum
    at.checkbox(key="att_shared_scale").check().run()
    assert not at.exception
    shared = image_values(trace(chart(at, "att_grid"), "heads"))
    assert np.isclose(np.nanmax(shared), 1, atol=0.005)
    # one scale (the square root of the weights, capped): not each tile over its own peak
    assert np.nanmax(np.abs(shared - tiles)) > 0.02  # (read back within 0.005)


def test_attention_page_grid_click_picks_layer_and_head(tmp_path, monkeypatch):
    at = attention_app(tmp_path, monkeypatch)
    # a click on layer 1, head 1's tile of the all-heads grid: the browser reports the tile's
    # click target, point 1 * 2 + 1 of trace 1 (tests/test_browser_layout.py clicks for real)
    at.session_state["att_grid"] = {
        "selection": {"points": [{"curve_number": 1, "point_index": 3, "x": 42.5, "y": 42.5}]}
    }
    at.run()
    assert not at.exception
    assert at.button_group(key="att_layer").value == 1
    assert at.button_group(key="att_head").value == 1
    assert title(chart(at, "att_pixels")).startswith("layer 1, head 1")


def test_attention_page_map_click_sets_query(tmp_path, monkeypatch):
    at = attention_app(tmp_path, monkeypatch)
    tile = 4  # fmnist-tiny: 784 tokens drawn as 196 cells a side
    # a click on the map's row 50: queries 200..203, the first of them token 200 = (7, 4);
    # the browser reports the row's click target, point 50 of trace 1
    y = (tile - 1) / 2 + 50 * tile
    at.session_state["att_map"] = {
        "selection": {"points": [{"curve_number": 1, "point_index": 50, "x": y, "y": y}]}
    }
    at.run()
    assert not at.exception
    assert at.number_input(key="att_row").value == 7
    assert at.number_input(key="att_col").value == 4


def test_attention_page_weights_over_the_image(tmp_path, monkeypatch):
    at = attention_app(tmp_path, monkeypatch)
    assert [t.get("name") for t in chart(at, "att_pixels")["data"]][:2] == ["pixels", "image"]
    at.radio(key="att_view").set_value("over the image").run()
    at.selectbox(key="att_outline").set_value("strided(l=28)").run()
    assert not at.exception
    spec = chart(at, "att_pixels")
    names = [t.get("name") for t in spec["data"]]
    assert names.index("image") < names.index("weights")  # the weights drawn over the image
    base = values(trace(spec, "image")["z"])
    assert base.shape == (28, 28) and 0 <= np.nanmin(base) and np.nanmax(base) <= 1
    weights = trace(spec, "weights")
    assert weights["type"] == "heatmap" and 0 < weights["opacity"] < 1
    trace(spec, "layout")  # the prescribed layout's outline


def test_attention_page_upload_good_and_bad(tmp_path, monkeypatch):
    import io

    from PIL import Image

    at = attention_app(tmp_path, monkeypatch)
    at.radio(key="att_source").set_value("upload").run()
    assert not at.exception
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 200, 30)).save(buf, format="PNG")
    at.file_uploader(key="att_upload").set_value(("shirt.png", buf.getvalue(), "image/png")).run()
    assert not at.exception and not at.error
    assert len(charts(at)) == 3
    at.file_uploader(key="att_upload").set_value(("bad.png", b"not an image", "image/png")).run()
    assert not at.exception
    assert "bad.png cannot be used" in errors(at)


def test_learned_vs_prescribed_page(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSE_EXPLORER_MODELS", str(tiny_models(tmp_path)))
    at = AppTest.from_file(APP, default_timeout=120)
    at.switch_page("app_pages/learned_vs_prescribed.py").run()
    assert not at.exception, at.exception
    assert [title(s) for s in charts(at)] == [
        "coverage by strided(l=28)",
        "coverage by fixed(l=28, c=2)",
        "dense: attention kept at about 10% of the keys",  # every family (test_app_frontier.py)
    ]
    strided = chart(at, "lvp_cov_strided")
    assert title(strided) == "coverage by strided(l=28)"
    z = values(trace(strided, "coverage")["z"])
    assert z.shape == (2, 2) and (0 < z).all() and (z < 1).all()  # a dense model leaks out
    at.selectbox(key="lvp_model").set_value("strided").run()
    z = values(trace(chart(at, "lvp_cov_strided"), "coverage")["z"])
    assert np.allclose(z, 1.0)  # a strided model is fully covered by strided
    at.checkbox(key="lvp_search").check().run()
    assert not at.exception
    assert title(chart(at, "lvp_search_fig")) == "coverage vs density"


def test_complete_page_samples_side_by_side_and_looks_back(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSE_EXPLORER_MODELS", str(tiny_models(tmp_path)))
    at = AppTest.from_file(APP, default_timeout=300)
    at.switch_page("app_pages/complete.py").run()
    assert not at.exception, at.exception
    at.multiselect(key="cmp_models").set_value(["dense", "strided"]).run()
    at.slider(key="cmp_samples").set_value(2).run()
    at.slider(key="cmp_rows").set_value(26).run()  # sample only the last two rows: fast
    at.button(key="cmp_run").click().run()
    assert not at.exception, at.exception
    assert [m.value for m in at.markdown if m.value.startswith("**")] == [
        "**dense**",
        "**strided**",
    ]
    look = chart(at, "cmp_look_attention")
    assert "where pixel (27, 14) looked" in title(look)
    weights = values(trace(look, "pixels")["marker"]["color"])
    assert weights.shape == (784,) and abs(weights.sum() - 1) < 1e-3
    at.radio(key="cmp_keep").set_value("rectangle").run()
    at.number_input(key="cmp_x1").set_value(2).run()
    at.number_input(key="cmp_x0").set_value(5).run()  # x0 >= x1: impossible
    assert not at.exception
    assert "rectangle" in errors(at)


def test_models_page_renders_card_and_benchmarks():
    at = AppTest.from_file(APP, default_timeout=60)
    at.switch_page("app_pages/models_page.py").run()
    assert not at.exception, at.exception
    text = "\n".join(m.value for m in at.markdown)
    assert "# Shipped models" in text and "bits/dim" in text
    assert len(at.get("image")) >= 2  # the card's sample grids
    # the measured curves, from the benchmark's committed rows: dense against the layouts
    speed = chart(at, "speed_chart")
    names = [t["name"] for t in speed["data"]]
    assert names[:2] == ["N² (slope 2)", "N·√N (slope 1.5)"]
    assert any(n.startswith("strided, composed (slope") for n in names)
    assert speed["layout"]["xaxis"]["type"] == "log"
    at.radio(key="speed_metric").set_value("fwd_bwd_ms").run()
    assert "forward + backward" in title(chart(at, "speed_chart"))


def test_models_page_explains_an_unreadable_benchmark(tmp_path, monkeypatch):
    bad = tmp_path / "cpu_attention.json"
    bad.write_text("{not json")
    monkeypatch.setenv("SPARSE_EXPLORER_CPU_BENCH", str(bad))
    at = AppTest.from_file(APP, default_timeout=60)
    at.switch_page("app_pages/models_page.py").run()
    assert not at.exception, at.exception
    assert "cannot be read" in errors(at) and "run the benchmark again" in errors(at)


def test_attention_page_exports_figures_and_batch(tmp_path, monkeypatch):
    at = attention_app(tmp_path, monkeypatch)
    at.multiselect(key="att_export_formats").set_value(["png", "npz"]).run()
    at.button(key="att_export_prepare").click().run()
    assert not at.exception, at.exception
    labels = [b.proto.label for b in at.get("download_button")]
    assert "All 6 files (zip)" in labels and any(lab.endswith("_pixel.png") for lab in labels)
    at.button(key="att_batch").click().run()
    assert not at.exception, at.exception
    at.multiselect(key="att_batch_export_formats").set_value(["npz"]).run()
    at.button(key="att_batch_export_prepare").click().run()
    labels = [b.proto.label for b in at.get("download_button")]
    # grid + 2 layers x 2 heads x (head, pixel) + 2 layouts = 11 files
    assert "All 11 files (zip)" in labels  # the zip itself: viz.export.export_zip (test_export)


def test_export_page_makes_a_zip_listing_every_file(tmp_path, monkeypatch):
    import io
    import re
    import zipfile

    monkeypatch.setenv("SPARSE_EXPLORER_MODELS", str(tiny_models(tmp_path)))
    at = AppTest.from_file(APP, default_timeout=120)
    at.switch_page("app_pages/export_page.py").run()
    assert not at.exception, at.exception
    at.multiselect(key="exp_layers").set_value([1]).run()
    at.multiselect(key="exp_formats").set_value(["svg", "npz"]).run()
    at.button(key="exp_run").click().run()
    assert not at.exception, at.exception
    data = at.session_state["exp_zip"][1]
    z = zipfile.ZipFile(io.BytesIO(data))
    names = set(z.namelist())
    linked = set(re.findall(r"\]\(([^)]+)\)", z.read("index.md").decode()))
    assert names - {"index.md"} == linked
    # grid + 2 heads of pixel + 1 layout, in 2 formats
    assert len(linked) == (1 + 2 + 1) * 2


def test_limits_named_bounds_and_server_config_agree():
    import math
    import re

    from app_pages import limits

    config = (Path(APP).parent / ".streamlit" / "config.toml").read_text()
    assert int(re.search(r"^maxUploadSize\s*=\s*(\d+)", config, re.M).group(1)) == (
        limits.MAX_UPLOAD_MB
    )
    ok = dict(n_samples=4, temperature=1.0, top_k=0, top_p=1.0, seed=0)
    assert limits.completion_problems(**ok) == []
    for field, bad in [
        ("n_samples", 0),
        ("n_samples", 17),
        ("n_samples", 2.5),
        ("temperature", -0.1),
        ("temperature", math.nan),
        ("top_k", 257),
        ("top_p", 0.0),
        ("seed", 2**31),
        ("seed", "7"),
        ("seed", True),
    ]:
        (message,) = limits.completion_problems(**{**ok, field: bad})
        assert repr(bad) in message
    assert limits.keep_rows(28).problem(29) and limits.keep_rows(28).problem(0) is None
    assert limits.rect_problem((0, 0, 28, 28), 28, 28) is None
    assert "x0 < x1" in limits.rect_problem((5, 0, 5, 10), 28, 28)
    assert limits.upload_problem(limits.MAX_UPLOAD_BYTES) is None
    assert "20 MiB" in limits.upload_problem(limits.MAX_UPLOAD_BYTES + 1)


def complete_app(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSE_EXPLORER_MODELS", str(tiny_models(tmp_path)))
    at = AppTest.from_file(APP, default_timeout=300)
    at.switch_page("app_pages/complete.py").run()
    assert not at.exception, at.exception
    at.multiselect(key="cmp_models").set_value(["dense"]).run()
    return at


def test_complete_refuses_values_out_of_bounds(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSE_EXPLORER_MODELS", str(tiny_models(tmp_path)))
    at = AppTest.from_file(APP, default_timeout=300)
    # as if set by code before the widgets exist: Streamlit itself would raise on the slider
    at.session_state["cmp_samples"] = 500
    at.session_state["cmp_seed"] = -3
    at.session_state["cmp_temperature"] = 9.0
    at.session_state["cmp_rows"] = 40
    at.session_state["cmp_top_k"] = 1.5
    at.switch_page("app_pages/complete.py").run()
    assert not at.exception, at.exception
    errors = "\n".join(e.value for e in at.error)
    for text in (
        "Samples must be between 1 and 16, got 500",
        "Seed must be between 0 and 2147483647, got -3",
        "Temperature must be between 0.0 and 2.0, got 9.0",
        "Rows to keep must be between 0 and 28, got 40",
        "Top-k (0: off) must be a whole number, got 1.5",
    ):
        assert text in errors
    assert at.session_state["cmp_job"] is None  # no work started
    assert at.slider(key="cmp_samples").value == 4  # back to the default, usable again
    at.run()
    assert not at.error and not at.exception


def test_complete_upload_limits(tmp_path, monkeypatch):
    import io

    from PIL import Image

    from app_pages import limits

    at = complete_app(tmp_path, monkeypatch)
    at.radio(key="cmp_source").set_value("upload").run()
    buf = io.BytesIO()
    side = int(limits.MAX_IMAGE_PIXELS**0.5) + 1
    Image.new("1", (side, side)).save(buf, format="PNG")  # a small file of 25+ megapixels
    at.file_uploader(key="cmp_upload").set_value(("huge.png", buf.getvalue(), "image/png")).run()
    assert not at.exception
    assert "huge.png cannot be used" in errors(at) and "megapixels" in errors(at)
    big = b"\0" * (limits.MAX_UPLOAD_BYTES + 1)
    at.file_uploader(key="cmp_upload").set_value(("big.png", big, "image/png")).run()
    assert not at.exception
    assert "the limit is 20 MiB" in errors(at)


def test_complete_cancel_then_new_upload(tmp_path, monkeypatch):
    """Stop sets the session's cancel flag (here from another thread, as the Stop callback does
    under fast reruns); the rows sampled so far are kept and labelled; a new upload afterwards
    shows nothing stale, and the next run uses the new image."""
    import io
    import threading
    import time

    from PIL import Image

    from app_pages.completion_job import CompletionJob

    at = complete_app(tmp_path, monkeypatch)
    at.slider(key="cmp_rows").set_value(0).run()
    at.slider(key="cmp_samples").set_value(16).run()  # ~4 s of sampling: time to cancel

    def press_stop() -> None:
        t0 = time.time()
        while time.time() - t0 < 120:
            job = at.session_state["cmp_job"] if "cmp_job" in at.session_state else None
            if job is not None and job.running and job.partial:
                job.stop()  # what Stop's on_click does
                return
            time.sleep(0.002)

    stopper = threading.Thread(target=press_stop)
    stopper.start()
    at.button(key="cmp_run").click().run()
    stopper.join()
    assert not at.exception, at.exception
    job = at.session_state["cmp_job"]
    assert job.status == "cancelled" and not job.results and job.cancel_requested
    assert "cancelled" in warnings(at)
    row, partial = job.partial["dense"]
    assert row < 27 and partial.shape == (16, 28, 28, 1)
    assert (partial[:, row + 1 :] == 128).all()  # not sampled: gray, not shown as done
    assert [m.value for m in at.markdown if m.value.startswith("**")] == [
        f"**dense** (partial: up to row {row})"
    ]
    assert "Where the model looked" not in [h.value for h in at.subheader]

    # the same request after a run that died mid-way (a rerun interrupted it): its job is
    # still running, with the rows it had sampled, when the next run starts
    stale = CompletionJob(job.request, partial=job.partial)
    assert stale.running and not stale.cancel_requested
    at.session_state["cmp_job"] = stale
    at.run()
    assert "interrupted" in warnings(at) and stale.cancel_requested
    assert stale.status == "interrupted"
    assert f"**dense** (partial: up to row {row})" in [m.value for m in at.markdown]

    # a new upload: no stale rows, and the next completion is of the new image
    at.radio(key="cmp_source").set_value("upload").run()
    buf = io.BytesIO()
    Image.new("L", (28, 28), 200).save(buf, format="PNG")
    at.file_uploader(key="cmp_upload").set_value(("new.png", buf.getvalue(), "image/png")).run()
    assert not at.exception
    # no stale warning (the only one: new.png's light background, a uniform 200)
    assert "light background" in warnings(at) and "cancelled" not in warnings(at)
    assert "interrupted" not in warnings(at)
    assert "Press Complete to sample." in [i.value for i in at.info]
    assert not [m.value for m in at.markdown if m.value.startswith("**")]
    at.slider(key="cmp_samples").set_value(2).run()
    at.slider(key="cmp_rows").set_value(27).run()
    at.button(key="cmp_run").click().run()
    assert not at.exception, at.exception
    job = at.session_state["cmp_job"]
    assert job.status == "done" and job.request.image_name == "new.png"
    samples = job.results["dense"]
    assert (samples[:, :27] == 200).all()  # the kept rows are the new image's
    assert "cancelled" not in warnings(at) and "interrupted" not in warnings(at)


def test_first_page_draws_layouts_without_importing_torch():
    """The Layouts page (the app's first) imports no torch: its import is about a second of the
    first page's time (docs/BENCHMARKS.md); the warm-up that follows the first page imports it
    in the background. Run in a fresh interpreter, as a server starts: once with the warm-up
    held back (the page itself imports no torch), once with it (torch imported after)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from streamlit.testing.v1 import AppTest\n"
        "import app_pages.models_cache as models_cache\n"
        "warm_up = models_cache.warm_up\n"
        "models_cache.warm_up = lambda: None\n"
        "at = AppTest.from_file('app.py', default_timeout=60).run()\n"
        "assert not at.exception, at.exception\n"
        "assert at.get('plotly_chart'), 'the Layouts page drew no chart'\n"
        "print('torch' in sys.modules)\n"
        "warm_up()\n"
        "models_cache._warmed[0].join(120)\n"
        "print('torch' in sys.modules and 'analysis.attention' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-2:] == ["False", "True"]


def test_attention_page_two_models_side_by_side(tmp_path, monkeypatch):
    import torch

    from analysis.attention import query_rows
    from analysis.metrics import shared_mass
    from models import ModelConfig, SparseTransformer, load_model, save_model
    from models.uploads import prepare_image

    root = tiny_models(tmp_path)
    torch.manual_seed(1)  # a model that reads other images, and one with a single layer
    save_model(SparseTransformer(ModelConfig.from_name("cifar-tiny")), root / "colour")
    save_model(SparseTransformer(ModelConfig.from_name("fmnist-tiny", n_layer=1)), root / "short")
    at = attention_app(tmp_path, monkeypatch)
    assert at.selectbox(key="att_compare").value == "none"
    assert "dense" not in at.selectbox(key="att_compare").options  # not the model itself
    at.selectbox(key="att_compare").set_value("strided").run()
    assert not at.exception
    assert len(charts(at)) == 5  # the grid; two pixel views; two N x N maps
    a, b = chart(at, "att_pixels"), chart(at, "att_pixels_b")
    assert title(a).startswith("dense: layer 0, head 0") and title(b).startswith("strided:")
    wa = values(trace(a, "pixels")["marker"]["color"])
    wb = values(trace(b, "pixels")["marker"]["color"])
    # the compared model's own row for the same image (the first sample) and pixel (14, 14)
    first = sorted((Path(APP).parent / "assets" / "samples").glob("*.png"))[0]
    strided = load_model(root / "strided")
    image = prepare_image(first.read_bytes(), strided.config.geometry)
    row = query_rows(strided, image, 14 * 28 + 14)[0, 0]  # layer 0, head 0: [N]
    np.testing.assert_allclose(wb, row, atol=1e-6)
    assert not np.allclose(wa, wb)
    heat_a, heat_b = trace(a, "image"), trace(b, "image")
    assert heat_a["zmax"] == heat_b["zmax"] == max(wa.max(), wb.max())  # one colour scale
    said = " ".join(m.value for m in at.markdown)
    assert f"share {shared_mass(wa, wb):.0%} of their weight" in said
    # a click on the compared model's pixel view sets the query for both
    at.session_state["att_pixels_b"] = {
        "selection": {"points": [{"curve_number": 0, "point_index": 5 * 28 + 9}]}
    }
    at.run()
    assert (at.number_input(key="att_row").value, at.number_input(key="att_col").value) == (5, 9)
    assert "pixel (5, 9)" in title(chart(at, "att_pixels_b"))
    # models that cannot show this view are explained, and the page stays
    at.button_group(key="att_layer").set_value(1).run()
    at.selectbox(key="att_compare").set_value("short").run()
    assert not at.exception and "no layer 1, head 0" in " ".join(i.value for i in at.info)
    at.selectbox(key="att_compare").set_value("colour").run()
    assert not at.exception and "32 x 32 x 3" in " ".join(i.value for i in at.info)
    assert len(charts(at)) == 3


def test_attention_page_reads_rows_and_maps_equal_to_their_own_captures(tmp_path, monkeypatch):
    """The page reads a query's rows and a layer's pooled maps from one capture of every row
    (when it fits): equal to a capture of that row and to the capture's own pooled form."""
    from analysis.attention import head_maps, query_rows
    from models import load_model
    from models.uploads import prepare_image

    at = attention_app(tmp_path, monkeypatch)
    at.button_group(key="att_layer").set_value(1).run()
    at.button_group(key="att_head").set_value(1).run()
    model = load_model(tmp_path / "dense")
    first = sorted((Path(APP).parent / "assets" / "samples").glob("*.png"))[0]
    image = prepare_image(first.read_bytes(), model.config.geometry)
    shown = values(trace(chart(at, "att_pixels"), "pixels")["marker"]["color"])
    np.testing.assert_allclose(shown, query_rows(model, image, 14 * 28 + 14)[1, 1], atol=1e-6)
    want = head_maps(model, image, 1, 4)[1]  # the 4 x 4 means
    # the map's colours: log10 of the means over [-6, 0], and no colour where no weight
    spec = chart(at, "att_map")
    z = -6 + 6 * image_values(trace(spec, "attention"))
    assert np.array_equal(np.isnan(z), want == 0)
    np.testing.assert_allclose(z[want > 1e-6], np.log10(want[want > 1e-6]), atol=0.03)
    # each map row's hover: its heaviest cell and log10 of its mean, to float32
    peaks = values(trace(spec, "queries")["customdata"])
    rows = np.arange(len(want))
    np.testing.assert_array_equal(peaks[:, 2], want.argmax(1) * 4)
    np.testing.assert_allclose(peaks[:, 4], np.log10(want[rows, want.argmax(1)]), atol=1e-6)
