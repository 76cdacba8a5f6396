"""Benchmark the app as a person feels it: end to end in headless Chromium, click to drawn.

    .venv/bin/python tools/bench_app.py [--repeats 12] [--servers 10] [--learned 3]
    .venv/bin/python tools/bench_app.py --parts attention,who,predictions --repeats 8

Every time runs from the input (a click, a pick, a page opened) until the script has finished
its run and the view shows the new state (the chart's title names the new pixel, layer, head or
step), on the app's server (app_pages/serve.py, as scripts/app.sh starts it) with the shipped
models; each line gives the median and the range.
--parts picks what is measured (default: all of them):

- first: the server's start to the Layouts page fully drawn, and the Attention page's first open
  (the menu click to its charts drawn, caches cold, torch not yet imported), each on --servers
  fresh servers.
- attention: on the Attention page (one server, caches warm as a person's session gets them):
  click a pixel (a new query: a new capture), switch layer, switch head, click a tile of the
  all-heads grid (its layer and head), click a row of the N x N map (a new query); --repeats
  each.
- who: "Who looks here": click a pixel of the key view (a new key pixel); --repeats.
- predictions: Predictions: click a pixel of the bits map (a new pixel: its
  predicted distributions); --repeats.
- training: the Training page's step slider moved one step, on a run with a timeline shipped
  under assets/runs or assets/models (skipped, and said so, when there is none); --repeats.
- speed: Models & speed, Benchmarks tab: the Measure choice (forward, forward + backward)
  switched, until the time-against-N chart's title names it; --repeats.
- learned: Learned vs prescribed on 8 test images, cold (a fresh server: the capture and the
  metrics computed) and warm (the same server, the page opened again: cached); --learned
  servers.
- server: the server's share of the attention, who and predictions clicks (AppTest reruns with
  the state the click sets, no browser): what the script costs, the rest is the transfer and
  the drawing in the browser.
- profile: where an Attention click's time goes (a head switch, a fragment's rerun; a pixel
  click, the whole page's): the server's script split into figure building, serialisation and
  the rest (AppTest, the functions timed), the bytes a rerun sends (the browser's
  WebSocket), and the browser's CPU time by what spends it (plotly.js, React and Streamlit's
  other code, style/layout/paint, garbage collection; Chrome's profiler).

The attention, who, predictions and training parts share one server; the first two rounds of
each warm the browser and the caches and are not counted. Bad arguments are one ``error:``
line and exit status 2, before any browser or server starts (tools/cli.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tools.browser import (  # noqa: E402
    choose,
    click_menu,
    free_port,
    launch_chromium,
    streamlit_command,
)
from tools.cli import Parser, int_range, run_main  # noqa: E402

IDLE = "[data-testid=stApp][data-test-script-state=notRunning]"
VIEWPORT = {"width": 1500, "height": 1100}
MODELS = ROOT / "assets" / "models"
SHIPPED_RUNS = ROOT / "assets" / "runs"  # as app_pages/training.py lists them
PARTS = (
    "first",
    "attention",
    "who",
    "predictions",
    "training",
    "speed",
    "learned",
    "server",
    "profile",
)
SIZE = 28  # the shipped models' images: 28 x 28


@contextlib.contextmanager
def server(root: Path = ROOT) -> Iterator[tuple[str, float]]:
    """A fresh server of ``root``'s app (tools.browser.streamlit_command) on a free port:
    (url, the time it was started)."""
    port = free_port()
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        streamlit_command(port, root),
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
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


def wait_until_up(url: str) -> None:
    """Until the server answers its health check (it listens, its first page can be asked)."""
    while True:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                return
        except OSError:
            time.sleep(0.05)


def no_skeletons(page) -> None:
    """Until no element of the page is a grey skeleton (a chart whose code is still loading)."""
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=stSkeleton]')", polling="raf"
    )


def first_page_seconds(browser, root: Path = ROOT) -> tuple[float, float]:
    """The Layouts page fully drawn (its chart titled, no skeleton left): seconds after
    the server's start and after the browser's request (the server listening)."""
    page = browser.new_page(viewport=VIEWPORT)
    with server(root) as (url, t0):
        wait_until_up(url)
        asked = time.perf_counter()
        page.goto(url)
        drawn(page, "lay_pixels_strided", "keys of pixel")
        no_skeletons(page)
        now = time.perf_counter()
    page.close()
    return now - t0, now - asked


def attention_first_open_seconds(browser, root: Path = ROOT) -> float:
    page = browser.new_page(viewport=VIEWPORT)
    with server(root) as (url, _):
        goto_when_up(page, url)
        drawn(page, "lay_pixels_strided", "keys of pixel")
        t = time.perf_counter()
        click_menu(page, "Attention")
        drawn(page, "att_pixels", "where pixel")
        drawn(page, "att_map", "N x N")
        took = time.perf_counter() - t
    page.close()
    return took


def pixel_center(page, key: str, row: float, col: float, size: int = SIZE) -> tuple[float, float]:
    box = page.locator(f".st-key-{key} .nsewdrag").first.bounding_box()
    return (
        box["x"] + (col + 0.5) / size * box["width"],
        box["y"] + (row + 0.5) / size * box["height"],
    )


def data_point(page, key: str, x: float, y: float) -> tuple[float, float]:
    """Where data point (x, y) of the chart ``key`` is on the screen (either axis reversed)."""
    plot = page.locator(f".st-key-{key} .js-plotly-plot").first
    (x0, x1), (y0, y1) = plot.evaluate(
        "el => [el._fullLayout.xaxis.range, el._fullLayout.yaxis.range]"
    )
    box = page.locator(f".st-key-{key} .nsewdrag").first.bounding_box()
    return (
        box["x"] + (x - x0) / (x1 - x0) * box["width"],
        box["y"] + (1 - (y - y0) / (y1 - y0)) * box["height"],
    )


def pick(page, key: str, option: str) -> float:
    """Press ``option`` of the segmented control ``key`` (the Attention page's layer and head),
    the pointer resting on it first as a person's would: the seconds the press started at."""
    button = page.locator(f".st-key-{key}").get_by_role("radio", name=option, exact=True)
    button.scroll_into_view_if_needed()
    button.hover()
    page.wait_for_timeout(150)
    t = time.perf_counter()
    button.click()
    return t


def hover_then_click(page, x: float, y: float) -> float:
    """Rest the pointer on (x, y) (a person's cursor is on the target before the click), then
    click: the seconds the click started at."""
    page.mouse.move(x - 2, y - 2)
    page.mouse.move(x, y, steps=3)
    page.wait_for_timeout(150)  # plotly's hover is throttled: the target is hovered
    t = time.perf_counter()
    page.mouse.click(x, y)
    return t


def scroll_to(page, key: str) -> None:
    page.locator(f".st-key-{key}").scroll_into_view_if_needed()


def attention_interactions(page, repeats: int) -> dict[str, list[float]]:
    """The Attention page's interactions, on a page of a running server."""
    out: dict[str, list[float]] = {
        "click a pixel": [],
        "switch layer": [],
        "switch head": [],
        "click a grid tile": [],
        "click a row of the N x N map": [],
    }
    click_menu(page, "Attention")
    drawn(page, "att_pixels", "where pixel")
    drawn(page, "att_map", "N x N")
    ticks = page.locator(".st-key-att_grid .ytick text").all_text_contents()
    n_layer = sum(t.startswith("layer") for t in ticks) or 8
    ticks = page.locator(".st-key-att_grid .xtick text").all_text_contents()
    n_head = sum(t.startswith("head") for t in ticks) or 4
    for k in range(repeats + 2):  # the first two rounds warm the browser and the caches
        times = {}
        scroll_to(page, "att_pixels")
        row, col = 4 + k % 20, 3 + (7 * k) % 22
        x, y = pixel_center(page, "att_pixels", row, col)
        layer, head = (k + 1) % n_layer, (k + 1) % n_head
        t = time.perf_counter()
        page.mouse.click(x, y)
        drawn(page, "att_pixels", f"where pixel ({row}, {col})")
        times["click a pixel"] = time.perf_counter() - t
        t = pick(page, "att_layer", str(layer))
        drawn(page, "att_pixels", f"layer {layer}, head")
        times["switch layer"] = time.perf_counter() - t
        t = pick(page, "att_head", str(head))
        drawn(page, "att_pixels", f"layer {layer}, head {head}:")
        times["switch head"] = time.perf_counter() - t
        # a tile of the all-heads grid (8 x 4 tiles of 28 x 28, one blank cell between): its
        # invisible click target sits at the tile's centre; another layer and another head
        tile_layer, tile_head = (k + 4) % n_layer, (k + 3) % n_head
        scroll_to(page, "att_grid")
        x, y = data_point(
            page,
            "att_grid",
            tile_head * (SIZE + 1) + (SIZE - 1) / 2,
            tile_layer * (SIZE + 1) + (SIZE - 1) / 2,
        )
        t = hover_then_click(page, x, y)
        drawn(page, "att_pixels", f"layer {tile_layer}, head {tile_head}: where pixel ({row},")
        times["click a grid tile"] = time.perf_counter() - t
        # a row of the N x N map (pooled 4 x 4: map row m is queries 4m..4m+3, the click makes
        # query 4m the query pixel): a query not asked before, so a new capture
        token = (4 * (7 + 23 * k)) % (SIZE * SIZE)
        if divmod(token, SIZE) == (row, col):
            token = (token + 4) % (SIZE * SIZE)
        q_row, q_col = divmod(token, SIZE)
        scroll_to(page, "att_map")
        # (from the plot area alone, as a pixel of an N x N image: the same place whether the
        # map's axes count tokens or, pooled, its tiles; at the middle of the map row, tokens
        # token .. token + 3, whose 2 px a pointer a pixel off would miss)
        x, y = pixel_center(page, "att_map", token + 1.5, token // 2, size=SIZE * SIZE)
        t = hover_then_click(page, x, y)
        drawn(page, "att_pixels", f"where pixel ({q_row}, {q_col})")
        times["click a row of the N x N map"] = time.perf_counter() - t
        if k >= 2:
            for name, took in times.items():
                out[name].append(took)
    return out


def pixel_clicks(page, view: str, shown: str, words: str, place, repeats: int) -> list[float]:
    """Seconds from a click on pixel ``place(k)`` (row, col) of chart ``view`` until chart
    ``shown`` names it (``words`` formatted with the row and column), ``repeats`` times after
    two warm-up clicks."""
    times = []
    for k in range(repeats + 2):
        row, col = place(k)
        scroll_to(page, view)
        x, y = pixel_center(page, view, row, col)
        t = hover_then_click(page, x, y)
        drawn(page, shown, words.format(row=row, col=col))
        if k >= 2:
            times.append(time.perf_counter() - t)
    return times


def who_interactions(page, repeats: int) -> dict[str, list[float]]:
    """ "Who looks here": a click on a pixel of the key view makes it the key pixel."""
    click_menu(page, "Who looks here")
    drawn(page, "who_key_view", "who reads")
    place = lambda k: (3 + (5 * k) % 22, 2 + (9 * k) % 24)  # noqa: E731  (never (10, 14))
    times = pixel_clicks(
        page, "who_key_view", "who_key_view", "who reads ({row}, {col})", place, repeats
    )
    return {"click a key pixel": times}


def predictions_interactions(page, repeats: int) -> dict[str, list[float]]:
    """Predictions: a click on a pixel of the bits map shows that pixel's
    predicted distributions (chart prd_dist names the pixel)."""
    # (a link whose name holds "Predictions": older commits' "Predictions & ablation" too)
    click_menu(page, "Predictions")
    drawn(page, "prd_pixels", "bits per pixel")
    drawn(page, "prd_dist", "predicted value of pixel")
    place = lambda k: (2 + (5 * k) % 24, 3 + (11 * k) % 23)  # noqa: E731  (never (8, 12))
    words = "predicted value of pixel ({row}, {col})"
    return {"click a pixel": pixel_clicks(page, "prd_pixels", "prd_dist", words, place, repeats)}


def shipped_timeline() -> str | None:
    """A run folder with a timeline shipped under assets/runs or assets/models, relative to
    the project, or None."""
    found = [
        *sorted(SHIPPED_RUNS.glob("*/timeline.npz")),
        *sorted({*MODELS.glob("*/timeline.npz"), *MODELS.glob("*/*/timeline.npz")}),
    ]
    return str(found[0].parent.relative_to(ROOT)) if found else None


def training_interactions(
    page, repeats: int, folder: str, root: Path = ROOT
) -> dict[str, list[float]]:
    """The Training page's step slider moved one step (keyboard on its thumb), on ``folder``
    (a run with a timeline); chart trn_grid's title names the step."""
    out: dict[str, list[float]] = {"move the step slider": []}
    steps = json.loads((root / folder / "timeline.json").read_text())["steps"]
    click_menu(page, "Training")
    page.wait_for_selector(".st-key-trn_folder")
    page.wait_for_selector(IDLE)
    current = page.locator(".st-key-trn_folder").inner_text()
    if folder not in current:
        choose(page, "trn_folder", folder)
    drawn(page, "trn_grid", f"step {steps[-1]}:")
    index, direction = len(steps) - 1, -1
    thumb = page.locator(".st-key-trn_step input[type=range]").first
    for k in range(repeats + 2):
        if not 0 <= index + direction < len(steps):
            direction = -direction
        index += direction
        scroll_to(page, "trn_step")
        thumb.focus()
        t = time.perf_counter()
        thumb.press("ArrowLeft" if direction < 0 else "ArrowRight")
        drawn(page, "trn_grid", f"step {steps[index]}:")
        if k >= 2:
            out["move the step slider"].append(time.perf_counter() - t)
    return out


def speed_interactions(page, repeats: int) -> dict[str, list[float]]:
    """Models & speed, Benchmarks tab: the Measure radio switched between forward and
    forward + backward; chart speed_chart's title names the measure."""
    out: dict[str, list[float]] = {"switch the measure": []}
    click_menu(page, "Models & speed")
    page.get_by_role("tab", name="Benchmarks").click()
    drawn(page, "speed_chart", "forward:")
    for k in range(repeats + 2):
        label = ("forward + backward", "forward")[k % 2]
        scroll_to(page, "speed_metric")
        option = page.locator(".st-key-speed_metric").get_by_text(label, exact=True)
        option.hover()
        page.wait_for_timeout(150)
        t = time.perf_counter()
        option.click()
        drawn(page, "speed_chart", f"{label}:")
        if k >= 2:
            out["switch the measure"].append(time.perf_counter() - t)
    return out


def page_interactions(
    browser, parts: set[str], repeats: int, timeline: str | None = None, root: Path = ROOT
) -> list[tuple[str, list[float]]]:
    """The interactive parts asked for, on one server of ``root``'s app: [(what, seconds)];
    the Training part on the run folder ``timeline`` (default: one shipped,
    shipped_timeline)."""
    results: list[tuple[str, list[float]]] = []
    page = browser.new_page(viewport=VIEWPORT)
    with server(root) as (url, _):
        goto_when_up(page, url)
        drawn(page, "lay_pixels_strided", "keys of pixel")
        if "attention" in parts:
            for name, times in attention_interactions(page, repeats).items():
                results.append((f"Attention: {name}", times))
        if "who" in parts:
            for name, times in who_interactions(page, repeats).items():
                results.append((f"Who looks here: {name}", times))
        if "predictions" in parts:
            for name, times in predictions_interactions(page, repeats).items():
                results.append((f"Predictions: {name}", times))
        if "training" in parts and (folder := timeline or shipped_timeline()) is not None:
            for name, times in training_interactions(page, repeats, folder, root).items():
                results.append((f"Training ({folder}): {name}", times))
        if "speed" in parts:
            for name, times in speed_interactions(page, repeats).items():
                results.append((f"Models & speed: {name}", times))
    page.close()
    return results


def learned_seconds(browser, root: Path = ROOT) -> tuple[float, float]:
    """Learned vs prescribed on 8 test images: cold (fresh server) and warm (opened again)."""
    page = browser.new_page(viewport=VIEWPORT)
    times = []
    with server(root) as (url, _):
        goto_when_up(page, url)
        drawn(page, "lay_pixels_strided", "keys of pixel")
        for _ in range(2):
            click_menu(page, "Learned vs prescribed")
            drawn(page, "lvp_cov_strided", "coverage by")
            page.locator(".st-key-lvp_over").get_by_text("many test images").click()
            t = time.perf_counter()
            page.wait_for_timeout(50)
            drawn(page, "lvp_cov_fixed", "coverage by", timeout=600_000)
            times.append(time.perf_counter() - t)
            click_menu(page, "Layouts")
            drawn(page, "lay_pixels_strided", "keys of pixel")
            page.locator(".st-key-lay_mode").get_by_text("strided", exact=True).click()
            # back to one image for the second round: the page keeps its settings
            click_menu(page, "Learned vs prescribed")
            drawn(page, "lvp_cov_strided", "coverage by", timeout=600_000)
            page.locator(".st-key-lvp_over").get_by_text("one image").click()
            drawn(page, "lvp_cov_strided", "coverage by", timeout=600_000)
    page.close()
    return times[0], times[1]


def server_ms(repeats: int, parts: set[str]) -> list[tuple[str, list[float]]]:
    """Server time of the same interactions: AppTest reruns with the state each click sets (no
    browser), caches warm."""
    from streamlit.testing.v1 import AppTest

    results: list[tuple[str, list[float]]] = []

    def rounds(page: str, label: str, steps) -> None:
        """``steps(k)``: [(name, [(widget kind, key, value)])] of round k, each one rerun."""
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
        # run once first: before a first run AppTest knows a page by its file name only, and the
        # pages' addresses are their names (app.py's url_path)
        at.run()
        at.switch_page(page).run()
        assert not at.exception, at.exception
        out: dict[str, list[float]] = {}
        # the widget kinds a step sets: n a number input, s a select box, b a segmented control
        # (looked up in the element tree of the latest run: AppTest rebuilds it at every run)
        kinds = {"n": "number_input", "s": "selectbox", "b": "button_group"}
        for k in range(repeats + 2):
            for name, changes in steps(at, k):
                for kind, key, value in changes:
                    getattr(at, kinds[kind])(key=key).set_value(value)
                t = time.perf_counter()
                at.run()
                if k >= 2:
                    out.setdefault(name, []).append(time.perf_counter() - t)
                assert not at.exception, at.exception
        results.extend(
            (f"{label}: {name}, server time only (AppTest)", v) for name, v in out.items()
        )

    def attention(at, k):
        n_layer = len(at.button_group(key="att_layer").options)
        n_head = len(at.button_group(key="att_head").options)
        token = (4 * (7 + 23 * k)) % (SIZE * SIZE)
        return [
            ("click a pixel", [("n", "att_row", 4 + k % 20)]),  # a new query: a new capture
            ("switch layer", [("b", "att_layer", (k + 1) % n_layer)]),
            ("switch head", [("b", "att_head", (k + 1) % n_head)]),
            (
                "click a grid tile",
                [("b", "att_layer", (k + 4) % n_layer), ("b", "att_head", (k + 3) % n_head)],
            ),
            (
                "click a row of the N x N map",
                [("n", "att_row", token // SIZE), ("n", "att_col", token % SIZE)],
            ),
        ]

    if "attention" in parts:
        rounds("app_pages/attention.py", "Attention", attention)
    if "who" in parts:
        rounds(
            "app_pages/who_looks_here.py",
            "Who looks here",
            lambda at, k: [
                (
                    "click a key pixel",
                    [("n", "who_krow", 3 + (5 * k) % 22), ("n", "who_kcol", 2 + (9 * k) % 24)],
                )
            ],
        )
    if "predictions" in parts:
        rounds(
            "app_pages/predictions.py",
            "Predictions",
            lambda at, k: [
                (
                    "click a pixel",
                    [("n", "prd_row", 2 + (5 * k) % 24), ("n", "prd_col", 3 + (11 * k) % 23)],
                )
            ],
        )
    return results


def summary(seconds: list[float], unit: str) -> str:
    """The median and the range: "326 ms (279-381)" or "2.41 s (2.30-2.62)"."""
    scale, digits = (1000, 0) if unit == "ms" else (1, 2)
    med = statistics.median(seconds) * scale
    lo, hi = min(seconds) * scale, max(seconds) * scale
    return f"{med:.{digits}f} {unit} ({lo:.{digits}f}-{hi:.{digits}f})"


# the browser side of a click: the WebSocket's messages counted before the page's own code runs
COUNT_MESSAGES = """
window.__messages = [];
const Native = window.WebSocket;
window.WebSocket = function (...args) {
  const ws = new Native(...args);
  ws.addEventListener('message', e => {
    window.__messages.push(e.data.byteLength || e.data.size || 0);
  });
  return ws;
};
window.WebSocket.prototype = Native.prototype;
Object.assign(window.WebSocket, Native);
"""


def cpu_by_owner(profile: dict) -> dict[str, float]:
    """A Chrome CPU profile's time (ms) by who spends it: plotly.js, React and the rest of
    Streamlit's code, the browser's own work outside script (style, layout, paint: V8's
    "(program)"), garbage collection, idle."""
    nodes = {n["id"]: n for n in profile["nodes"]}
    parent = {c: n["id"] for n in profile["nodes"] for c in n.get("children", [])}
    out: dict[str, float] = {}
    for sample, delta in zip(profile["samples"], profile["timeDeltas"], strict=True):
        name, node, url = nodes[sample]["callFrame"]["functionName"], sample, ""
        while node is not None and not url:  # the nearest frame with a script
            url = nodes[node]["callFrame"]["url"]
            node = parent.get(node)
        if name in ("(idle)", "(program)", "(garbage collector)"):
            owner = {"(idle)": "idle", "(program)": "style, layout, paint (outside script)"}.get(
                name, "garbage collection"
            )
        elif "PlotlyChart" in url:
            owner = "plotly.js"
        else:
            owner = "React and Streamlit's other code"
        out[owner] = out.get(owner, 0.0) + delta / 1000
    return out


def browser_profile(browser, repeats: int) -> list[tuple[str, dict[str, float]]]:
    """Head switches and pixel clicks on the Attention page under Chrome's profiler: per
    interaction, the median time, the bytes received and the CPU time by owner (ms each)."""
    page = browser.new_page(viewport=VIEWPORT)
    page.add_init_script(COUNT_MESSAGES)
    out = []
    with server() as (url, _):
        goto_when_up(page, url)
        drawn(page, "lay_pixels_strided", "keys of pixel")
        click_menu(page, "Attention")
        drawn(page, "att_pixels", "where pixel")
        drawn(page, "att_map", "N x N")
        cdp = page.context.new_cdp_session(page)
        cdp.send("Profiler.enable")
        cdp.send("Profiler.setSamplingInterval", {"interval": 500})

        def head(k: int) -> str:
            pick(page, "att_head", str(k % 4))
            return f"head {k % 4}:"

        def pixel(k: int) -> str:
            row, col = 5 + k % 18, 4 + (5 * k) % 20
            scroll_to(page, "att_pixels")
            hover_then_click(page, *pixel_center(page, "att_pixels", row, col))
            return f"where pixel ({row}, {col})"

        for name, act in (("switch head", head), ("click a pixel", pixel)):
            drawn(page, "att_pixels", act(1))  # a warm-up round
            times, sent = [], []
            cdp.send("Profiler.start")
            for k in range(2, repeats + 2):
                page.evaluate("window.__messages = []")
                t = time.perf_counter()
                drawn(page, "att_pixels", act(k))
                times.append(time.perf_counter() - t)
                sent.append(sum(page.evaluate("window.__messages")))
            owners = cpu_by_owner(cdp.send("Profiler.stop")["profile"])
            row = {
                "median ms": statistics.median(times) * 1000,
                "kB received": statistics.median(sent) / 1e3,
            }
            row |= {owner: ms / repeats for owner, ms in owners.items() if owner != "idle"}
            out.append((f"Attention: {name}", row))
    page.close()
    return out


def server_profile(repeats: int) -> list[tuple[str, dict[str, float]]]:
    """The server's script for the same clicks (AppTest), split by timing the functions it
    calls: figure building (viz), serialisation (plotly.io.to_json), the rest of the script
    (widgets, the cached captures' reads, Streamlit's own work); ms per click."""
    import functools

    import plotly.io
    from streamlit.testing.v1 import AppTest

    import viz.maps
    import viz.mosaics
    import viz.pixels

    spent: dict[str, float] = {}

    def timed(owner: str, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[owner] = spent.get(owner, 0.0) + time.perf_counter() - t

        return wrapper

    saved = []

    def patch(obj, name: str, owner: str) -> None:
        saved.append((obj, name, getattr(obj, name)))
        setattr(obj, name, timed(owner, getattr(obj, name)))

    patch(plotly.io, "to_json", "serialisation (plotly.io.to_json)")
    for module in (viz.pixels, viz.maps, viz.mosaics):
        for name in [n for n in dir(module) if n.endswith("_figure")]:
            patch(module, name, "figure building (viz)")
    out = []
    try:
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
        at.run()
        at.switch_page("app_pages/attention.py").run()
        steps = {
            "switch head": lambda k: at.button_group(key="att_head").set_value(k % 4),
            "click a pixel": lambda k: at.number_input(key="att_row").set_value(4 + k % 20),
        }
        for name, step in steps.items():
            step(1)
            at.run()
            spent.clear()
            total = 0.0
            for k in range(2, repeats + 2):
                step(k)
                t = time.perf_counter()
                at.run()
                total += time.perf_counter() - t
            row = {owner: 1000 * v / repeats for owner, v in spent.items()}
            row["the rest of the script"] = 1000 * total / repeats - sum(row.values())
            row["script in all"] = 1000 * total / repeats
            out.append((f"Attention: {name} (server, AppTest; a whole-page run)", row))
    finally:
        for obj, name, fn in saved:
            setattr(obj, name, fn)
    return out


def line(name: str, seconds: list[float], goal: str, unit: str = "ms") -> str:
    return f"| {name} (median of {len(seconds)}; range) | {summary(seconds, unit)} | {goal} |"


def compared_line(
    name: str, ours: list[float], theirs: list[float] | None, goal: str, unit: str = "ms"
) -> str:
    """A row with the baseline's times beside ours and the speed-up (their median / ours)."""
    if theirs is None:
        return line(name, ours, goal, unit)
    speedup = statistics.median(theirs) / statistics.median(ours)
    return (
        f"| {name} (medians of {len(ours)} and {len(theirs)}; range) | {summary(ours, unit)} | "
        f"{summary(theirs, unit)} | {speedup:.2f}x | {goal} |"
    )


def baseline_tree(rev: str) -> Path:
    """A checkout of commit ``rev`` beside this one (a git worktree in the temporary folder,
    made once and reused), whose app the baseline measurements run."""
    sha = commit_arg(rev)
    tree = Path(tempfile.gettempdir()) / f"sparse-explorer-baseline-{sha[:12]}"
    if not (tree / "app.py").is_file():
        subprocess.run(["git", "worktree", "prune"], cwd=ROOT, check=True)
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(tree), sha],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
    return tree


def baseline_timeline(tree: Path, folder: str) -> str:
    """``folder`` (a run with a timeline in this checkout) copied under the baseline's runs/,
    where an older Training page looks: its path there."""
    target = tree / "runs" / Path(folder).name
    if not target.exists():
        shutil.copytree(ROOT / folder, target)
    return str(target.relative_to(tree))


def parts_arg(text: str) -> set[str]:
    """An argparse type: a comma-separated list of PARTS ("all" for every one)."""
    names = {t.strip() for t in text.split(",") if t.strip()}
    if names == {"all"}:
        return set(PARTS)
    unknown = sorted(names - set(PARTS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown part {', '.join(unknown) or '(none)'}: pick from {', '.join(PARTS)} or all"
        )
    return names


def main(argv: list[str] | None = None) -> int:
    """The command line: bad input is one ``error:`` line and exit status 2 (tools/cli.py)."""
    return run_main(_main, argv)


def _main(argv: list[str] | None = None) -> int:
    parser = Parser(
        prog="python tools/bench_app.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--repeats", type=int_range(1, 1000), default=12, help="timed rounds of each interaction"
    )
    parser.add_argument(
        "--servers", type=int_range(0, 100), default=10, help="fresh servers for first (0: skip)"
    )
    parser.add_argument(
        "--learned", type=int_range(0, 100), default=3, help="servers for learned (0: skip)"
    )
    parser.add_argument(
        "--parts",
        type=parts_arg,
        default=set(PARTS),
        help=f"comma-separated, of {', '.join(PARTS)} (default: all)",
    )
    parser.add_argument(
        "--timeline",
        type=timeline_arg,
        default=None,
        help="a run folder inside the project with a timeline, for the training part "
        "(default: one shipped under assets/models)",
    )
    parser.add_argument(
        "--baseline",
        type=commit_arg,
        default=None,
        metavar="REV",
        help="also measure this commit's app (a git worktree of it), taking turns with this "
        "tree's, and print the speed-up (e.g. 2eea64a)",
    )
    args = parser.parse_args(argv)
    return measure(
        args.parts, args.repeats, args.servers, args.learned, args.timeline, args.baseline
    )


def commit_arg(text: str) -> str:
    """An argparse type: a commit of this repository, as its full hash."""
    found = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", f"{text}^{{commit}}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if found.returncode != 0 or not text.strip() or text.startswith("-"):
        raise argparse.ArgumentTypeError(f"{text!r}: not a commit of this repository")
    return found.stdout.strip()


def timeline_arg(text: str) -> str:
    """A run folder inside the project holding timeline.json (the Training page lists the
    project's runs/ and models), as a path relative to the project."""
    path = (ROOT / text).resolve()
    if not path.is_relative_to(ROOT):
        raise argparse.ArgumentTypeError(f"{text}: not inside the project ({ROOT})")
    if not (path / "timeline.json").is_file():
        raise argparse.ArgumentTypeError(f"{text}: no timeline.json there (train with a timeline)")
    return str(path.relative_to(ROOT))


INTERACTION_GOAL = "<= 400 ms"
FASTER = 1.6  # the speed-up over --baseline each interaction is to reach (issue 34)


def measure(
    parts: set[str],
    repeats: int,
    servers: int,
    learned: int,
    timeline: str | None = None,
    baseline: str | None = None,
) -> int:
    """Run the parts asked for and print the table; with ``baseline`` (a commit), the same
    measurements of that commit's app in the same run, alternating with this tree's."""
    from playwright.sync_api import sync_playwright

    load = os.getloadavg()[0]
    trees = {"ours": ROOT}
    if baseline:
        trees["theirs"] = baseline_tree(baseline)
    print(
        f"# app responsiveness, {date.today()}, {os.cpu_count()} CPUs (load {load:.1f} at "
        "start), shipped models, CPU, headless Chromium, end to end (click to drawn); parts: "
        f"{', '.join(p for p in PARTS if p in parts)}"
        + (
            f"; baseline: commit {baseline[:7]} ({trees['theirs']}), alternating"
            if baseline
            else ""
        )
        + "\n"
    )
    if baseline:
        print(f"| measurement | this tree | {baseline[:7]} | speed-up | goal |")
        print("|---|---|---|---|---|")
    else:
        print("| measurement | result | goal |")
        print("|---|---|---|")
    notes = []
    if "training" in parts and timeline is None and shipped_timeline() is None:
        notes.append(
            "Training step slider: not measured, no run with a timeline (timeline.npz) under "
            "assets/runs or assets/models"
        )

    def row(name: str, times: dict[str, list[float]], goal: str, unit: str = "ms") -> None:
        print(compared_line(name, times["ours"], times.get("theirs"), goal, unit), flush=True)

    browser_parts = {"first", "attention", "who", "predictions", "training", "speed", "learned"}
    if parts & browser_parts:
        with sync_playwright() as p:
            browser = launch_chromium(p)
            if "first" in parts and servers:
                firsts = alternate(trees, servers, lambda root: first_page_seconds(browser, root))
                started = {t: [a for a, _ in v] for t, v in firsts.items()}
                asked = {t: [b for _, b in v] for t, v in firsts.items()}
                row("first page drawn after the browser's request", asked, "<= 3 s", "s")
                row("first page drawn after the server's start", started, "(server start too)", "s")
                opens = alternate(
                    trees, servers, lambda root: attention_first_open_seconds(browser, root)
                )
                row("Attention page, first open", opens, "<= 2 s", "s")
            if parts & {"attention", "who", "predictions", "training", "speed"}:
                goal = INTERACTION_GOAL + (f", >= {FASTER}x" if baseline else "")
                for name, times in interactions(browser, parts, repeats, timeline, trees):
                    row(name, times, goal)
            if "learned" in parts and learned:
                runs = alternate(trees, learned, lambda root: learned_seconds(browser, root))
                cold = {t: [c for c, _ in v] for t, v in runs.items()}
                warm = {t: [w for _, w in v] for t, v in runs.items()}
                row("Learned vs prescribed, 8 images, cold", cold, "<= 10 s", "s")
                row("Learned vs prescribed, 8 images, cached", warm, "<= 10 s", "s")
            browser.close()
    if "profile" in parts:
        with sync_playwright() as p:
            browser = launch_chromium(p)
            found = browser_profile(browser, repeats)
            browser.close()
        for name, row in found + server_profile(repeats):
            print(f"\n{name}: " + ", ".join(f"{k} {v:.0f}" for k, v in row.items()))
    if "server" in parts:
        # the clicks of the parts asked for; the Attention page's when none is
        clicks = parts & {"attention", "who", "predictions"} or {"attention"}
        for name, times in server_ms(repeats, clicks):
            print(line(name, times, "(part of the above)"), flush=True)
    for note in notes:
        print(f"\n{note}.")
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")
    return 0


def alternate(trees: dict[str, Path], count: int, run) -> dict[str, list]:
    """``run(root)`` ``count`` times for each tree, the trees taking turns (so a change in the
    machine's load falls on both): {tree: [results]}."""
    out: dict[str, list] = {name: [] for name in trees}
    for _ in range(count):
        for name, root in trees.items():
            out[name].append(run(root))
    return out


def interactions(
    browser, parts: set[str], repeats: int, timeline: str | None, trees: dict[str, Path]
) -> list[tuple[str, dict[str, list[float]]]]:
    """page_interactions of each tree, in halves that take turns (ours, theirs, ours,
    theirs): [(what, {tree: seconds})]."""
    halves = [repeats - repeats // 2, repeats // 2] if len(trees) > 1 else [repeats]
    merged: dict[str, dict[str, list[float]]] = {}
    for count in (c for c in halves if c):
        for name, root in trees.items():
            folder = timeline or shipped_timeline()
            if root != ROOT and folder is not None and "training" in parts:
                folder = baseline_timeline(root, folder)
            for what, times in page_interactions(browser, parts, count, folder, root):
                # the baseline's run folder is named by its own path: one row for both
                what = what.split(" (")[0] + what[what.index(")") + 1 :] if "(" in what else what
                merged.setdefault(what, {}).setdefault(name, []).extend(times)
    return list(merged.items())


if __name__ == "__main__":
    sys.exit(main())
