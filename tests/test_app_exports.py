"""The app's exports and names through AppTest: every exported file carries the metadata (the
Complete page's PNG and NPZ too), the batch of every layer x head is estimated first and its
heavy formats are opt-in, and a user's file name is shown as text, never as Markdown."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
from PIL import Image
from streamlit.testing.v1 import AppTest
from test_app import APP, attention_app, tiny_models

NASTY = "**BOLD** [link](http://127.0.0.1:9/x) ![i](http://127.0.0.1:9/img.png).png"


def test_a_refused_upload_name_is_shown_as_text(tmp_path, monkeypatch):
    at = attention_app(tmp_path, monkeypatch)
    at.radio(key="att_source").set_value("upload").run()
    at.file_uploader(key="att_upload").set_value((NASTY, b"not an image", "image/png")).run()
    assert not at.exception
    (error,) = [e.value for e in at.error]
    # every character that would make bold, a link or an image is escaped
    # (and an invisible word joiner, U+2060, keeps "http://" from becoming a bare link)
    expected = "\\*\\*BOLD\\*\\* \\[link\\](http\u2060\\://127.0.0.1\\:9/x) \\!\\[i\\]"
    assert error.startswith(expected), error
    assert "**BOLD**" not in error and "](" not in error.replace(r"\](", "")


def test_a_light_upload_warning_escapes_its_name(tmp_path, monkeypatch):
    at = attention_app(tmp_path, monkeypatch)
    at.radio(key="att_source").set_value("upload").run()
    buf = io.BytesIO()
    Image.new("L", (28, 28), 220).save(buf, format="PNG")
    at.file_uploader(key="att_upload").set_value((NASTY, buf.getvalue(), "image/png")).run()
    (warning,) = [w.value for w in at.warning]
    assert warning.startswith(r"\*\*BOLD\*\*") and "light background" in warning


def test_complete_downloads_carry_metadata_and_dpi(tmp_path, monkeypatch):
    """The Complete page's PNG and NPZ are made by viz.export.export_bytes (the one export
    path): metadata in both, the PNG's dpi, the software field."""
    import viz.export

    made = {}
    real = viz.export.export_bytes

    def recording(item, fmt, **kw):
        made[(item.name, fmt)] = data = real(item, fmt, **kw)
        return data

    monkeypatch.setattr(viz.export, "export_bytes", recording)
    monkeypatch.setenv("SPARSE_EXPLORER_MODELS", str(tiny_models(tmp_path)))
    at = AppTest.from_file(APP, default_timeout=300)
    at.switch_page("app_pages/complete.py").run()
    at.multiselect(key="cmp_models").set_value(["dense"]).run()
    at.slider(key="cmp_samples").set_value(2).run()
    at.slider(key="cmp_rows").set_value(27).run()
    at.button(key="cmp_run").click().run()
    assert not at.exception, at.exception
    assert at.session_state["cmp_job"].status == "done"
    labels = {b.proto.label: b.proto.url for b in at.get("download_button")}
    assert "PNG" in labels and "NPZ (data)" in labels
    (png,) = [v for (name, fmt), v in made.items() if fmt == "png" and "samples" in name]
    (npz,) = [v for (name, fmt), v in made.items() if fmt == "npz" and "samples" in name]
    with Image.open(io.BytesIO(png)) as im:
        meta = json.loads(im.info["Description"])
        assert round(im.info["dpi"][0]) == 96
    assert meta["model"] == "dense" and meta["seed"] == 0 and "software" in meta
    with np.load(io.BytesIO(npz)) as z:
        npz_meta = json.loads(str(z["metadata"]))
        assert z["samples"].shape == (2, 28, 28, 1)
    assert npz_meta["software"] == meta["software"] and npz_meta["samples"] == 2


def test_the_whole_batch_is_estimated_and_its_heavy_formats_are_opt_in(tmp_path, monkeypatch):
    at = attention_app(tmp_path, monkeypatch)
    at.button(key="att_batch").click().run()
    assert not at.exception, at.exception
    formats = at.multiselect(key="att_batch_export_formats")
    assert list(formats.value) == ["png", "svg", "pdf", "npz"]  # no HTML unless chosen
    captions = [c.value for c in at.caption if c.value.startswith("This export:")]
    assert any("files, about" in c and "memory" in c for c in captions), captions
    formats.set_value(["html", "npz"]).run()
    heavy = at.checkbox(key="att_batch_export_heavy")  # the N x N maps' HTML: asked for
    assert heavy.value is False
    at.button(key="att_batch_export_prepare").click().run()
    assert not at.exception, at.exception
    task = at.session_state["att_batch_export_job"].task
    data, count = task.result
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    assert not [n for n in names if n.endswith("_head.html")]  # 4 N x N maps: no HTML
    assert len([n for n in names if n.endswith("_head.npz")]) == 4
    assert any(n.endswith("_grid.html") for n in names) and "index.md" in names


def test_every_layer_x_head_over_the_memory_budget_is_refused(tmp_path, monkeypatch):
    """The batch's N x N maps are counted before they are captured; over the budget, the
    button explains instead of capturing (the budget in the message)."""
    import app_pages.jobs as jobs

    monkeypatch.setattr(jobs, "MEMORY_BUDGET", 2**20)  # 1 MB: the tiny model's 4 maps are more
    at = attention_app(tmp_path, monkeypatch)
    at.button(key="att_batch").click().run()
    assert not at.exception, at.exception
    (error,) = [e.value for e in at.error if e.value.startswith("Every layer x head")]
    assert "would need about" in error and "MB per task" in error
    assert "att_batch_items" not in at.session_state


def test_capture_memory_counts_the_maps():
    from analysis.attention import capture_memory
    from models import ModelConfig

    config = ModelConfig.from_name("fmnist-tiny", layout="dense()")  # 2 layers, 2 heads
    n = 784
    assert capture_memory(config, 2, 2, maps=False) == 2 * 2 * n * 4
    assert capture_memory(config, 2, 2) == 2 * 2 * n * 4 + 4 * n * n * 2 * (2 + 4)


def test_a_typed_path_is_shown_as_text(tmp_path, monkeypatch):
    """The Training page's folder path, typed by a person, is escaped in its warning."""
    monkeypatch.setenv("SPARSE_EXPLORER_MODELS", str(tiny_models(tmp_path)))
    at = AppTest.from_file(APP, default_timeout=120)
    at.switch_page("app_pages/training.py").run()
    at.text_input(key="trn_path").set_value("runs/**x** [a](http://127.0.0.1:9/)").run()
    assert not at.exception, at.exception
    shown = [w.value for w in at.warning] + [e.value for e in at.error]
    assert any(r"runs/\*\*x\*\* \[a\](http" in t for t in shown), shown
    assert not any("**x**" in t for t in shown)
