"""Who looks here, Predictions, Ablation and Training at an 800 px and a 1920 px wide window,
in Chromium, on the shipped models (and a tiny run with a timeline): clickable pixel views
square and at least 200 px, a click selecting the pixel under the cursor, no exception.
Screenshots (PAGE_WIDTH.png) go to $SCREENSHOT_DIR."""

from __future__ import annotations

import os

import pytest
from browser_util import keyed, no_exception, open_page, streamlit_server
from test_browser_layout import (  # noqa: F401  (fixtures)
    browser,
    check_pixel_view,
    click_pixel,
    page,
    shoot,
    shots,
)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The app with the shipped models and a tiny run with a timeline, in one models folder."""
    import numpy as np
    from test_training import cfg, write_idx

    from analysis.timeline import TimelineRecorder
    from models.training import train

    root = tmp_path_factory.mktemp("inspect")
    data = root / "fmnist"
    data.mkdir()
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 255, size=(16, 28, 28), dtype=np.uint8)
    write_idx(data, "train", imgs)
    write_idx(data, "t10k", imgs[:4])
    models = root / "models"
    models.mkdir()
    shipped = os.path.join(os.path.dirname(__file__), "..", "assets", "models")
    for name in ("dense", "strided", "fixed"):
        (models / name).symlink_to(os.path.abspath(os.path.join(shipped, name)))
    recorder = TimelineRecorder(2, points=4)
    train(
        cfg(f"fashion-mnist:{data}", steps=4, eval_every=4), models / "tiny_run", timeline=recorder
    )
    with streamlit_server({"SPARSE_EXPLORER_MODELS": str(models)}) as running:
        yield running.url


def click_selects(pg, view: str, row: tuple[str, int], col: tuple[str, int]) -> None:
    """A click on pixel (row, col) of ``view`` raises nothing and sets the row and column
    inputs (keys ``row[0]``, ``col[0]``) to it."""
    click_pixel(pg, view, row[1], col[1])
    no_exception(pg)
    assert keyed(pg, row[0]).locator("input").input_value() == str(row[1])
    assert keyed(pg, col[0]).locator("input").input_value() == str(col[1])


def test_who_looks_here_page(page, shots):  # noqa: F811
    open_page(page, "Who looks here")
    no_exception(page)
    for key in ("who_key_view", "who_query_view"):
        check_pixel_view(page, key)
    click_selects(page, "who_key_view", ("who_krow", 6), ("who_kcol", 9))
    shoot(page, shots / f"heads_{page.width}.png")


def test_predictions_page(page, shots):  # noqa: F811
    open_page(page, "Predictions")
    no_exception(page)
    check_pixel_view(page, "prd_pixels")
    click_selects(page, "prd_pixels", ("prd_row", 12), ("prd_col", 11))
    shoot(page, shots / f"predictions_{page.width}.png")


def test_ablation_page(page, shots):  # noqa: F811
    open_page(page, "Ablation")
    no_exception(page)
    assert keyed(page, "abl_heads").count() == 1
    shoot(page, shots / f"ablation_{page.width}.png")


def test_training_page(page, shots):  # noqa: F811
    open_page(page, "Training")
    no_exception(page)
    assert keyed(page, "trn_grid").count() == 1
    shoot(page, shots / f"training_{page.width}.png")
