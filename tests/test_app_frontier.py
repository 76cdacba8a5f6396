"""The Frontier page, the Attention page under another attention, and Learned vs prescribed's
opening sentence, through Streamlit's AppTest.

The Frontier page draws the shipped result (assets/frontier/dense.json, or the file
$SPARSE_EXPLORER_FRONTIER names: a small hand-made result here, so the tests do not wait for
the shipped one), explains a bad or absent file, measures another model in the worker pool,
and a click on a point opens the Attention page with the model run under that point's
attention: a banner names it, and the page's captured rows are those of model.capture under
that intervention (zero outside its layout)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from tests.test_app import chart, charts, errors, title, trace, values, warnings
from tests.test_app import tiny_models as make_tiny_models
from tests.test_frontier_figure import small_result
from viz.frontier_figure import at_density, coverage_sentence, frontier_summary, read_frontier

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
SHIPPED = ROOT / "assets" / "frontier" / "dense.json"


def markdown(at) -> str:
    return "\n".join(m.value for m in at.markdown)


def infos(at) -> str:
    return "\n".join(i.value for i in at.info)


def plain(text: str) -> str:
    """Markdown as read: as_text's backslash escapes dropped."""
    return text.replace("\\", "")


def frontier_at(monkeypatch, frontier: Path | None, models: Path | None = None) -> AppTest:
    if frontier is not None:
        monkeypatch.setenv("SPARSE_EXPLORER_FRONTIER", str(frontier))
    if models is not None:
        monkeypatch.setenv("SPARSE_EXPLORER_MODELS", str(models))
    at = AppTest.from_file(APP, default_timeout=300)
    at.switch_page("app_pages/frontier.py").run()
    assert not at.exception, at.exception
    return at


@pytest.fixture
def small_file(tmp_path) -> Path:
    """The hand-made result, recorded as the shipped dense model's."""
    path = tmp_path / "dense.json"
    path.write_text(json.dumps(small_result()))
    return path


def test_frontier_page_draws_the_shipped_result(monkeypatch):
    if not SHIPPED.is_file():
        pytest.skip(f"{SHIPPED} is not written yet (python -m tools.frontier --out ...)")
    at = frontier_at(monkeypatch, None)
    result = read_frontier(SHIPPED)
    spec = chart(at, "fr_chart")
    names = [t.get("name") for t in spec["data"]]
    assert f"dense: {result['dense_bpd']:.4f} bits/dim" in names
    assert "top-k (oracle)" in names and "trained under its layout" in names
    text = plain(markdown(at))
    for line in frontier_summary(result):
        assert line in text


def test_frontier_page_from_a_file_with_hover_and_summary(monkeypatch, small_file):
    at = frontier_at(monkeypatch, small_file)
    assert not errors(at) and not warnings(at)
    spec = chart(at, "fr_chart")
    assert spec["layout"]["xaxis"]["type"] == "log"
    assert "dense: 2.7400 bits/dim" == spec["data"][0]["name"]
    axial = trace(spec, "axial")
    assert "coverage" in axial["hovertemplate"] and axial["customdata"][0][3] == "axial(width=28)"
    text = plain(markdown(at))
    for line in frontier_summary(small_result()):
        assert line in text  # the numbers come from the file
    assert at.selectbox(key="fr_model").value == "dense"
    assert at.number_input(key="fr_images").value == 8


@pytest.mark.parametrize(
    "content, words",
    [(None, "does not exist"), ("{oops", "is not JSON"), ("[]", "not a frontier")],
)
def test_frontier_page_explains_a_bad_or_absent_file(monkeypatch, tmp_path, content, words):
    path = tmp_path / "dense.json"
    if content is not None:
        path.write_text(content)
    at = frontier_at(monkeypatch, path)
    assert "The shipped frontier cannot be drawn" in warnings(at)
    assert words in plain(warnings(at))
    assert "No frontier of dense" in plain(infos(at))  # and what to do: Measure
    assert not at.get("plotly_chart")


def test_a_click_on_a_point_opens_the_attention_page_under_it(monkeypatch, small_file):
    at = frontier_at(monkeypatch, small_file)
    spec = chart(at, "fr_chart")
    row = trace(spec, "axial")["customdata"][1]  # axial(width=56)
    at.session_state["fr_chart"] = {
        "selection": {"points": [{"curve_number": 5, "point_index": 1, "customdata": row}]}
    }
    at.run()
    assert not at.exception, at.exception
    assert at.query_params.get("att_under") == "axial(width=56)"
    assert "This model, run under axial(width=56)" in plain(infos(at))
    assert at.selectbox(key="att_model").value == "dense"
    # the fitted point: per-layer layouts
    at.switch_page("app_pages/frontier.py").run()
    row = trace(chart(at, "fr_chart"), "fitted per head")["customdata"][0]
    at.session_state["fr_chart"] = {
        "selection": {"points": [{"curve_number": 9, "point_index": 0, "customdata": row}]}
    }
    at.run()
    assert not at.exception, at.exception
    # the shipped dense model has 8 layers: 2 per-layer specs do not fit it, said plainly
    assert "2 per-layer specs for a model of 8 layers" in plain(errors(at))
    assert len(charts(at)) == 3  # its own attention, drawn


def attention_under(monkeypatch, tmp_path, under: str) -> AppTest:
    monkeypatch.setenv("SPARSE_EXPLORER_MODELS", str(make_tiny_models(tmp_path)))
    at = AppTest.from_file(APP, default_timeout=300)
    at.query_params["att_under"] = under
    at.switch_page("app_pages/attention.py").run()
    assert not at.exception, at.exception
    return at


def captured(tmp_path, at, under: str, layer: int, head: int) -> np.ndarray:
    """model.capture's row of the page's query pixel under ``under``: [N]."""
    from analysis.attention import run_under
    from app_pages.pickers import SAMPLES_DIR
    from models.checkpoint import load_model
    from models.tokens import image_to_tokens, pixel_to_token
    from models.uploads import prepare_image

    model = load_model(tmp_path / at.selectbox(key="att_model").value)
    image = prepare_image(
        (SAMPLES_DIR / f"{at.selectbox(key='att_sample').value}.png").read_bytes(),
        model.config.geometry,
    )
    query = pixel_to_token(
        at.number_input(key="att_row").value,
        at.number_input(key="att_col").value,
        0,
        model.config.geometry,
    )
    caps = model.capture(
        image_to_tokens(image)[None],
        form="rows",
        queries=[query],
        intervention=run_under(model, under),
    )
    return caps[layer].probs[0, head, 0].float().numpy()


def test_attention_page_under_a_layout(monkeypatch, tmp_path):
    at = attention_under(monkeypatch, tmp_path, "local(l=30)")
    assert "This model, run under local(l=30)" in plain(infos(at))
    pixels = values(trace(chart(at, "att_pixels"), "pixels")["marker"]["color"])
    expected = captured(tmp_path, at, "local(l=30)", 0, 0)
    assert np.allclose(pixels, expected, atol=1e-6)
    # zero outside the layout: the query (14, 14) keeps its 30 previous tokens
    q = 14 * 28 + 14
    assert (pixels[: q - 29] == 0).all() and (pixels[q + 1 :] == 0).all()
    assert (pixels[q - 29 : q + 1] > 0).all()
    # the layout is first among the outlines, and named in the caption
    assert at.selectbox(key="att_outline").options[1] == "local(l=30)"
    assert "This layer runs under local(l=30)" in plain(
        markdown(at) + "\n".join(c.value for c in at.caption)
    )
    # back to its own attention: the banner goes, the rows are the dense model's
    at.button(key="att_under_back").click().run()
    assert not at.exception
    assert "run under" not in plain(infos(at))
    assert "att_under" not in at.query_params
    pixels = values(trace(chart(at, "att_pixels"), "pixels")["marker"]["color"])
    assert (pixels[: q - 29] > 0).any()  # dense again: weight beyond the window


def test_attention_page_under_per_layer_specs_and_a_selection(monkeypatch, tmp_path):
    under = "local(l=30); topk(k=8)"
    at = attention_under(monkeypatch, tmp_path, under)
    assert "run under per layer: local(l=30); topk(k=8)" in plain(infos(at))
    at.button_group(key="att_layer").set_value(1).run()
    at.button_group(key="att_head").set_value(1).run()
    assert not at.exception
    pixels = values(trace(chart(at, "att_pixels"), "pixels")["marker"]["color"])
    assert np.allclose(pixels, captured(tmp_path, at, under, 1, 1), atol=1e-6)
    assert (pixels > 0).sum() == 8  # top-k keeps 8 keys
    # typed in the page: another attention, the same way
    at.text_input(key="att_under_input").set_value("strided(l=28)")
    at.button(key="att_under_apply").click().run()
    assert not at.exception
    assert at.query_params.get("att_under") == "strided(l=28)"
    pixels = values(trace(chart(at, "att_pixels"), "pixels")["marker"]["color"])
    assert np.allclose(pixels, captured(tmp_path, at, "strided(l=28)", 1, 1), atol=1e-6)


@pytest.mark.parametrize(
    "under, words",
    [
        ("nonsense(", "is not an attention spec"),
        ("local(l=3); local(l=3); local(l=3)", "3 per-layer specs for a model of 2 layers"),
        ("multihead(local(l=1), local(l=2), local(l=3))", "number of heads must be a multiple"),
    ],
)
def test_attention_page_explains_a_bad_spec_in_the_url(monkeypatch, tmp_path, under, words):
    at = attention_under(monkeypatch, tmp_path, under)
    assert "cannot run under" in plain(errors(at)) and words in plain(errors(at))
    assert "run under" not in plain(infos(at))  # no banner: its own attention is shown
    assert len(charts(at)) == 3
    at.button(key="att_under_back").click().run()
    assert not at.exception and not at.error


def test_learned_page_sentence_equals_the_frontier_file(monkeypatch, small_file):
    monkeypatch.setenv("SPARSE_EXPLORER_FRONTIER", str(small_file))
    at = AppTest.from_file(APP, default_timeout=300)
    at.switch_page("app_pages/learned_vs_prescribed.py").run()
    assert not at.exception, at.exception
    sentence = coverage_sentence(at_density(small_result(), 0.1), 0.1)
    assert "71% by top-k (oracle), 30% by strided and 29% by axial" in sentence
    assert plain(at.markdown[0].value).startswith(f"**{sentence}** (from the shipped frontier")
    assert title(chart(at, "lvp_equal_density")).startswith("dense: attention kept")


def test_learned_page_sentence_measured_for_another_model(monkeypatch, tmp_path):
    monkeypatch.setenv("SPARSE_EXPLORER_MODELS", str(make_tiny_models(tmp_path)))
    at = AppTest.from_file(APP, default_timeout=300)
    at.switch_page("app_pages/learned_vs_prescribed.py").run()
    assert not at.exception, at.exception
    first = plain(at.markdown[0].value)
    assert first.startswith("**At about 10% of the keys, this model's attention is kept ")
    assert (
        "by top-k (oracle)" in first and "by axial" in first and "measured on this image" in first
    )
    bars = trace(chart(at, "lvp_equal_density"), "coverage")
    kept = values(bars["y"])
    assert ((0 < kept) & (kept <= 1)).all() and (np.diff(kept) <= 0).all()  # most kept first


def test_frontier_page_measures_another_model_in_the_pool(monkeypatch, tmp_path, small_file):
    at = frontier_at(monkeypatch, small_file, make_tiny_models(tmp_path))
    # the file is the shipped dense model's, not this one: nothing to draw until measured
    assert "No frontier of dense on 8 test images yet" in plain(infos(at))
    at.number_input(key="fr_images").set_value(2)
    # the families offered are those of the shipped file (every family, for the real one)
    assert at.multiselect(key="fr_families").options == ["strided", "axial", "topk"]
    at.multiselect(key="fr_families").set_value(["strided", "topk"]).run()
    at.button(key="fr_run").click().run()
    assert not at.exception, at.exception
    assert not errors(at), errors(at)
    spec = chart(at, "fr_chart")
    names = [t.get("name") for t in spec["data"]]
    assert "strided" in names and "top-k (oracle)" in names and "axial" not in names
    assert "trained under its layout" in names  # the tiny strided model, on the same images
    assert "measured here on the first 2 test images" in plain(
        "\n".join(c.value for c in at.caption)
    )
    at.run()  # kept: drawn again without measuring
    assert chart(at, "fr_chart")["data"][0]["name"] == spec["data"][0]["name"]


def test_frontier_is_exported_with_its_points(monkeypatch, small_file):
    import io
    import zipfile

    at = frontier_at(monkeypatch, small_file)
    at.multiselect(key="fr_export_formats").set_value(["svg", "npz"]).run()
    at.button(key="fr_export_prepare").click().run()
    assert not at.exception, at.exception
    data, count = at.session_state["fr_export_job"].result
    z = zipfile.ZipFile(io.BytesIO(data))
    (npz,) = [n for n in z.namelist() if n.endswith(".npz")]
    assert npz == "dense_frontier.npz" and "dense_frontier.svg" in z.namelist()
    arrays = np.load(io.BytesIO(z.read(npz)))
    result = small_result()
    assert len(arrays["spec"]) == len(result["points"]) + 2  # + the trained and fitted points
    assert list(arrays["spec"][:2]) == ["strided(l=28)", "strided(l=14)"]
    assert np.allclose(arrays["bpd"][: len(result["points"])], [p["bpd"] for p in result["points"]])


def test_frontier_settings_come_from_the_url(monkeypatch, small_file):
    monkeypatch.setenv("SPARSE_EXPLORER_FRONTIER", str(small_file))
    at = AppTest.from_file(APP, default_timeout=300)
    at.query_params["fr_images"] = "4"
    at.query_params["fr_families"] = ["axial", "topk"]
    at.query_params["fr_model"] = "nope"  # not a model of this server: ignored
    at.switch_page("app_pages/frontier.py").run()
    assert not at.exception, at.exception
    assert at.selectbox(key="fr_model").value == "dense"
    assert at.number_input(key="fr_images").value == 4
    assert at.multiselect(key="fr_families").value == ["axial", "topk"]
    assert at.query_params["fr_images"] == "4"
    # the shipped result is still drawn for the shipped model (Measure: on 4 images)
    assert chart(at, "fr_chart")
