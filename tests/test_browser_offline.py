"""The app needs nothing from outside its own server: every page, opened by its address in
Chromium with every request recorded, asks no host other than the server's (a private or offline
server must not make a request per visitor, e.g. for the tab's icon or the menu's icon font). The
menu's icons are drawn from the icon font Streamlit serves itself."""

from __future__ import annotations

import urllib.parse

import pytest
from browser_util import (  # noqa: F401  (server is a fixture)
    launch_chromium,
    no_exception,
    require_browser,
    server,
    settle,
)

playwright_api = require_browser()
LOCAL = {"127.0.0.1", "localhost"}
# every page's address (app.py's url_path; Layouts is the default page at /)
ADDRESSES = {
    "Layouts": "",
    "Attention": "attention",
    "Learned vs prescribed": "learned",
    "Complete": "complete",
    "Who looks here": "who-looks-here",
    "Predictions": "predictions",
    "Ablation": "ablation",
    "Training": "training",
    "Playground": "playground",
    "Export": "export",
    "Models & speed": "models",
}


def outside(urls: list[str]) -> list[str]:
    """The URLs whose host is not this machine (data: and blob: URLs have none)."""
    hosts = [(u, urllib.parse.urlsplit(u)) for u in urls]
    return [
        u
        for u, parts in hosts
        if parts.scheme in ("http", "https", "ws", "wss") and parts.hostname not in LOCAL
    ]


def test_outside_finds_other_hosts():
    urls = [
        "http://127.0.0.1:8501/attention",
        "ws://localhost:8501/_stcore/stream",
        "data:image/svg+xml,<svg/>",
        "https://fonts.gstatic.com/s/i/short-term/release/materialsymbolsrounded/hub/24px.svg",
    ]
    assert outside(urls) == [urls[-1]]


@pytest.fixture(scope="module")
def visits(server):  # noqa: F811
    """Every page opened by its address: ({title: (url, heading)}, every URL requested)."""
    asked: list[str] = []
    seen = {}
    with playwright_api.sync_playwright() as p:
        browser = launch_chromium(p)
        context = browser.new_context(viewport={"width": 2560, "height": 1000})
        # a request that would leave the machine is recorded, then refused (offline)
        context.route(
            "**/*",
            lambda route: route.abort() if outside([route.request.url]) else route.continue_(),
        )
        page = context.new_page()
        page.set_default_timeout(120_000)
        page.on("request", lambda request: asked.append(request.url))
        page.on("websocket", lambda ws: asked.append(ws.url))
        page.goto(server)
        settle(page)
        # the pages the menu offers (a page added later is visited too)
        menu = page.locator(f"a[href^='{server}']").evaluate_all(
            "els => els.map(e => [e.innerText, e.getAttribute('href')])"
        )
        addresses = dict(ADDRESSES)
        for text, href in menu:
            title = text.splitlines()[-1].strip()  # after the icon's ligature
            addresses.setdefault(title, urllib.parse.urlsplit(href).path.strip("/"))
        for title, address in addresses.items():
            page.goto(f"{server}/{address}")
            settle(page)
            no_exception(page)
            heading = page.get_by_role("heading").first.inner_text()
            icons_ready = page.evaluate(
                "async () => { await document.fonts.ready;"
                " return document.fonts.check('24px \"Material Symbols Rounded\"'); }"
            )
            menu = page.get_by_role("link", name=title).first.get_attribute("href")
            seen[title] = (page.url, heading, icons_ready, menu)
        browser.close()
    return seen, asked


def test_every_page_asks_only_its_own_server(visits):
    seen, asked = visits
    assert set(ADDRESSES) <= set(seen)
    assert asked, "no request was recorded"
    assert outside(asked) == [], outside(asked)


def test_every_page_has_its_named_address(server, visits):  # noqa: F811
    seen, _ = visits
    for title, address in ADDRESSES.items():
        url, heading, _, menu = seen[title]
        assert urllib.parse.urlsplit(url).path.strip("/") == address, (title, url)
        assert urllib.parse.urlsplit(menu).path.strip("/") == address, (title, menu)
        assert heading, title
    # the old addresses (file names) are gone: they open the default page, not theirs
    assert "export_page" not in str(seen) and "models_page" not in str(seen)


def test_menu_icons_come_from_the_servers_own_font(visits):
    seen, asked = visits
    assert all(ready for _, _, ready, _ in seen.values())
    assert any("MaterialSymbols" in u and u.endswith(".woff2") for u in asked), asked
