"""The Playground in a real browser (Debian's Chromium, Playwright, `streamlit run`): a short race
on tiny synthetic data, its curves and head maps redrawn live, Stop, and the saved run opened on
the Training page. Screenshots (playground_*.png) go to $SCREENSHOT_DIR."""

from __future__ import annotations

import os
import time

import pytest
from browser_util import (  # noqa: F401  (shots is a fixture)
    chart,
    choose,
    keyed,
    launch_chromium,
    no_exception,
    open_page,
    require_browser,
    settle,
    shoot,
    shots,
    streamlit_server,
)

from tests.test_training import tiny_data  # noqa: F401  (a fixture)

playwright_api = require_browser()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def server(tiny_data, runs):  # noqa: F811
    env = {"SPARSE_EXPLORER_PLAYGROUND_DATA": tiny_data, "SPARSE_EXPLORER_RUNS": str(runs)}
    with streamlit_server(env=env) as running:
        yield running.url


@pytest.fixture(scope="module")
def page(server):
    with playwright_api.sync_playwright() as p:
        browser = launch_chromium(p)
        context = browser.new_context(viewport={"width": 1500, "height": 1100})
        pg = context.new_page()
        pg.set_default_timeout(90_000)
        pg.goto(server)
        settle(pg)
        yield pg
        browser.close()


def drawn(page) -> tuple[int, str] | None:
    """What the browser has drawn so far: the last step of the dense train curve (in the
    plotly graph's drawn data) and the head maps' title as rendered in their SVG; None while
    either chart is not there yet."""
    curves = chart(page, "pg_by_step").locator(".js-plotly-plot")
    heads = chart(page, "pg_heads_dense").locator(".gtitle")
    if not curves.count() or not heads.count():
        return None
    try:
        points = curves.first.evaluate(  # the last step of the curve as plotly drew it
            "el => { const t = (el._fullData || []).find(t => t.name === 'dense train');"
            " return t && t.x && t.x.length ? Number(t.x[t.x.length - 1]) : null; }"
        )
        title = heads.first.text_content()
    except playwright_api.Error:  # redrawn between the two lookups
        return None
    return points, title


def progress(page) -> str:
    bar = page.locator("[data-testid=stProgress]")
    return bar.first.text_content() if bar.count() else ""


def test_the_shipped_race_is_drawn_at_once(server, runs, shots):  # noqa: F811
    """Before anyone trains, the Playground draws the race shipped in assets/races/: its curves
    (every lane's held-out points to the last step), every lane's head maps and completions,
    within 2 s of the click that opens it in a new session that has browsed a page with charts
    (plotly.js loaded); the server's very first visit, which imports the page's modules and
    loads plotly.js in the browser, is timed too, and bounded loosely."""
    import json
    from pathlib import Path

    shipped = Path(__file__).resolve().parents[1] / "assets/races/fmnist14-dense-strided-fixed"
    record = json.loads((shipped / "race.json").read_text())
    want = {n: r["step"] for n, r in record["layouts"].items()}
    with playwright_api.sync_playwright() as p:
        browser = launch_chromium(p)
        times = {}
        # the server's first visit (it imports the page's modules) in a browser that has not
        # loaded plotly.js yet; then a new session that has browsed a page with charts first
        for visit, before in (("first visit", None), ("after the Training page", "Training")):
            context = browser.new_context(viewport={"width": 1500, "height": 1100})
            pg = context.new_page()
            pg.set_default_timeout(90_000)
            pg.goto(server)
            settle(pg)
            if before:
                open_page(pg, before)
                chart(pg, "trn_grid").locator(".gtitle").first.wait_for()
                settle(pg)
            link = pg.get_by_role("link", name="Playground").first
            link.wait_for()
            start = time.monotonic()
            link.dispatch_event("click")  # the click itself: no wait for anything after it
            last = {}
            while time.monotonic() - start < 30 and last != want:
                last = shipped_drawn(pg) or last
                pg.wait_for_timeout(20)
            times[visit] = round(time.monotonic() - start, 2)
            no_exception(pg)
            assert last == want, last
            assert pg.get_by_text("finished race shipped with the project").count() == 1
            shoot(pg, shots / f"playground_shipped_{'warm' if before else 'first'}.png")
            context.close()
        browser.close()
    print(f"shipped race drawn, seconds after the click: {times}")
    # the goal (<= 2 s warm) is a benchmark on a machine at rest: BENCH_GOALS=1 asserts it;
    # otherwise both visits must only be drawn (within the 30 s the loop above waits)
    if os.environ.get("BENCH_GOALS") == "1":
        assert times["after the Training page"] <= 2.0, times
        assert times["first visit"] <= 10.0, times  # imports and plotly.js's first load included
    assert not list(runs.glob("*"))  # showing it wrote nothing


def shipped_drawn(page) -> dict | None:
    """The last held-out step of every lane's curve as plotly drew it, once the three head maps
    and the completion images are drawn too; None before."""
    curves = chart(page, "pg_by_step").locator(".js-plotly-plot")
    if not curves.count():
        return None
    for name in ("dense", "strided", "fixed"):
        if not chart(page, f"pg_heads_{name}").locator(".gtitle").count():
            return None
    if page.locator("[data-testid=stImage] img").count() < 4:  # 3 lanes' completions, the probe
        return None
    try:
        return curves.first.evaluate(
            "el => Object.fromEntries((el._fullData || []).filter(t => t.name.endsWith("
            "' held-out') && t.x && t.x.length).map(t => [t.name.split(' ')[0],"
            " Number(t.x[t.x.length - 1])]))"
        )
    except playwright_api.Error:
        return None


def test_a_race_live_then_stopped_then_opened_on_the_training_page(page, runs, shots):  # noqa: F811
    open_page(page, "Playground")
    no_exception(page)
    choose(page, "pg_preset", "fmnist-tiny")
    settle(page)
    keyed(page, "pg_budget").get_by_text("steps", exact=True).click()
    settle(page)
    steps = keyed(page, "pg_steps").locator("input")
    steps.fill("5000")  # far more than the test waits for: it is stopped
    steps.press("Enter")
    settle(page)
    assert page.get_by_text("MB of memory").count() == 1
    assert "shipped race" in progress(page)  # before Train: the shipped race is drawn
    keyed(page, "pg_train").locator("button").click()
    end = time.monotonic() + 60
    while "shipped race" in progress(page) and time.monotonic() < end:
        page.wait_for_timeout(50)  # the live race replaces it

    seen: list[tuple[float, str]] = []
    end = time.monotonic() + 120
    while time.monotonic() < end:
        now = drawn(page)
        if now is not None and now[0] is not None and (not seen or now != seen[-1]):
            seen.append(now)
        titles = {t for _, t in seen}
        counts = {n for n, _ in seen}
        if len(titles) >= 3 and len(counts) >= 3:
            break
        page.wait_for_timeout(250)
    no_exception(page)
    # the first drawing and at least two updates of each: a later step, a later snapshot
    assert len({n for n, _ in seen}) >= 3, seen
    assert len({t for _, t in seen}) >= 3, seen
    assert all(a[0] <= b[0] for a, b in zip(seen, seen[1:], strict=False)), seen
    assert all(t.startswith("dense, step ") for _, t in seen), seen
    assert "training" in progress(page)
    shoot(page, shots / "playground_live.png")

    keyed(page, "pg_stop").locator("button").click()
    page.get_by_text("Saved:").first.wait_for(timeout=90_000)
    settle(page)
    no_exception(page)
    assert "stopped" in progress(page)
    races = list(runs.glob("playground-*"))
    assert len(races) == 1
    for name in ("dense", "strided", "fixed"):
        assert (races[0] / name / "model.safetensors").is_file()
        assert (races[0] / name / "timeline.npz").is_file()
    stopped_at = int(progress(page).split("step ")[1].split()[0])
    assert stopped_at < 5000

    keyed(page, "pg_open_dense").locator("button").click()
    settle(page)
    page.get_by_role("heading", name="Training", exact=False).first.wait_for()
    no_exception(page)
    folder = keyed(page, "trn_folder").evaluate(  # the chosen option, however it is drawn
        "el => [el.innerText, ...[...el.querySelectorAll('input')].map(i => i.value),"
        " ...[...el.querySelectorAll('[title]')].map(e => e.title)].join(' | ')"
    )
    assert f"{races[0].name}/dense" in folder, folder
    grid = chart(page, "trn_grid").locator(".gtitle").first
    grid.wait_for()
    # the Training page's newest snapshot is the race's last one: saved when it stopped
    step = int(grid.text_content().split("step ")[1].split(":")[0])
    assert 0 < step <= stopped_at, (step, stopped_at)
    shoot(page, shots / "playground_training.png")
