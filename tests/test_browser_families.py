"""The Layouts page in Chromium draws every static family beside strided, at 28 x 28 gray and
32 x 32 x 3: each pick of a family and each change of one of its parameters ends with both of
its figures drawn with the new layout in their titles, the script idle and the browser painted.

Each change is timed (click to drawn). The goal, 1 s a change, is a benchmark, not a test
(speed is proved on a machine at rest, not asserted in CI): run
``BENCH_GOALS=1 pytest tests/test_browser_families.py -s`` to assert it; otherwise a change
must only be drawn within FUNCTIONAL_S. The times are printed (-s) and written to
$SCREENSHOT_DIR/family_timings.txt when that is set."""

from __future__ import annotations

import os
import time
import urllib.parse
from dataclasses import replace
from pathlib import Path

import pytest
from browser_util import (  # noqa: F401  (server is a fixture)
    keyed,
    launch_chromium,
    no_exception,
    require_browser,
    server,
    settle,
)

from kernels import layouts as L

playwright_api = require_browser()
GOAL_S = 1.0  # click to drawn, per change, on this 2-core machine at rest (issue 31's goal)
FUNCTIONAL_S = 15.0  # drawn at all, on a loaded machine
LIMIT_S = GOAL_S if os.environ.get("BENCH_GOALS") == "1" else FUNCTIONAL_S
GEOMETRIES = {"28x28 gray (Fashion-MNIST)": 28, "32x32 RGB (CIFAR-10)": 96}  # row of tokens
# one parameter changed a family (strided's own l is the page's shared first input)
CHANGES = {
    "local": ("l", 1),
    "column": ("l", -1),
    "fixed": ("c", 1),
    "dilated": ("r", 1),
    "sinks": ("s", 1),
    "axial": ("width", -1),
    "neighborhood": ("kh", 1),
    "block_sparse": ("vert_stride", 1),
    "bigbird": ("seed", 1),
}
FAMILIES = [f for f in L.FAMILY_PARAMS if f != "strided"]
TIMES: list[tuple[str, str, float]] = []


@pytest.fixture(scope="module")
def page(server):  # noqa: F811
    with playwright_api.sync_playwright() as p:
        browser = launch_chromium(p)
        context = browser.new_context(viewport={"width": 1600, "height": 1000})
        pg = context.new_page()
        pg.set_default_timeout(90_000)
        yield pg
        context.close()
        browser.close()
    report = "\n".join(f"{g:28s} {change:60s} {1000 * s:6.0f} ms" for g, change, s in TIMES)
    print("\nclick to drawn, Layouts page:\n" + report)
    if os.environ.get("SCREENSHOT_DIR"):
        Path(os.environ["SCREENSHOT_DIR"], "family_timings.txt").write_text(report + "\n")


def wait_drawn(page, family: str, text: str) -> None:
    """Until the script is idle and both figures of ``family`` (beside strided) have ``text``
    in their titles, then two animation frames (painted)."""
    page.wait_for_function(
        """([keys, text]) => {
            const app = document.querySelector('[data-testid=stApp]');
            if (!app || app.getAttribute('data-test-script-state') !== 'notRunning') return false;
            return keys.every(k => {
                const chart = `.st-key-${k} [data-testid=stPlotlyChart] .gtitle`;
                const t = document.querySelector(chart);
                return !!t && t.textContent.includes(text);
            });
        }""",
        arg=[[f"lay_pixels_{family}_pair", f"lay_mask_{family}_pair"], text],
        polling="raf",
        timeout=30_000,  # far beyond the limit: a change never drawn, not a slow one
    )
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")


def open_with_strided(page, server: str, geometry: str, row: int) -> None:  # noqa: F811
    query = urllib.parse.urlencode(
        {
            "lay_geometry": geometry,
            "lay_mode": "side by side",
            "lay_families": "strided",
            "lay_l": row,
        }
    )
    page.goto(f"{server}/?{query}")
    settle(page)
    page.locator(".st-key-lay_pixels_strided_pair .gtitle").first.wait_for()
    no_exception(page)


def timed(label: str, geometry: str, family: str, text: str, page, act) -> None:
    start = time.perf_counter()
    act()
    wait_drawn(page, family, text)
    TIMES.append((geometry, label, time.perf_counter() - start))
    no_exception(page)


@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_each_family_is_drawn_after_each_change(page, server, geometry):  # noqa: F811
    row = GEOMETRIES[geometry]
    for family in FAMILIES:
        open_with_strided(page, server, geometry, row)
        keyed(page, "lay_families").locator("input").first.click()
        option = page.get_by_role("option", name=family, exact=True)
        timed(f"pick {family}", geometry, family, f"{family}(", page, option.click)
        page.keyboard.press("Escape")
        if family not in CHANGES:
            continue
        title = page.locator(f".st-key-lay_pixels_{family}_pair .gtitle").first.text_content()
        layout = L.parse_layout(title.split(":")[0])  # "<spec>: keys of pixel (r, c)"
        param, step = CHANGES[family]
        field = keyed(page, "lay_c" if family == "fixed" else f"lay_{family}_{param}")
        field = field.locator("input").first
        value = getattr(layout, param) + step
        new = replace(layout, **{param: value})

        def change(field=field, value=value) -> None:
            field.fill(str(value))
            field.press("Enter")

        timed(repr(new), geometry, family, repr(new), page, change)
    slow = [(label, round(s, 2)) for g, label, s in TIMES if g == geometry and s > LIMIT_S]
    assert not slow, f"changes drawn in more than {LIMIT_S} s on {geometry}: {slow}"
