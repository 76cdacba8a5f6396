"""What the pages say about what they did: an upload of another size or shape is cropped, padded
or enlarged and the page says so; greedy sampling (temperature 0) gives identical samples and
the caption says why; unreadable sample images are left out with a message, never a
traceback."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from app_pages import pickers
from app_pages.pickers import fit_note
from models.tokens import Geometry
from tests.test_app import errors, tiny_models, warnings

APP = str(Path(__file__).resolve().parents[1] / "app.py")
G28 = Geometry(28, 28, 1)


def infos(at: AppTest) -> str:
    return "\n".join(i.value for i in at.info).replace("\\", "")  # as_text escapes ":"


def png(width: int, height: int, value: int = 200) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (width, height), value).save(buf, format="PNG")
    return buf.getvalue()


def captions(at: AppTest) -> list[str]:
    return [c for e in at.main if type(e).__name__ == "Image" for c in e.captions]


def test_fit_note_says_what_fitting_did():
    assert fit_note((28, 28), G28, "crop") is None  # the model's size: nothing done
    surprising, text = fit_note((1, 1), G28, "crop")
    assert surprising and "1 x 1" in text and "enlarged 28 times" in text
    surprising, text = fit_note((28, 2000), G28, "crop")
    assert surprising and "centre 28 x 28" in text and "cropped" in text and "letterbox" in text
    assert "reduced" not in text  # 28 wide: the kept box is not scaled
    surprising, text = fit_note((28, 2000), G28, "letterbox")
    assert surprising and "fills 1 x 28" in text and "padded" in text
    assert "reduced 71.4 times" in text
    surprising, text = fit_note((280, 280), G28, "crop")
    assert not surprising and text.endswith("reduced 10 times.")
    surprising, text = fit_note((14, 14), Geometry(28, 28, 1), "letterbox")
    assert surprising and "enlarged 2 times" in text and "padded" not in text


@pytest.fixture
def complete(tmp_path, monkeypatch) -> AppTest:
    monkeypatch.setenv("SPARSE_EXPLORER_MODELS", str(tiny_models(tmp_path)))
    at = AppTest.from_file(APP, default_timeout=300)
    at.run()
    at.switch_page("app_pages/complete.py").run()
    assert not at.exception, at.exception
    return at


def test_an_upload_of_another_size_is_fitted_and_the_page_says_how(complete):
    at = complete
    at.radio(key="cmp_source").set_value("upload").run()
    at.file_uploader(key="cmp_upload").set_value(("dot.png", png(1, 1), "image/png")).run()
    assert not at.exception, at.exception
    assert "dot.png: 1 x 1 pixels" in infos(at) and "enlarged 28 times" in infos(at)
    at.file_uploader(key="cmp_upload").set_value(("tall.png", png(28, 2000), "image/png")).run()
    assert not at.exception, at.exception
    assert "tall.png: 28 x 2000 pixels" in infos(at) and "cropped" in infos(at)
    at.radio(key="cmp_fit").set_value("letterbox").run()
    assert "padded with the background" in infos(at)
    at.file_uploader(key="cmp_upload").set_value(("fits.png", png(28, 28), "image/png")).run()
    assert "fits.png" not in infos(at)  # nothing was done to it: nothing to say


def test_temperature_zero_samples_are_identical_and_the_caption_says_why(complete):
    at = complete
    at.multiselect(key="cmp_models").set_value(["dense"]).run()
    at.slider(key="cmp_samples").set_value(3).run()
    at.slider(key="cmp_rows").set_value(26).run()  # the last two rows: fast
    at.slider(key="cmp_temperature").set_value(0.0).run()
    at.button(key="cmp_run").click().run()
    assert not at.exception, at.exception
    said = [c for c in captions(at) if "samples" in c]
    assert said and "3 identical samples: temperature 0 is greedy" in said[-1], captions(at)
    assert "seed 0" not in said[-1]
    samples = at.session_state["cmp_job"].results["dense"]
    assert all((s == samples[0]).all() for s in samples)  # greedy: identical indeed
    at.slider(key="cmp_temperature").set_value(1.0).run()
    at.button(key="cmp_run").click().run()
    said = [c for c in captions(at) if "samples" in c]
    assert said[-1] == "3 samples, seed 0", captions(at)


def test_unreadable_sample_images_are_left_out_with_a_message(complete, tmp_path, monkeypatch):
    folder = tmp_path / "samples"
    folder.mkdir()
    (folder / "good.png").write_bytes(png(28, 28))
    (folder / "broken.png").write_bytes(b"not an image")
    os.mkfifo(folder / "pipe.png")  # a FIFO: refused unread (a plain read would block)
    monkeypatch.setattr(pickers, "SAMPLES_DIR", folder)
    at = complete
    at.run()
    assert not at.exception, at.exception
    assert "broken.png is left out" in warnings(at)
    assert "pipe.png is left out" in warnings(at) and "not a regular file" in warnings(at)
    assert at.selectbox(key="cmp_sample").options == ["good"]
    monkeypatch.setattr(pickers, "SAMPLES_DIR", tmp_path / "nothing")
    at.run()
    assert not at.exception, at.exception
    assert "No test image can be read" in errors(at)
