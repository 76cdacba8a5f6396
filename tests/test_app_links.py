"""Links made by the app before each page declared its own settings (declare_settings) open the
same view: each page's keys and values as that app wrote them (share_settings), the widgets
restored from them, and the URL written back with the same values. A /predictions link of the
time before Ablation had its own page still carries the ablation's settings to that page."""

from __future__ import annotations

import pytest

from tests.test_app_urls import opened, url

# page file: (the link's query as that app wrote it, the values its widgets then hold)
LINKS = {
    "app_pages/layouts.py": (
        {
            "lay_mode": "side by side",
            "lay_families": ["axial", "strided"],
            "lay_l": "14",
            "lay_row": "3",
            "lay_col": "9",
        },
        {
            "lay_mode": "side by side",
            "lay_families": ["axial", "strided"],
            "lay_l": 14,
            "lay_row": 3,
            "lay_col": 9,
        },
    ),
    "app_pages/attention.py": (
        {
            "att_model": "strided",
            "att_compare": "dense",
            "att_row": "5",
            "att_col": "6",
            "att_layer": "1",
            "att_head": "1",
        },
        {
            "att_model": "strided",
            "att_compare": "dense",
            "att_row": 5,
            "att_col": 6,
            "att_layer": 1,
            "att_head": 1,
        },
    ),
    "app_pages/who_looks_here.py": (
        {"who_model": "strided", "who_krow": "4", "who_kcol": "7", "who_layer": "1"},
        {"who_model": "strided", "who_krow": 4, "who_kcol": 7, "who_layer": 1},
    ),
    "app_pages/predictions.py": (
        {"prd_models": ["strided"], "prd_row": "3", "prd_col": "4", "prd_mean_count": "2"},
        {"prd_models": ["strided"], "prd_row": 3, "prd_col": 4, "prd_mean_count": 2},
    ),
    "app_pages/ablation.py": (
        {"abl_model": "strided", "abl_heads": ["L1H0"], "abl_mode": "zero", "abl_count": "4"},
        {"abl_model": "strided", "abl_heads": ["L1H0"], "abl_mode": "zero", "abl_count": 4},
    ),
    "app_pages/complete.py": (
        {
            "cmp_models": ["dense"],
            "cmp_keep": "rectangle",
            "cmp_x0": "2",
            "cmp_samples": "3",
            "cmp_temperature": "0.5",
            "cmp_seed": "7",
        },
        {
            "cmp_models": ["dense"],
            "cmp_keep": "rectangle",
            "cmp_x0": 2,
            "cmp_samples": 3,
            "cmp_temperature": 0.5,
            "cmp_seed": 7,
        },
    ),
    "app_pages/training.py": (
        {"trn_folder": "assets/runs/mini-dense-14", "trn_metric": "entropy"},
        {"trn_folder": "assets/runs/mini-dense-14", "trn_metric": "entropy"},
    ),
    "app_pages/playground.py": (
        {
            "pg_layouts": ["dense", "fixed"],
            "pg_preset": "fmnist-tiny",
            "pg_budget": "steps",
            "pg_steps": "50",
            "pg_seed": "3",
        },
        {
            "pg_layouts": ["dense", "fixed"],
            "pg_preset": "fmnist-tiny",
            "pg_budget": "steps",
            "pg_steps": 50,
            "pg_seed": 3,
        },
    ),
    "app_pages/frontier.py": (
        {"fr_model": "strided", "fr_images": "4"},
        {"fr_model": "strided", "fr_images": 4},
    ),
    "app_pages/learned_vs_prescribed.py": (
        {"lvp_model": "strided", "lvp_over": "one image", "lvp_count": "4"},
        {"lvp_model": "strided", "lvp_over": "one image", "lvp_count": 4},
    ),
}


# these pages' first run ends at st.stop() (Complete before a sample, Frontier before a measure),
# after which AppTest keeps the URL it had (the same with the app before declare_settings)
ENDS_AT_STOP = ("app_pages/complete.py", "app_pages/frontier.py")


@pytest.mark.parametrize("page", list(LINKS))
def test_a_link_of_the_app_opens_the_same_view(tmp_path, monkeypatch, page):
    query, restored = LINKS[page]
    at = opened(tmp_path, monkeypatch, page, query)
    assert {key: at.session_state[key] for key in restored} == restored
    if page in ENDS_AT_STOP:
        return
    for key, texts in query.items():  # written back as it came
        assert url(at, key) == ([texts] if isinstance(texts, str) else texts), key


def test_an_old_predictions_link_carries_its_ablation_to_the_ablation_page(tmp_path, monkeypatch):
    """Before Ablation had its own address, /predictions carried prd_ and abl_ keys, and the
    heads were removed from one of the compared models (else the first), on their image."""
    at = opened(
        tmp_path,
        monkeypatch,
        "app_pages/predictions.py",
        {
            "prd_models": ["strided", "dense"],
            "prd_source": "test image",
            "prd_row": "3",
            "abl_heads": ["L0H1", "L1H0"],
            "abl_mode": "zero",
            "abl_count": "4",
            "abl_samples": "1",
        },
    )
    assert at.session_state["prd_row"] == 3
    assert "abl_heads" not in at.query_params  # a link names one page's view
    at.switch_page("app_pages/ablation.py").run()
    assert not at.exception, at.exception
    assert at.selectbox(key="abl_model").value == "strided"  # the first compared model
    assert at.multiselect(key="abl_heads").value == ["L0H1", "L1H0"]
    assert at.radio(key="abl_mode").value == "zero"
    assert at.slider(key="abl_count").value == 4
    assert at.slider(key="abl_samples").value == 1
    assert at.radio(key="abl_source").value == "test image"
    old = opened(
        tmp_path / "b",
        monkeypatch,
        "app_pages/predictions.py",
        {"prd_models": ["strided", "dense"], "abl_model": "dense", "abl_heads": ["L0H0"]},
    )
    old.switch_page("app_pages/ablation.py").run()
    assert old.selectbox(key="abl_model").value == "dense"  # one of the compared models
    assert old.multiselect(key="abl_heads").value == ["L0H0"]
