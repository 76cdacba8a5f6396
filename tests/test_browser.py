"""End to end in a real browser: Debian's Chromium driven by Playwright against `streamlit run`.

Screenshots go to $SCREENSHOT_DIR (default: a temporary folder); the best of them are kept in
docs/img/. The server and browser helpers are in tests/browser_util.py.
"""

from __future__ import annotations

import io

import pytest
from browser_util import (  # noqa: F401  (server and shots are fixtures)
    ROOT,
    chart,
    choose,
    keyed,
    launch_chromium,
    no_exception,
    open_page,
    pick,
    require_browser,
    server,
    settle,
    shoot,
    shots,
    upload,
)
from PIL import Image

playwright_api = require_browser()


@pytest.fixture(scope="module")
def page(server):  # noqa: F811
    with playwright_api.sync_playwright() as p:
        browser = launch_chromium(p)
        context = browser.new_context(
            viewport={"width": 1500, "height": 1100}, accept_downloads=True
        )
        pg = context.new_page()
        pg.set_default_timeout(90_000)
        pg.goto(server)
        yield pg
        browser.close()


def click_pixel(page, key: str, row: int, col: int, size: int = 28) -> None:
    """Click the centre of pixel (row, col) of the pixel grid figure drawn with ``key``."""
    plot = chart(page, key)
    plot.scroll_into_view_if_needed()
    area = plot.locator(".nsewdrag").first
    box = area.bounding_box()
    x = box["x"] + (col + 0.5) / size * box["width"]
    y = box["y"] + (row + 0.5) / size * box["height"]
    page.mouse.click(x, y)
    settle(page)


def test_layouts_page_click_and_toggle(page, shots):  # noqa: F811
    settle(page)
    no_exception(page)
    assert page.get_by_role("heading", name="Sparse attention layouts").count() == 1
    click_pixel(page, "lay_pixels_strided", 20, 5)
    assert page.get_by_label("query row").input_value() == "20"
    assert page.get_by_label("query column").input_value() == "5"
    page.get_by_text("side by side").click()
    settle(page)
    no_exception(page)
    assert page.locator("[data-testid=stPlotlyChart]").count() == 4
    shoot(page, shots / "layouts.png")
    keyed(page, "lay_mode").get_by_text("fixed", exact=True).click()
    settle(page)
    no_exception(page)


def test_attention_page_head_and_pixel(page, shots):  # noqa: F811
    open_page(page, "Attention")
    no_exception(page)
    click_pixel(page, "att_pixels", 10, 12)
    assert page.get_by_label("query row").input_value() == "10"
    # pick a head: layer 1, head 2
    for key, option in (("att_layer", "1"), ("att_head", "2")):
        pick(page, key, option)
        settle(page)
    assert page.get_by_text("layer 1, head 2: where pixel (10, 12) looks").count() >= 1
    shoot(page, shots / "attention.png")
    no_exception(page)


def test_attention_page_two_models_side_by_side(page, shots):  # noqa: F811
    choose(page, "att_compare", "strided")
    settle(page)
    no_exception(page)
    titles = [
        chart(page, k).locator(".gtitle").first.text_content()
        for k in ("att_pixels", "att_pixels_b")
    ]
    assert titles == [
        "dense: layer 1, head 2: where pixel (10, 12) looks",
        "strided: layer 1, head 2: where pixel (10, 12) looks",
    ]
    assert page.get_by_text("of their weight").count() == 1
    chart(page, "att_pixels").scroll_into_view_if_needed()
    shoot(page, shots / "attention_compare.png")
    choose(page, "att_compare", "none")
    settle(page)


def test_download_a_figure(page, shots):  # noqa: F811
    plot = chart(page, "att_grid")
    plot.hover()
    with page.expect_download() as info:
        plot.locator("[data-title='Download plot as a PNG']").first.click()
    path = info.value.path()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width > 100


def test_complete_upload_and_sample(page, shots):  # noqa: F811
    open_page(page, "Complete")
    keyed(page, "cmp_source").get_by_text("upload", exact=True).click()
    settle(page)
    # a real photo-sized upload: a shipped test image, enlarged and in colour
    with Image.open(ROOT / "assets" / "samples" / "test00016_pullover.png") as im:
        big = im.convert("RGB").resize((112, 112), Image.NEAREST)
    buf = io.BytesIO()
    big.save(buf, format="PNG")
    upload(page, "cmp_upload", "pullover.png", buf.getvalue())
    settle(page)
    no_exception(page)
    keyed(page, "cmp_run").get_by_role("button").click()
    settle(page)
    no_exception(page)
    assert page.get_by_role("heading", name="Where the model looked").count() == 1
    page.get_by_text("4 samples, seed 0").first.scroll_into_view_if_needed()
    page.mouse.wheel(0, -250)  # the kept image above the samples too
    shoot(page, shots / "complete.png")


def test_other_pages_open(page, shots):  # noqa: F811
    for title in ("Learned vs prescribed", "Export", "Models & speed"):
        open_page(page, title)
        no_exception(page)
    shoot(page, shots / "models.png")
