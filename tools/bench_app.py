"""Benchmark the app as a person feels it: end to end in headless Chromium, click to drawn.

    .venv/bin/python tools/bench_app.py [--repeats 12] [--servers 10] [--learned 3]

Every time runs from the input (a click, a pick, a page opened) until the script has finished
its run and the view shows the new state (the chart's title names the new pixel, layer or
head), on `streamlit run` with the shipped models; each line gives the median and the range.

1. First page: `streamlit run` to the Layouts page fully drawn (median of --servers fresh
   servers).
2. Attention first open: the menu click to the page's charts drawn, on a fresh server (caches
   cold, torch not yet imported): median of --servers.
3. On the Attention page (one server, caches warm as a person's session gets them): click a
   pixel (a new query: a new capture), switch layer, switch head; --repeats each.
4. Learned vs prescribed on 8 test images, cold (a fresh server: the capture and the metrics
   computed) and warm (the same server, the page opened again: cached); --learned servers.
5. The server's share of 3. (AppTest reruns, no browser): what the script costs, the rest is
   the transfer and the drawing in the browser.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from browser_util import free_port, launch_chromium, streamlit_command  # noqa: E402

from tools.cli import Parser, int_range, run_main  # noqa: E402

IDLE = "[data-testid=stApp][data-test-script-state=notRunning]"
VIEWPORT = {"width": 1500, "height": 1100}


@contextlib.contextmanager
def server() -> Iterator[tuple[str, float]]:
    """A fresh `streamlit run` on a free port: (url, the time it was started)."""
    port = free_port()
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        streamlit_command(port), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        yield f"http://127.0.0.1:{port}", t0
    finally:
        proc.terminate()
        proc.wait()


def goto_when_up(page, url: str) -> None:
    while True:
        try:
            page.goto(url, timeout=2000)
            return
        except Exception:  # noqa: BLE001 - the server is not listening yet
            time.sleep(0.1)


def drawn(page, key: str, text: str = "", timeout: float = 120_000) -> None:
    """Wait until the script is idle and the chart ``key`` is drawn with ``text`` in its title,
    then for two animation frames (the browser has painted)."""
    page.wait_for_function(
        """([sel, text]) => {
            const app = document.querySelector('[data-testid=stApp]');
            if (!app || app.getAttribute('data-test-script-state') !== 'notRunning') return false;
            const t = document.querySelector(sel + ' .gtitle');
            return !!t && t.textContent.includes(text);
        }""",
        arg=[f".st-key-{key} [data-testid=stPlotlyChart]", text],
        polling="raf",
        timeout=timeout,
    )
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")


def open_menu(page, title: str) -> None:
    page.get_by_role("link", name=title).first.click()


def first_page_seconds(browser) -> float:
    page = browser.new_page(viewport=VIEWPORT)
    with server() as (url, t0):
        goto_when_up(page, url)
        drawn(page, "lay_pixels_strided", "keys of pixel")
        took = time.perf_counter() - t0
    page.close()
    return took


def attention_first_open_seconds(browser) -> float:
    page = browser.new_page(viewport=VIEWPORT)
    with server() as (url, _):
        goto_when_up(page, url)
        drawn(page, "lay_pixels_strided", "keys of pixel")
        t = time.perf_counter()
        open_menu(page, "Attention")
        drawn(page, "att_pixels", "where pixel")
        drawn(page, "att_map", "N x N")
        took = time.perf_counter() - t
    page.close()
    return took


def pixel_center(page, key: str, row: int, col: int, size: int = 28) -> tuple[float, float]:
    box = page.locator(f".st-key-{key} .nsewdrag").first.bounding_box()
    return (
        box["x"] + (col + 0.5) / size * box["width"],
        box["y"] + (row + 0.5) / size * box["height"],
    )


def choose(page, key: str, option: str) -> None:
    page.locator(f".st-key-{key}").click()
    page.get_by_role("option", name=option, exact=True).click()


def attention_interactions(browser, repeats: int) -> dict[str, list[float]]:
    page = browser.new_page(viewport=VIEWPORT)
    out: dict[str, list[float]] = {"click a pixel": [], "switch layer": [], "switch head": []}
    with server() as (url, _):
        goto_when_up(page, url)
        drawn(page, "lay_pixels_strided", "keys of pixel")
        open_menu(page, "Attention")
        drawn(page, "att_pixels", "where pixel")
        ticks = page.locator(".st-key-att_grid .ytick text").all_text_contents()
        n_layer = sum(t.startswith("layer") for t in ticks) or 8
        for k in range(repeats + 2):  # the first two rounds warm the browser and the caches
            page.locator(".st-key-att_pixels").scroll_into_view_if_needed()
            row, col = 4 + k % 20, 3 + (7 * k) % 22
            x, y = pixel_center(page, "att_pixels", row, col)
            layer, head = (k + 1) % n_layer, (k + 1) % 4
            t = time.perf_counter()
            page.mouse.click(x, y)
            drawn(page, "att_pixels", f"where pixel ({row}, {col})")
            clicked = time.perf_counter() - t
            t = time.perf_counter()
            choose(page, "att_layer", str(layer))
            drawn(page, "att_pixels", f"layer {layer}, head")
            switched_layer = time.perf_counter() - t
            t = time.perf_counter()
            choose(page, "att_head", str(head))
            drawn(page, "att_pixels", f"layer {layer}, head {head}:")
            switched_head = time.perf_counter() - t
            if k >= 2:
                out["click a pixel"].append(clicked)
                out["switch layer"].append(switched_layer)
                out["switch head"].append(switched_head)
    page.close()
    return out


def learned_seconds(browser) -> tuple[float, float]:
    """Learned vs prescribed on 8 test images: cold (fresh server) and warm (opened again)."""
    page = browser.new_page(viewport=VIEWPORT)
    times = []
    with server() as (url, _):
        goto_when_up(page, url)
        drawn(page, "lay_pixels_strided", "keys of pixel")
        for _ in range(2):
            open_menu(page, "Learned vs prescribed")
            drawn(page, "lvp_cov_strided", "coverage by")
            page.locator(".st-key-lvp_over").get_by_text("many test images").click()
            t = time.perf_counter()
            page.wait_for_timeout(50)
            drawn(page, "lvp_cov_fixed", "coverage by", timeout=600_000)
            times.append(time.perf_counter() - t)
            open_menu(page, "Layouts")
            drawn(page, "lay_pixels_strided", "keys of pixel")
            page.locator(".st-key-lay_mode").get_by_text("strided", exact=True).click()
            # back to one image for the second round: the page keeps its settings
            open_menu(page, "Learned vs prescribed")
            drawn(page, "lvp_cov_strided", "coverage by", timeout=600_000)
            page.locator(".st-key-lvp_over").get_by_text("one image").click()
            drawn(page, "lvp_cov_strided", "coverage by", timeout=600_000)
    page.close()
    return times[0], times[1]


def server_ms(repeats: int) -> dict[str, list[float]]:
    """Server time of the same interactions: AppTest reruns (no browser), caches warm."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.switch_page("app_pages/attention.py").run()
    out: dict[str, list[float]] = {"click a pixel": [], "switch layer": [], "switch head": []}
    n_layer = len(at.selectbox(key="att_layer").options)
    n_head = len(at.selectbox(key="att_head").options)
    for k in range(repeats + 2):
        for name, key, value in (
            ("click a pixel", "att_row", 4 + k % 20),  # a new query row: a new capture
            ("switch layer", "att_layer", (k + 1) % n_layer),
            ("switch head", "att_head", (k + 1) % n_head),
        ):
            widget = at.number_input(key=key) if key == "att_row" else at.selectbox(key=key)
            widget.set_value(value)
            t = time.perf_counter()
            at.run()
            if k >= 2:
                out[name].append(time.perf_counter() - t)
            assert not at.exception, at.exception
    return out


def line(name: str, seconds: list[float], goal: str, unit: str = "ms") -> str:
    scale = 1000 if unit == "ms" else 1
    med = statistics.median(seconds) * scale
    lo, hi = min(seconds) * scale, max(seconds) * scale
    digits = 0 if unit == "ms" else 2
    return (
        f"| {name} (median of {len(seconds)}; range) | {med:.{digits}f} {unit} "
        f"({lo:.{digits}f}-{hi:.{digits}f}) | {goal} |"
    )


def main(argv: list[str] | None = None) -> int:
    """The command line: bad input is one ``error:`` line and exit status 2 (tools/cli.py)."""
    return run_main(_main, argv)


def _main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python tools/bench_app.py", description=__doc__)
    parser.add_argument("--repeats", type=int_range(1, 1000), default=12)
    parser.add_argument("--servers", type=int_range(0, 100), default=10)
    parser.add_argument("--learned", type=int_range(0, 100), default=3)
    args = parser.parse_args(argv)
    return measure(args)


def measure(args: argparse.Namespace) -> int:
    """Run the measurements (a browser, servers) and print the table."""
    from playwright.sync_api import sync_playwright

    load = os.getloadavg()[0]
    print(
        f"# app responsiveness, {date.today()}, {os.cpu_count()} CPUs (load {load:.1f} at "
        "start), shipped models, CPU, headless Chromium, end to end (click to drawn)\n"
    )
    print("| measurement | result | goal |")
    print("|---|---|---|")
    with sync_playwright() as p:
        browser = launch_chromium(p)
        if args.servers:  # 0: skip the fresh-server measurements
            firsts = [first_page_seconds(browser) for _ in range(args.servers)]
            print(line("first page drawn after `streamlit run`", firsts, "<= 5 s", "s"))
            opens = [attention_first_open_seconds(browser) for _ in range(args.servers)]
            print(line("Attention page, first open", opens, "<= 2 s", "s"), flush=True)
        for name, times in attention_interactions(browser, args.repeats).items():
            print(line(f"Attention: {name}", times, "<= 400 ms"), flush=True)
        learned = [learned_seconds(browser) for _ in range(args.learned)] or [(0.0, 0.0)]
        print(
            line("Learned vs prescribed, 8 images, cold", [c for c, _ in learned], "<= 10 s", "s")
        )
        print(
            line("Learned vs prescribed, 8 images, cached", [w for _, w in learned], "<= 10 s", "s")
        )
        browser.close()
    for name, times in server_ms(args.repeats).items():
        print(line(f"Attention: {name}, server time only (AppTest)", times, "(part of the above)"))
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
