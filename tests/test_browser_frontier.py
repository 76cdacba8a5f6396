"""The Frontier page in Chromium: opened from the menu, it is drawn from the shipped result; a
click on one of its points opens the Attention page with the model run under that point's
attention (the banner names the spec, the URL holds it). The goal, two seconds each, is asserted
with BENCH_GOALS=1 on a machine at rest (a benchmark, not a CI check). Each time runs from the
click to the result drawn (the script idle, the chart's title there, two
animation frames painted). The times are printed (pytest -s) and written to
$SCREENSHOT_DIR/frontier_timings.txt when that is set.

The shipped result is assets/frontier/dense.json; until it is written, the server reads a small
hand-made one recorded as the shipped dense model's (tests/test_frontier_figure.py)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from browser_util import (  # noqa: F401  (shots is a fixture)
    ROOT,
    click_menu,
    launch_chromium,
    no_exception,
    require_browser,
    settle,
    shoot,
    shots,
    streamlit_server,
)

from tests.test_frontier_figure import small_result

playwright_api = require_browser()
GOAL_S = 2.0  # click to drawn, on this 2-core machine at rest (issue 32's goal)
# the goal is a benchmark (BENCH_GOALS=1 asserts it on a machine at rest); otherwise drawn at all
LIMIT_S = GOAL_S if os.environ.get("BENCH_GOALS") == "1" else 20.0
SHIPPED = ROOT / "assets" / "frontier" / "dense.json"
TIMES: list[tuple[str, float]] = []


@pytest.fixture(scope="module")
def frontier_file(tmp_path_factory) -> tuple[Path, str]:
    if SHIPPED.is_file():
        return SHIPPED, "the shipped dense.json"
    path = tmp_path_factory.mktemp("frontier") / "dense.json"
    path.write_text(json.dumps(small_result()))
    return path, "a small hand-made frontier (dense.json not written yet)"


@pytest.fixture(scope="module")
def page(frontier_file):
    with streamlit_server({"SPARSE_EXPLORER_FRONTIER": str(frontier_file[0])}) as server:
        with playwright_api.sync_playwright() as p:
            browser = launch_chromium(p)
            context = browser.new_context(viewport={"width": 1500, "height": 1100})
            pg = context.new_page()
            pg.set_default_timeout(90_000)
            pg.goto(server.url)
            settle(pg)
            yield pg
            context.close()
            browser.close()
    report = "\n".join(f"{label:70s} {1000 * s:6.0f} ms" for label, s in TIMES)
    print(f"\nclick to drawn ({frontier_file[1]}):\n" + report)
    if os.environ.get("SCREENSHOT_DIR"):
        Path(os.environ["SCREENSHOT_DIR"], "frontier_timings.txt").write_text(report + "\n")


def painted(page) -> None:
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")


def wait_idle_with(page, selector: str, text: str) -> None:
    """Until the script is idle, ``selector`` exists and the page shows ``text``; then painted."""
    page.wait_for_function(
        """([selector, text]) => {
            const app = document.querySelector('[data-testid=stApp]');
            if (!app || app.getAttribute('data-test-script-state') !== 'notRunning') return false;
            return !!document.querySelector(selector) && document.body.innerText.includes(text);
        }""",
        arg=[selector, text],
        polling="raf",
    )
    painted(page)


# the point to click: of the families' points (or those of the trace named ``only``...), the
# one farthest from every other point drawn (so the click lands on it alone), as page
# coordinates, with its customdata
FARTHEST_POINT = """([skip, only]) => {
    const gd = document.querySelector('.st-key-fr_chart .js-plotly-plot');
    const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
    const box = gd.getBoundingClientRect();
    const all = [];
    gd._fullData.forEach((t, ti) => {
        (t.x || []).forEach((x, i) => {
            if (!t.visible || (t.marker && t.marker.size === 0)) return;
            all.push({
                ti, i, name: t.name, data: t.customdata ? t.customdata[i] : null,
                px: box.left + xa._offset + xa.d2p(x), py: box.top + ya._offset + ya.d2p(t.y[i]),
            });
        });
    });
    const families = all.filter(p => p.data && p.data[0] && p.data[0] !== skip
        && (only ? p.name.startsWith(only) : !p.name.startsWith('dense')
            && !p.name.startsWith('fitted') && !p.name.startsWith('trained')));
    let best = null, far = -1;
    for (const p of families) {
        let near = Infinity;
        for (const q of all) {
            if (q !== p) near = Math.min(near, Math.hypot(p.px - q.px, p.py - q.py));
        }
        if (near > far) { far = near; best = p; }
    }
    return {x: best.px, y: best.py, spec: best.data[0], name: best.name, gap: far};
}"""


def test_frontier_opens_and_a_point_opens_the_attention_page(page, shots):  # noqa: F811
    start = time.perf_counter()
    click_menu(page, "Frontier")
    wait_idle_with(page, ".st-key-fr_chart [data-testid=stPlotlyChart] .gtitle", "What it says")
    TIMES.append(("menu click -> Frontier drawn (first visit)", time.perf_counter() - start))
    no_exception(page)
    title = page.locator(".st-key-fr_chart .gtitle").first.text_content()
    assert "bits/dim under each sparse attention" in title
    shoot(page, shots / "frontier.png")

    target = page.evaluate(FARTHEST_POINT, ["", ""])
    assert target["gap"] > 4, target  # a point that a click hits alone
    start = time.perf_counter()
    page.mouse.click(target["x"], target["y"])
    wait_idle_with(
        page,
        ".st-key-att_pixels [data-testid=stPlotlyChart] .gtitle",
        f"This model, run under {target['spec']}",
    )
    TIMES.append(
        (f"point click ({target['spec']}) -> Attention drawn", time.perf_counter() - start)
    )
    no_exception(page)
    assert "att_under=" in page.url
    assert page.get_by_role("heading", name="Attention per layer and head").count() == 1
    shoot(page, shots / "attention_under.png")

    # back to the Frontier page, and another point (its attention not captured yet)
    start = time.perf_counter()
    click_menu(page, "Frontier")
    wait_idle_with(page, ".st-key-fr_chart [data-testid=stPlotlyChart] .gtitle", "What it says")
    TIMES.append(("menu click -> Frontier drawn (again)", time.perf_counter() - start))
    target = page.evaluate(FARTHEST_POINT, [target["spec"], ""])  # another: captured anew
    start = time.perf_counter()
    page.mouse.click(target["x"], target["y"])
    wait_idle_with(
        page,
        ".st-key-att_pixels [data-testid=stPlotlyChart] .gtitle",
        f"This model, run under {target['spec']}",
    )
    TIMES.append(
        (
            f"point click ({target['spec']}) -> Attention drawn (2nd point)",
            time.perf_counter() - start,
        )
    )
    no_exception(page)

    # a content-based selection (top-k: the slowest to run) and a fitted per-layer layout
    for only, what in (("top-k", "top-k point"), ("fitted", "fitted point (per layer)")):
        click_menu(page, "Frontier")
        wait_idle_with(page, ".st-key-fr_chart [data-testid=stPlotlyChart] .gtitle", "What it says")
        target = page.evaluate(FARTHEST_POINT, ["", only])
        spec = target["spec"]
        shown = spec if ";" not in spec else f"per layer: {spec}"
        start = time.perf_counter()
        page.mouse.click(target["x"], target["y"])
        wait_idle_with(
            page,
            ".st-key-att_pixels [data-testid=stPlotlyChart] .gtitle",
            f"This model, run under {shown}",
        )
        label = spec if len(spec) < 40 else spec[:37] + "..."
        TIMES.append((f"{what} click ({label}) -> Attention drawn", time.perf_counter() - start))
        no_exception(page)
    slow = [(label, round(s, 2)) for label, s in TIMES if s > LIMIT_S]
    assert not slow, f"drawn in more than {LIMIT_S} s: {slow}"
