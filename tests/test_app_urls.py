"""Settings in the URL for Who looks here, Predictions and Ablation (the Training page's are in
tests/test_app_training.py): a link opens the page with its values, values a setting cannot take
are ignored, and the settings survive a switch to another page and back."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app_pages.settings import Setting
from tests.test_app import tiny_models

APP = str(Path(__file__).resolve().parents[1] / "app.py")


def opened(tmp_path, monkeypatch, page: str, params: dict[str, str | list[str]]) -> AppTest:
    """A new session of ``page`` opened with a link holding ``params``."""
    monkeypatch.setenv("SPARSE_EXPLORER_MODELS", str(tiny_models(tmp_path)))
    at = AppTest.from_file(APP, default_timeout=300)
    for key, value in params.items():
        at.query_params[key] = value
    at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def url(at: AppTest, key: str) -> list[str]:
    """The URL's values of ``key`` (AppTest gives one as a str, several as a list)."""
    value = at.query_params.get(key, [])
    return [value] if isinstance(value, str) else list(value)


def test_who_looks_here_settings_come_from_the_url_and_stay(tmp_path, monkeypatch):
    at = opened(
        tmp_path,
        monkeypatch,
        "app_pages/who_looks_here.py",
        {
            "who_model": "strided",
            "who_krow": "5",
            "who_kcol": "-1",  # not a pixel: ignored
            "who_qrow": "200",  # a pixel of no 28 x 28 image: brought into it
            "who_qcol": "x",  # not a number: ignored
            "who_layer": "1",
        },
    )

    def same() -> None:
        assert at.selectbox(key="who_model").value == "strided"
        assert at.number_input(key="who_krow").value == 5
        assert at.number_input(key="who_kcol").value == 14  # the default
        assert at.number_input(key="who_qrow").value == 27
        assert at.number_input(key="who_qcol").value == 14
        assert at.selectbox(key="who_layer").value == 1

    same()
    assert at.query_params["who_krow"] == "5" and at.query_params["who_model"] == "strided"
    assert at.query_params["who_layer"] == "1" and at.query_params["who_qrow"] == "27"
    at.switch_page("app_pages/layouts.py").run()
    assert "who_krow" not in at.query_params  # a link names one page's view
    at.switch_page("app_pages/who_looks_here.py").run()
    assert not at.exception, at.exception
    same()
    assert at.query_params["who_krow"] == "5"


def test_a_model_the_server_does_not_have_is_ignored(tmp_path, monkeypatch):
    at = opened(
        tmp_path,
        monkeypatch,
        "app_pages/who_looks_here.py",
        {"who_model": "nope", "who_layer": "1"},
    )
    assert at.selectbox(key="who_model").value == "dense"
    assert at.selectbox(key="who_layer").value == 1


def test_predictions_settings_come_from_the_url_and_stay(tmp_path, monkeypatch):
    at = opened(
        tmp_path,
        monkeypatch,
        "app_pages/predictions.py",
        {
            "prd_models": ["strided", "dense"],
            "prd_row": "3",
            "prd_col": "4",
            "prd_mean_count": "999",  # over the slider: ignored
        },
    )

    def same() -> None:
        assert at.multiselect(key="prd_models").value == ["strided", "dense"]
        assert at.number_input(key="prd_row").value == 3
        assert at.number_input(key="prd_col").value == 4
        assert at.slider(key="prd_mean_count").value == 8  # the default

    same()
    assert url(at, "prd_models") == ["strided", "dense"]
    assert at.query_params["prd_row"] == "3"
    at.switch_page("app_pages/who_looks_here.py").run()
    assert "prd_row" not in at.query_params
    at.switch_page("app_pages/predictions.py").run()
    assert not at.exception, at.exception
    same()


def test_ablation_settings_come_from_the_url_and_stay(tmp_path, monkeypatch):
    at = opened(
        tmp_path,
        monkeypatch,
        "app_pages/ablation.py",
        {
            "abl_model": "strided",
            "abl_heads": ["L1H0", "L0H1"],
            "abl_mode": "half",  # no such mode: ignored
            "abl_count": "4",
            "abl_samples": "1",
        },
    )

    def same() -> None:
        assert at.selectbox(key="abl_model").value == "strided"
        assert at.multiselect(key="abl_heads").value == ["L1H0", "L0H1"]
        assert at.radio(key="abl_mode").value == "mean"  # the default
        assert at.slider(key="abl_count").value == 4
        assert at.slider(key="abl_samples").value == 1

    same()
    assert url(at, "abl_heads") == ["L1H0", "L0H1"]
    assert at.query_params["abl_count"] == "4" and at.query_params["abl_model"] == "strided"
    at.switch_page("app_pages/who_looks_here.py").run()
    assert "abl_heads" not in at.query_params
    at.switch_page("app_pages/ablation.py").run()
    assert not at.exception, at.exception
    same()


def test_heads_and_models_a_link_names_but_the_page_lacks_are_left_out(tmp_path, monkeypatch):
    """L5H0 is a head of no 2-layer model; five models are more than the page compares."""
    at = opened(
        tmp_path,
        monkeypatch,
        "app_pages/ablation.py",
        {"abl_model": "strided", "abl_heads": ["L5H0", "L1H1"]},
    )
    assert at.selectbox(key="abl_model").value == "strided"
    assert at.multiselect(key="abl_heads").value == ["L1H1"]
    many = opened(
        tmp_path / "b", monkeypatch, "app_pages/predictions.py", {"prd_models": ["dense"] * 5}
    )
    assert many.multiselect(key="prd_models").value == ["dense", "strided"]  # the default


PAGES = (  # the pages whose settings the parse tests read (as they declare them)
    "app_pages/ablation.py",
    "app_pages/predictions.py",
    "app_pages/complete.py",
    "app_pages/training.py",
    "app_pages/who_looks_here.py",
)


@pytest.fixture(scope="module")
def declared(tmp_path_factory) -> dict[str, Setting]:
    """Every setting those pages declare (declare_settings, at their top), once they have run."""
    from app_pages import settings

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPARSE_EXPLORER_MODELS", str(tiny_models(tmp_path_factory.mktemp("m"))))
        at = AppTest.from_file(APP, default_timeout=300)
        for page in PAGES:
            at.switch_page(page).run()
            assert not at.exception, at.exception
    return dict(settings.DECLARED)


@pytest.mark.parametrize(
    ("key", "texts", "value"),
    [
        ("abl_heads", ["L0H1", "L12H3"], ["L0H1", "L12H3"]),
        ("abl_heads", ["L0H1", "head 2"], None),  # not a head's label
        ("abl_heads", ["L0H1", "L0H1"], None),  # twice
        ("prd_models", ["a", "b", "c", "d"], None),  # more than the page compares
        ("cmp_models", ["a", "b", "c", "d"], None),
        ("abl_mode", ["zero"], "zero"),
        ("trn_step", ["-1"], None),
        ("trn_step", ["1200"], 1200),
        ("who_invert", ["maybe"], None),
        ("who_invert", ["1"], True),
        ("cmp_samples", ["17"], None),  # limits.SAMPLES: 1..16
        ("cmp_temperature", ["nan"], None),
    ],
)
def test_setting_parses_only_values_it_can_take(declared, key, texts, value):
    assert declared[key].parse(texts) == value


def test_a_list_setting_holds_its_fewest_items():
    assert Setting("x_list", list, None, 1, 2).parse([]) is None


def test_free_text_paths_stay_out_of_the_url(declared):
    assert "trn_folder" in declared and "trn_path" not in declared  # not for links


@pytest.mark.parametrize(("value", "taken"), [("strided", True), ("none", True), ("nope", False)])
def test_the_attention_comparison_is_a_model_or_none(tmp_path, monkeypatch, value, taken):
    at = opened(
        tmp_path, monkeypatch, "app_pages/attention.py", {"att_compare": value, "att_model": "no"}
    )
    assert at.selectbox(key="att_model").value == "dense"  # no such model: the default
    assert at.selectbox(key="att_compare").value == (value if taken else "none")
