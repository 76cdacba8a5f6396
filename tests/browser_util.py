"""What the real-browser tests share: tools/browser.py's server, Chromium and waiting, and the
tests' own fixtures and checks.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tools.browser import (  # noqa: F401  (the tests import these from here)
    CHROMIUM,
    FLAGS,
    IDLE,
    ROOT,
    Server,
    choose,
    click_menu,
    free_port,
    keyed,
    launch_chromium,
    open_page,
    settle,
    streamlit_command,
    streamlit_server,
)


def require_browser():
    """playwright.sync_api, or skip the calling test module when it or Chromium is missing."""
    api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(
            f"{CHROMIUM} is missing (scripts/system_packages.sh installs it)",
            allow_module_level=True,
        )
    return api


def no_exception(page) -> None:
    assert page.locator("[data-testid=stException]").count() == 0


def chart(page, key: str):
    """The plotly chart drawn with ``key=key``."""
    return keyed(page, key).locator("[data-testid=stPlotlyChart]")


def upload(page, key: str, name: str, data: bytes, mime: str = "image/png") -> None:
    """Give the file uploader ``key`` one file (not yet waiting for the run it starts)."""
    keyed(page, key).locator("input[type=file]").set_input_files(
        files=[{"name": name, "mimeType": mime, "buffer": data}]
    )


def pick(page, key: str, option: str) -> None:
    """Press ``option`` of the segmented control ``key`` (not yet waiting for the run)."""
    keyed(page, key).get_by_role("radio", name=option, exact=True).click()


def shoot(page, path) -> None:
    """A screenshot of the whole page: the window made as tall as the app's content for the
    shot (Streamlit scrolls inside its own container, so a full_page screenshot stops at the
    window's height)."""
    size = page.viewport_size
    height = page.evaluate(
        "() => Math.max(...[...document.querySelectorAll("
        "'[data-testid=stMain], [data-testid=stAppViewContainer], section')]"
        ".map(e => e.scrollHeight))"
    )
    page.set_viewport_size({"width": size["width"], "height": min(height + 50, 8000)})
    page.wait_for_timeout(800)
    page.screenshot(path=str(path))
    page.set_viewport_size(size)
    page.wait_for_timeout(300)


@pytest.fixture(scope="module")
def server():
    """The app on its default models, one server per test module."""
    with streamlit_server() as running:
        yield running.url


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    """Where screenshots go: $SCREENSHOT_DIR, or a temporary folder."""
    d = Path(os.environ.get("SCREENSHOT_DIR", tmp_path_factory.mktemp("shots")))
    d.mkdir(parents=True, exist_ok=True)
    return d
