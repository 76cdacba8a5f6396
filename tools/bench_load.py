"""Load test: people completing while one more person browses, on one server, loopback only.

    .venv/bin/python -m tools.bench_load --contexts 4 --samples 4 --switches 20 --seconds 240

Starts one `streamlit run app.py` on 127.0.0.1 (as the browser tests do, tests/browser_util.py)
with the shipped models, opens ``--contexts`` headless Chromium contexts that each complete
the default image with 3 models (dense, strided, fixed; ``--samples`` samples), again as soon
as a completion ends, and one more context that switches heads on the Attention page meanwhile.
Reports the browsing context's head-switch times (click to the new head's chart drawn: median,
p95, max), the completions' waits in the worker pool's queue and their run times (from the
server's log, SPARSE_EXPLORER_LOG_TASKS), and the server's peak RSS. Everything stops after
``--seconds`` (the server, the browser and any completion still running).

``--workers N`` sets the pool's size (SPARSE_EXPLORER_WORKERS); a large N lets every
completion sample at once, as the app did before it had a pool.

``--playground`` adds one more context that trains a Playground race (app_pages/playground.py
with its defaults: fmnist-mini at 14 x 14, dense, strided and fixed, on Fashion-MNIST) for the
whole run, and reports the time from its Train click to the first curve point and head maps
drawn in that browser; with ``--contexts 0`` the race is the only load:

    .venv/bin/python -m tools.bench_load --playground --contexts 0 --switches 40 --seconds 300

The race's run folders go to a temporary SPARSE_EXPLORER_RUNS, removed at the end.
"""

from __future__ import annotations

import math
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from browser_util import (  # noqa: E402
    IDLE,
    chart,
    keyed,
    launch_chromium,
    open_page,
    settle,
    streamlit_server,
)

from tools.cli import Parser, finite_float, int_range, run_main  # noqa: E402

MODELS = ("dense", "strided", "fixed")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def prepare_completer(page, samples: int) -> None:
    """The Complete page with the 3 models, ``samples`` samples and the top half kept."""
    open_page(page, "Complete")
    box = keyed(page, "cmp_models")
    for name in MODELS:
        if box.get_by_text(name, exact=True).count() == 0:
            field = box.get_by_role("combobox")  # typing filters the list to the model
            field.click()
            field.fill(name)
            page.get_by_role("option", name=name, exact=True).click()
            settle(page)
    page.keyboard.press("Escape")
    field = keyed(page, "cmp_samples").get_by_role("slider")
    field.focus()
    page.keyboard.press("Home")
    for _ in range(samples - 1):
        page.keyboard.press("ArrowRight")
    settle(page)


def start_completion(page) -> None:
    keyed(page, "cmp_run").get_by_role("button").click()


def completion_running(page) -> bool:
    """Whether this page's completion is still going (its Stop button is shown)."""
    return keyed(page, "cmp_stop").count() > 0 or page.locator(IDLE).count() == 0


def start_race(page, minutes: float) -> float:
    """The Playground page with its defaults and a budget of ``minutes``: press Train and wait
    until the race's first curve point and every layout's head maps are drawn in this browser;
    the seconds from the click to that."""
    open_page(page, "Playground")
    field = keyed(page, "pg_minutes").locator("input")
    field.fill(f"{minutes:g}")
    field.press("Enter")
    settle(page)
    keyed(page, "pg_train").get_by_role("button").click()
    t0 = time.perf_counter()
    for name in ("dense", "strided", "fixed"):
        chart(page, f"pg_heads_{name}").locator(".gtitle").first.wait_for(timeout=120_000)
    chart(page, "pg_by_step").locator(".js-plotly-plot").first.wait_for(timeout=120_000)
    page.wait_for_function(
        """() => { const el = document.querySelector('.st-key-pg_by_step .js-plotly-plot');
                   const t = el && (el._fullData || []).find(t => t.name === 'dense held-out');
                   return t && t.x.length > 0; }""",
        timeout=120_000,
    )
    return time.perf_counter() - t0


def race_progress(page) -> str:
    """The race's progress line as drawn ("step N of M · S s · training")."""
    bar = page.locator("[data-testid=stProgress]")
    return bar.first.text_content() if bar.count() else "(no progress bar)"


def switch_head(page, head: int, layer: int) -> float:
    """Pick ``head`` on the Attention page; seconds from the pick until the chart of that head
    is drawn in the browser (the server's run plus plotly drawing it)."""
    want = f"layer {layer}, head {head}: where pixel"
    button = keyed(page, "att_head").get_by_role("radio", name=str(head), exact=True)
    t0 = time.perf_counter()
    button.click()
    page.wait_for_function(
        """want => [...document.querySelectorAll('.gtitle')]
                   .some(t => t.textContent.startsWith(want))""",
        arg=want,
        timeout=120_000,
    )
    seconds = time.perf_counter() - t0  # what the person sees: the new head's chart
    page.wait_for_selector(IDLE)  # the run is over before the next switch
    return seconds


def main(argv: list[str] | None = None) -> int:
    """The command line: bad input is one ``error:`` line and exit status 2 (tools/cli.py),
    before a server or a browser starts."""
    return run_main(_main, argv)


def _main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m tools.bench_load", description=__doc__)
    p.add_argument(
        "--contexts",
        type=int_range(0, 16),
        default=4,
        help="contexts completing (0: only with --playground)",
    )
    p.add_argument("--samples", type=int_range(1, 16), default=4, help="samples a completion")
    p.add_argument("--switches", type=int_range(1, 200), default=20, help="head switches timed")
    p.add_argument(
        "--seconds", type=finite_float(1, 3600), default=240, help="time limit of the whole run"
    )
    p.add_argument(
        "--workers", type=int_range(1, 64), default=None, help="the pool's size (default: app's)"
    )
    p.add_argument(
        "--playground",
        action="store_true",
        help="one more context trains a Playground race meanwhile",
    )
    args = p.parse_args(argv)
    if args.contexts == 0 and not args.playground:
        p.error("argument --contexts: 0 contexts completing is no load (add --playground)")
    from playwright.sync_api import sync_playwright

    env = {"SPARSE_EXPLORER_LOG_TASKS": "1"}
    runs_dir = tempfile.TemporaryDirectory(prefix="bench-load-runs-")
    env["SPARSE_EXPLORER_RUNS"] = runs_dir.name
    if args.workers is not None:
        env["SPARSE_EXPLORER_WORKERS"] = str(args.workers)
    deadline = time.monotonic() + args.seconds
    times: list[float] = []
    completions = 0
    first_draw = None
    race_at_end = None
    with streamlit_server(env=env) as server, sync_playwright() as pw:
        browser = launch_chromium(pw)
        pages = []
        for _ in range(args.contexts + 1 + args.playground):
            page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
            page.set_default_timeout(120_000)
            page.goto(server.url)
            pages.append(page)
        trainer = pages.pop() if args.playground else None
        *completers, browser_page = pages
        for page in pages:
            settle(page)
        if trainer is not None:  # the race runs for the whole benchmark
            settle(trainer)
            first_draw = start_race(trainer, min(30.0, math.ceil(args.seconds / 30) / 2 + 0.5))
        for page in completers:
            prepare_completer(page, args.samples)
        open_page(browser_page, "Attention")
        n_head = 4
        for page in completers:  # everyone starts at once
            start_completion(page)
        browser_page.wait_for_timeout(1000)  # the completions are sampling
        i = 0
        while len(times) < args.switches and time.monotonic() < deadline:
            i += 1
            try:
                times.append(switch_head(browser_page, i % n_head, 0))
            except Exception:
                browser_page.screenshot(path="/tmp/bench_load_failure.png")
                raise
            for page in completers:  # keep the load up: a finished completion starts again
                if not completion_running(page):
                    completions += 1
                    start_completion(page)
        if trainer is not None:
            race_at_end = race_progress(trainer)
            trainer.context.close()  # the session ends: the race stops (and saves)
        for page in completers:  # end what still runs (closing the tab cancels it)
            page.context.close()
        peak = server.peak_rss_mb()
        time.sleep(1.0)
        log = server.log.read_text(errors="replace")
        browser.close()
    tasks = re.findall(r"task 'completion \w+' (\w+): waited ([\d.]+) s, ran ([\d.]+) s", log)
    waits = [float(w) for _, w, _ in tasks]
    runs = [float(r) for status, _, r in tasks if status == "done"]
    runs_dir.cleanup()
    workers = args.workers if args.workers is not None else "default"
    race = " + 1 training a Playground race" if args.playground else ""
    print(
        f"# load: {args.contexts} contexts completing ({args.samples} samples x 3 models){race}"
        f" + 1 switching heads, pool workers {workers}, {os.cpu_count()} CPUs\n"
    )
    print("| measurement | result |")
    print("|---|---|")
    if times:
        print(
            f"| head switch, browsing context ({len(times)} switches): median / p95 / max "
            f"| {statistics.median(times):.2f} / {percentile(times, 0.95):.2f} / "
            f"{max(times):.2f} s |"
        )
    if waits:
        print(
            f"| completions' queue wait ({len(waits)} tasks): median / max "
            f"| {statistics.median(waits):.1f} / {max(waits):.1f} s |"
        )
    if runs:
        median_run = statistics.median(runs)
        print(f"| a completion's run (done: {len(runs)}): median | {median_run:.1f} s |")
    if first_draw is not None:
        print(
            f"| Playground: Train to first curve point and head maps drawn | {first_draw:.1f} s |"
        )
        print(f"| Playground: the race when the switches ended | {race_at_end} |")
    print(f"| completions restarted during the switches | {completions} |")
    print(f"| server peak RSS | {peak:.0f} MB |")
    if "Traceback" in log:
        print("server log has a traceback:\n" + log[-3000:], file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
