"""The browser's Back and Forward in Chromium: a setting changed on a page replaces the page's
history entry (the URL records the latest view) instead of adding one, so one press of Back
leaves the page for the previous page, with the settings that entry records, and Forward
returns."""

from __future__ import annotations

import urllib.parse

import pytest
from browser_util import (  # noqa: F401  (server is a fixture)
    keyed,
    launch_chromium,
    no_exception,
    open_page,
    require_browser,
    server,
    settle,
)

playwright_api = require_browser()


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        b = launch_chromium(p)
        yield b
        b.close()


@pytest.fixture
def page(browser, server):  # noqa: F811
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    pg.set_default_timeout(90_000)
    pg.goto(server)
    settle(pg)
    yield pg
    context.close()


def where(page) -> tuple[str, dict[str, list[str]]]:
    """The page's address and the settings its URL records."""
    parts = urllib.parse.urlsplit(page.url)
    return parts.path.strip("/"), urllib.parse.parse_qs(parts.query)


def heading(page) -> str:
    return page.get_by_role("heading").first.inner_text()


def set_number(page, key: str, value: int) -> None:
    box = keyed(page, key).locator("input")
    box.fill(str(value))
    box.press("Enter")
    settle(page)
    no_exception(page)


def shown_number(page, key: str) -> int:
    return int(keyed(page, key).locator("input").input_value())


def back(page) -> None:
    page.go_back()
    settle(page)
    no_exception(page)


def forward(page) -> None:
    page.go_forward()
    settle(page)
    no_exception(page)


def test_one_back_leaves_a_page_for_the_previous_one(page):
    layouts = heading(page)
    open_page(page, "Attention")
    attention = heading(page)
    assert where(page)[0] == "attention"
    back(page)
    assert where(page)[0] == "" and heading(page) == layouts
    forward(page)
    assert where(page)[0] == "attention" and heading(page) == attention


def test_a_change_replaces_the_entry_and_back_restores_each_pages_settings(page):
    # the page's first run installs the replacing pushState (settings.share_settings): on a busy
    # machine the browser may run that script after the test's first change, so wait for it
    page.wait_for_function("window.history.__sameAddressReplaces === true", timeout=30_000)
    entries = page.evaluate("history.length")
    set_number(page, "lay_l", 7)
    set_number(page, "lay_row", 3)
    assert where(page)[1]["lay_l"] == ["7"] and where(page)[1]["lay_row"] == ["3"]
    assert page.evaluate("history.length") == entries  # changes add no entries
    open_page(page, "Attention")
    set_number(page, "att_row", 5)
    set_number(page, "att_col", 6)
    open_page(page, "Layouts")
    assert shown_number(page, "lay_l") == 7  # the session keeps the page's settings
    set_number(page, "lay_l", 9)
    assert page.evaluate("history.length") == entries + 2  # one entry per page visited
    # Back: the Attention page as it was left, in one press
    back(page)
    path, settings = where(page)
    assert path == "attention"
    assert (settings["att_row"], settings["att_col"]) == (["5"], ["6"])
    assert (shown_number(page, "att_row"), shown_number(page, "att_col")) == (5, 6)
    # Back again: the first Layouts entry, with the settings it recorded (l = 7, not the 9 made
    # later on the Layouts page of the third entry)
    back(page)
    path, settings = where(page)
    assert path == "" and settings["lay_l"] == ["7"] and settings["lay_row"] == ["3"]
    assert shown_number(page, "lay_l") == 7 and shown_number(page, "lay_row") == 3
    # Forward twice: the latest Layouts view again
    forward(page)
    assert where(page)[0] == "attention"
    forward(page)
    path, settings = where(page)
    assert path == "" and settings["lay_l"] == ["9"] and shown_number(page, "lay_l") == 9
