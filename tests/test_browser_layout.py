"""Every page at an 800 px and a 1920 px wide window, in Chromium: pixel views square and sized
from their container, axes fixed to the image, a click selecting the pixel under the cursor,
titles and buttons not cut. Screenshots (PAGE_WIDTH.png) go to $SCREENSHOT_DIR."""

from __future__ import annotations

import pytest
from browser_util import (  # noqa: F401  (server and shots are fixtures)
    chart,
    keyed,
    launch_chromium,
    no_exception,
    open_page,
    require_browser,
    server,
    settle,
    shoot,
    shots,
)
from playwright.sync_api import expect

playwright_api = require_browser()
WIDTHS = (800, 1920)


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        b = launch_chromium(p)
        yield b
        b.close()


@pytest.fixture(params=WIDTHS, ids=lambda w: f"{w}px")
def page(request, browser, server):  # noqa: F811
    context = browser.new_context(viewport={"width": request.param, "height": 1000})
    pg = context.new_page()
    pg.set_default_timeout(90_000)
    pg.goto(server)
    settle(pg)
    pg.width = request.param
    yield pg
    context.close()


def plot_area(page, key: str, scroll: bool = True) -> dict:
    """The bounding box of a plotly chart's plot area (its axes' domain)."""
    plot = chart(page, key)
    if scroll:
        plot.scroll_into_view_if_needed()
    return plot.locator(".nsewdrag").first.bounding_box()


def axis_ranges(page, key: str) -> tuple[list[float], list[float]]:
    ranges = (
        chart(page, key)
        .locator(".js-plotly-plot")
        .first.evaluate("el => [el._fullLayout.xaxis.range, el._fullLayout.yaxis.range]")
    )
    return ranges[0], ranges[1]


def screen_point(page, key: str, x: float, y: float) -> tuple[float, float]:
    """Where data point (x, y) of a chart is on the screen."""
    box = plot_area(page, key, scroll=False)
    (x0, x1), (y0, y1) = axis_ranges(page, key)
    return (
        box["x"] + (x - x0) / (x1 - x0) * box["width"],
        box["y"] + (1 - (y - y0) / (y1 - y0)) * box["height"],
    )


def check_pixel_view(page, key: str, size: int = 28) -> None:
    """Square, at least 200 px a side, axes exactly the image, the title inside the chart."""
    box = plot_area(page, key)
    assert box["width"] >= 200 and box["height"] >= 200, (key, box)
    assert abs(box["width"] - box["height"]) <= 2, (key, box)
    x, y = axis_ranges(page, key)
    assert [round(v, 3) for v in x] == [-0.5, size - 0.5], (key, x)
    assert [round(v, 3) for v in y] == [size - 0.5, -0.5], (key, y)
    whole = chart(page, key).locator(".main-svg").first.bounding_box()
    title = chart(page, key).locator(".gtitle").first.bounding_box()
    assert (
        title["x"] >= whole["x"] - 1
        and title["x"] + title["width"] <= whole["x"] + whole["width"] + 1
    ), (key, title, whole)


def click_pixel(page, key: str, row: int, col: int, size: int = 28) -> None:
    box = plot_area(page, key)
    page.mouse.click(
        box["x"] + (col + 0.5) / size * box["width"], box["y"] + (row + 0.5) / size * box["height"]
    )
    settle(page)


def query(page) -> tuple[int, int]:
    return int(page.get_by_label("query row").input_value()), int(
        page.get_by_label("query column").input_value()
    )


def grid_title(page) -> str:
    """The all-heads grid's title (without its subtitle)."""
    return chart(page, "att_grid").locator(".gtitle").first.text_content()


def not_cut(page, key: str) -> None:
    """The button ``key`` shows its whole label (no ellipsis)."""
    label = keyed(page, key).locator("button p").first
    assert label.evaluate("e => e.scrollWidth <= e.clientWidth + 1"), key


def test_layouts_page(page, shots):  # noqa: F811
    no_exception(page)
    check_pixel_view(page, "lay_pixels_strided")
    click_pixel(page, "lay_pixels_strided", 10, 10)
    assert query(page) == (10, 10)
    # fixed alone, then side by side: the fixed chart keeps its size and its clicks
    keyed(page, "lay_mode").get_by_text("fixed", exact=True).click()
    settle(page)
    keyed(page, "lay_mode").get_by_text("side by side").click()
    settle(page)
    no_exception(page)
    for key in ("lay_pixels_strided_pair", "lay_pixels_fixed_pair"):
        check_pixel_view(page, key)
    click_pixel(page, "lay_pixels_fixed_pair", 5, 20)
    assert query(page) == (5, 20)
    shoot(page, shots / f"layouts_{page.width}.png")
    # an impossible c hides fixed; corrected, strided is drawn right again
    c = page.get_by_label("c (summary width, fixed)")
    c.fill("40")
    c.press("Enter")
    settle(page)
    c.fill("2")
    c.press("Enter")
    settle(page)
    check_pixel_view(page, "lay_pixels_strided_pair")
    click_pixel(page, "lay_pixels_strided_pair", 12, 3)
    assert query(page) == (12, 3)


def test_attention_page(page, shots):  # noqa: F811
    open_page(page, "Attention")
    no_exception(page)
    check_pixel_view(page, "att_pixels")
    click_pixel(page, "att_pixels", 10, 10)
    assert query(page) == (10, 10)
    assert grid_title(page) == "pixel (10, 10): all heads"  # the click reran the grid too
    # hover names the pixel under the cursor in the pixel view, the tile in the all-heads grid
    box = plot_area(page, "att_pixels")
    page.mouse.move(box["x"] + 12.5 / 28 * box["width"], box["y"] + 10.5 / 28 * box["height"])
    hover = chart(page, "att_pixels").locator(".hovertext").first
    hover.wait_for()
    assert "row 10, col 12" in hover.text_content()
    # the grid: 8 layers x 4 heads of 28 x 28, a blank line between; head 1 starts at 29
    chart(page, "att_grid").evaluate("e => e.scrollIntoView({block: 'start'})")
    page.wait_for_timeout(300)
    x, y = screen_point(page, "att_grid", 29 + 12, 10)
    page.mouse.move(x - 3, y - 3)
    page.mouse.move(x, y, steps=5)
    hover = chart(page, "att_grid").locator(".hovertext").first
    hover.wait_for()
    assert "layer 0, head 1" in hover.text_content() and "peak" in hover.text_content()
    # a click on that tile shows its head; a click on row 300 of the N x N map (pooled 4 x 4:
    # map row 75, queries 300..303) makes token 300 = pixel (10, 20) the query
    page.mouse.click(x, y)
    settle(page)
    no_exception(page)
    assert "att_layer=0&att_head=1" in page.url
    title = chart(page, "att_pixels").locator(".gtitle").first.text_content()
    assert title.startswith("layer 0, head 1: where"), title
    chart(page, "att_map").evaluate("e => e.scrollIntoView({block: 'start'})")
    page.wait_for_timeout(300)
    x, y = screen_point(page, "att_map", 100, 300)  # (in tokens: tile 75's first, 300)
    # hovered anywhere on it, the row names its queries and their heaviest keys, and the axis
    # the first of them (not the cell on the diagonal, nor the tile's number)
    page.mouse.move(x - 3, y - 1)
    page.mouse.move(x, y, steps=5)
    hover = chart(page, "att_map").locator(".hovertext").first
    hover.wait_for()
    assert hover.text_content().startswith("queries 300-303: most weight on keys ")
    assert chart(page, "att_map").locator(".axistext").all_text_contents() == ["300"]
    page.mouse.click(x, y)
    settle(page)
    no_exception(page)
    assert query(page) == (10, 20)
    assert grid_title(page) == "pixel (10, 20): all heads"
    # the view is in the URL: a reload shows the same query pixel
    assert "att_row=10&att_col=20" in page.url
    page.reload()
    settle(page)
    # (Streamlit draws a number input at its minimum for a frame or two before the value the
    # session holds: wait for the value, rather than read the first frame)
    expect(page.get_by_label("query row")).to_have_value("10")
    assert query(page) == (10, 20)
    x, y = axis_ranges(page, "att_map")  # the N x N map's 196 tiles: no autorange beyond
    assert x == [-2, 782] and y == [782, -2]  # (in tokens: tile k from 4k - 2 to 4k + 2)
    shoot(page, shots / f"attention_{page.width}.png")


def test_complete_page(page, shots):  # noqa: F811
    open_page(page, "Complete")
    no_exception(page)
    not_cut(page, "cmp_run")
    if page.width == 800:  # the samples, wrapped, in the narrow window
        keyed(page, "cmp_run").get_by_role("button").click()
        settle(page)
        no_exception(page)
        assert page.get_by_text("4 samples, seed 0").count() == 2
    shoot(page, shots / f"complete_{page.width}.png")


def test_other_pages(page, shots):  # noqa: F811
    for title, name in (("Learned vs prescribed", "learned"), ("Models & speed", "models")):
        open_page(page, title)
        no_exception(page)
        page.screenshot(path=str(shots / f"{name}_{page.width}.png"), full_page=True)


def test_speed_chart(page, shots):  # noqa: F811
    """Models & speed, Benchmarks tab: the measured time-against-N chart is drawn inside the
    window, log-log, and the Measure radio redraws it as forward + backward."""
    open_page(page, "Models & speed")
    page.get_by_role("tab", name="Benchmarks").click()
    no_exception(page)
    box = plot_area(page, "speed_chart")
    assert box["width"] > 200 and box["x"] + box["width"] <= page.width
    title = chart(page, "speed_chart").locator(".gtitle").first.text_content()
    assert title.startswith("Attention on the CPU, forward:")
    axes = chart(page, "speed_chart").locator(".js-plotly-plot").first
    assert axes.evaluate("e => [e._fullLayout.xaxis.type, e._fullLayout.yaxis.type]") == [
        "log",
        "log",
    ]
    keyed(page, "speed_metric").get_by_text("forward + backward", exact=True).click()
    page.wait_for_function(
        """() => [...document.querySelectorAll('.st-key-speed_chart .gtitle')]
                   .some(t => t.textContent.includes('forward + backward'))"""
    )
    settle(page)
    no_exception(page)
    chart(page, "speed_chart").screenshot(path=str(shots / f"speed_chart_{page.width}.png"))
