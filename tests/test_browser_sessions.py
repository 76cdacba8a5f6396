"""Several people at once: 7 isolated browser contexts against ONE `streamlit run` server.

Two complete with different seeds, one uploads its own image, completes and presses Stop, two
browse Attention (one with its own upload), one uploads bad files, one browses Layouts. Every
action is started on every page before any is waited for, so the server runs the sessions'
scripts at the same time. Checked: no exception anywhere (pages and server log), no session sees
another's results or upload, and the server's peak memory stays bounded.
"""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from browser_util import (
    keyed,
    launch_chromium,
    no_exception,
    open_page,
    pick,
    require_browser,
    settle,
    streamlit_server,
    upload,
)
from PIL import Image
from test_app import tiny_models

playwright_api = require_browser()

PEAK_RSS_LIMIT_MB = 3000  # generous: the server measures well under 1 GB here


def png(seed: int, size: tuple[int, int] = (30, 40)) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def set_slider(page, key: str, press: str) -> None:
    """Move the slider ``key`` to its minimum ("Home") or maximum ("End") from the keyboard."""
    keyed(page, key).get_by_role("slider").focus()
    page.keyboard.press(press)


def set_number(page, key: str, value: int) -> None:
    field = keyed(page, key).locator("input")
    field.fill(str(value))
    field.press("Enter")


def log_tail(server) -> str:
    return server.log.read_text(errors="replace")[-4000:]


def body(page) -> str:
    return page.locator("[data-testid=stMain]").inner_text()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    models = tiny_models(tmp_path_factory.mktemp("models"))
    with streamlit_server(env={"SPARSE_EXPLORER_MODELS": str(models)}) as running:
        yield running


def test_seven_sessions_on_one_server(server, record_property):
    with playwright_api.sync_playwright() as p:
        browser = launch_chromium(p)
        pages = []
        for _ in range(7):
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            page = context.new_page()
            page.set_default_timeout(120_000)
            page.goto(server.url)
            pages.append(page)
        seed1, seed2, stopper, attention, uploader, bad, layouts = pages
        for page in pages:
            settle(page)

        # step 1: open the pages, all sessions at once
        for page in (seed1, seed2, stopper):
            page.get_by_role("link", name="Complete").first.click()
        for page in (attention, uploader, bad):
            page.get_by_role("link", name="Attention").first.click()
        layouts.get_by_text("side by side").click()
        for page in pages:
            settle(page)
            no_exception(page)

        # step 2: settings (seeds, uploads, a long completion for the one that will stop)
        set_number(seed1, "cmp_seed", 1)
        set_number(seed2, "cmp_seed", 2)
        for page, key in ((stopper, "cmp_source"), (uploader, "att_source"), (bad, "att_source")):
            keyed(page, key).get_by_text("upload", exact=True).click()
        for page in pages:
            settle(page)
        upload(stopper, "cmp_upload", "stopper_secret.png", png(1))
        upload(uploader, "att_upload", "attention_secret.png", png(2))
        upload(bad, "att_upload", "noise.png", np.random.default_rng(3).bytes(4000))
        for page in pages:
            settle(page)
        set_slider(stopper, "cmp_rows", "Home")
        settle(stopper)
        set_slider(stopper, "cmp_samples", "End")
        settle(stopper)

        # step 3: work in every session at once
        for page in (seed1, seed2, stopper):
            keyed(page, "cmp_run").get_by_role("button").click()
        keyed(stopper, "cmp_stop").get_by_role("button").click()  # as soon as it shows
        for page in (attention, uploader):
            pick(page, "att_layer", "1")
        upload(bad, "att_upload", "empty.png", b"")
        keyed(layouts, "lay_mode").get_by_text("fixed", exact=True).click()
        for page in pages:
            settle(page)
            assert page.locator("[data-testid=stException]").count() == 0, log_tail(server)

        # each session's own results
        text = [body(page) for page in pages]
        assert "4 samples, seed 1" in text[0] and "seed 2" not in text[0]
        assert "seed 2" in text[1] and "seed 1" not in text[1]
        results = [
            seed1.locator("[data-testid=stImage] img").last.get_attribute("src"),
            seed2.locator("[data-testid=stImage] img").last.get_attribute("src"),
        ]
        assert results[0] != results[1]  # different seeds, different samples
        assert "cancelled" in text[2] and "Where the model looked" not in text[2]
        for page in (attention, uploader):
            titles = page.locator(".gtitle").all_text_contents()  # plotly's SVG titles
            assert any(t.startswith("layer 1, head 0: where pixel") for t in titles), titles
        assert "empty.png cannot be used: empty file (0 bytes)" in text[5], text[5]
        assert layouts.locator("[data-testid=stPlotlyChart]").count() == 2
        for i, t in enumerate(text):
            assert ("stopper_secret.png" in t) == (i == 2), i
            assert ("attention_secret.png" in t) == (i == 4), i

        # a new upload after the cancelled completion: nothing stale, then the new image is used
        upload(stopper, "cmp_upload", "second.png", png(4))
        settle(stopper)
        t = body(stopper)
        assert "cancelled" not in t and "Press Complete to sample." in t
        open_page(seed1, "Layouts")
        no_exception(seed1)
        browser.close()

    assert "Traceback" not in server.log.read_text(errors="replace"), log_tail(server)
    peak = server.peak_rss_mb()
    record_property("server_peak_rss_mb", round(peak))
    print(f"7 browser sessions: server peak RSS {peak:.0f} MB")
    assert peak < PEAK_RSS_LIMIT_MB


NASTY = "**BOLD** [link](http://127.0.0.1:9/x) ![i](http://127.0.0.1:9/img.png).png"


def test_a_file_name_is_shown_as_text_never_as_markup(server):
    """An upload named like Markdown: refused (not an image) and accepted (a light picture),
    its name is shown as typed: no <strong>, <a> or <img> made of it, and the browser never
    asks 127.0.0.1:9 for anything."""
    with playwright_api.sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(120_000)
        asked = []
        page.on("request", lambda request: asked.append(request.url))
        page.goto(server.url)
        settle(page)
        open_page(page, "Attention")
        keyed(page, "att_source").get_by_text("upload", exact=True).click()
        settle(page)
        light = io.BytesIO()
        Image.new("L", (28, 28), 230).save(light, format="PNG")
        for data in (b"not an image", light.getvalue()):
            upload(page, "att_upload", NASTY, data)
            settle(page)
            no_exception(page)
            main = page.locator("[data-testid=stMain]")
            shown = main.inner_text().replace("\u2060", "")  # the invisible word joiner
            assert "**BOLD** [link](http://127.0.0.1:9/x)" in shown
            assert main.locator("strong", has_text="BOLD").count() == 0
            assert main.locator("a[href*='127.0.0.1:9']").count() == 0
            assert main.locator("img[src*='127.0.0.1:9']").count() == 0
        page.wait_for_timeout(500)
        browser.close()
    assert not [u for u in asked if "127.0.0.1:9/" in u], asked


def test_closing_the_tab_cancels_its_completion(server):
    """A long completion, then the tab is closed: the server notices the session is gone and
    cancels the completion (its log says so) instead of sampling on for nobody."""
    with playwright_api.sync_playwright() as p:
        browser = launch_chromium(p)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        page.set_default_timeout(120_000)
        page.goto(server.url)
        settle(page)
        open_page(page, "Complete")
        set_slider(page, "cmp_rows", "Home")
        settle(page)
        set_slider(page, "cmp_samples", "End")
        settle(page)
        before = server.log.read_text(errors="replace").count("cancelled: the session ended")
        keyed(page, "cmp_run").get_by_role("button").click()
        keyed(page, "cmp_stop").get_by_role("button").wait_for()  # sampling has started
        context.close()  # the tab goes
        browser.close()
    for _ in range(100):
        log = server.log.read_text(errors="replace")
        if log.count("cancelled: the session ended") > before:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the completion went on after its tab closed:\n" + log_tail(server))


def test_a_long_export_shows_progress_and_cancel_stops_it(server):
    """Attention, every layer x head, at 600 dpi: an estimate before it starts, a progress bar
    while it runs, and Cancel ends it before its last file (the server log says so)."""
    with playwright_api.sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(120_000)
        page.goto(server.url)
        settle(page)
        open_page(page, "Attention")
        keyed(page, "att_batch").get_by_role("button").click()
        settle(page)
        page.get_by_text("Export the whole batch").click()
        assert page.get_by_text("This export:").last.is_visible()
        set_slider(page, "att_batch_export_dpi", "End")  # 600 dpi: seconds per PNG
        settle(page)
        keyed(page, "att_batch_export_prepare").get_by_role("button").click()
        page.locator("[data-testid=stProgress]").first.wait_for()
        keyed(page, "att_batch_export_cancel").get_by_role("button").click()
        page.get_by_text("The export was cancelled").wait_for()
        settle(page)
        no_exception(page)
        assert page.get_by_text("files (zip)").count() == 0
        browser.close()
    assert "task 'export att_batch_export' cancelled: cancelled" in server.log.read_text(
        errors="replace"
    )
