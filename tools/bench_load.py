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
completion sample at once, as a server without a pool would.

``--playground`` adds one more context that trains a Playground race (app_pages/playground.py
with its defaults: fmnist-mini at 14 x 14, dense, strided and fixed, on Fashion-MNIST) for the
whole run, and reports the time from its Train click to the first curve point and head maps
drawn in that browser; with ``--contexts 0`` the race is the only load:

    .venv/bin/python -m tools.bench_load --playground --contexts 0 --switches 40 --seconds 300

The race's run folders go to a temporary SPARSE_EXPLORER_RUNS, removed at the end.

``--frontier K`` adds K contexts that each open the Frontier page (app_pages/frontier.py), keep
the families FRONTIER_FAMILIES of the shipped dense model on the first ``--frontier-images``
test images and press Measure together (the worker pool runs them one by one: the later ones
wait in its queue). The browsing context switches heads until ``--switches`` are timed and
every frontier has ended (or ``--seconds`` ran out); the report gives the switches timed while
a frontier was still queued or running apart from those after, how each frontier ended (its
largest place in the queue, its wait and run from the server's log) and the server's RSS at
rest and at its peak against the pool's memory bound (app_pages/jobs.py: at most WORKERS tasks
at once, each refused over MEMORY_BUDGET_MB):

    .venv/bin/python -m tools.bench_load --frontier 2 --contexts 0 --switches 60 --seconds 480
"""

from __future__ import annotations

import math
import os
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
from tools.browser import (  # noqa: E402
    IDLE,
    keyed,
    launch_chromium,
    open_page,
    settle,
    streamlit_server,
)
from tools.cli import Parser, finite_float, int_range, run_main  # noqa: E402
from tools.memory import current_rss  # noqa: E402

MODELS = ("dense", "strided", "fixed")
# what --frontier measures: three static families (17 points, the fitted layouts and, for the
# dense model, the trained strided and fixed models), a minute or two on 16 images here
FRONTIER_FAMILIES = ("local", "strided", "fixed")
FRONTIER_LABEL = "frontier fr_measure"  # its task's label in the server's log (pool_job)


# the app's bound on one task's estimated memory and its default pool size, as
# app_pages/jobs.py sets them (a benchmark may not import the app; tests/test_bench_load.py
# checks that these agree with it)
TASK_BUDGET_MB = 1024


def default_workers() -> int:
    """The server's pool size without --workers: $SPARSE_EXPLORER_WORKERS, else cores - 1."""
    return int(os.environ.get("SPARSE_EXPLORER_WORKERS", max(1, (os.cpu_count() or 2) - 1)))


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
    page.wait_for_function(LIVE_RACE_DRAWN, arg=list(MODELS), timeout=120_000)
    return time.perf_counter() - t0


# The live race's first curve point and every lane's head maps drawn. Before Train the page
# draws the race shipped with the project (its progress line "shipped race: step ..."), with the
# same charts: the live race's progress line starts with "step N", and its charts are told from
# the shipped ones (until redrawn, or left over while a run replaces them) by their step, at
# most N (the progress line is drawn before the charts in each run, so it is never older).
LIVE_RACE_DRAWN = """lanes => {
    const bar = document.querySelector('[data-testid=stProgress]');
    const live = bar && bar.textContent.trim().match(/^step (\\d+)/);
    if (!live) return false;
    const step = Number(live[1]);
    const el = document.querySelector('.st-key-pg_by_step .js-plotly-plot');
    const t = el && (el._fullData || []).find(t => t.name === 'dense held-out');
    if (!t || !t.x || !t.x.length || Number(t.x[t.x.length - 1]) > step) return false;
    return lanes.every(name => {
        const title = document.querySelector(`.st-key-pg_heads_${name} .gtitle`);
        const m = title && title.textContent.match(/, step (\\d+)/);
        return m && Number(m[1]) <= step;
    });
}"""


def race_progress(page) -> str:
    """The race's progress line as drawn ("step N of M · S s · training")."""
    bar = page.locator("[data-testid=stProgress]")
    return bar.first.text_content() if bar.count() else "(no progress bar)"


def prepare_frontier(page, images: int) -> None:
    """The Frontier page with its model (the shipped dense one), FRONTIER_FAMILIES only and the
    first ``images`` test images, ready to Measure."""
    open_page(page, "Frontier")
    box = keyed(page, "fr_families")
    for tag in [t.strip() for t in box.locator("[data-tag]").all_text_contents()]:  # all, first
        if tag not in FRONTIER_FAMILIES:
            box.get_by_label(f"Remove {tag}", exact=True).click()
            settle(page)
    for name in FRONTIER_FAMILIES:
        if box.get_by_text(name, exact=True).count() == 0:
            field = box.get_by_role("combobox")
            field.click()
            field.fill(name)
            page.get_by_role("option", name=name, exact=True).click()
            settle(page)
    page.keyboard.press("Escape")
    field = keyed(page, "fr_images").locator("input")
    field.fill(str(images))
    field.press("Enter")
    settle(page)
    chosen = [t.strip() for t in box.locator("[data-tag]").all_text_contents()]
    if sorted(chosen) != sorted(FRONTIER_FAMILIES):
        raise RuntimeError(f"the Frontier page kept the families {chosen}")


@dataclass
class Frontier:
    """One context's frontier as its page showed it, polled between head switches."""

    page: object
    pressed: float = 0.0
    state: str = "pressed"  # queued, running, done, stopped, failed, refused
    place: int = 0  # its largest place in the queue seen (0: never seen waiting)
    started: float | None = None  # seen running (its progress bar)
    ended: float | None = None
    note: str = ""

    @property
    def over(self) -> bool:
        return self.ended is not None


def poll_frontier(f: Frontier) -> None:
    """Read ``f``'s page once (without waiting) and note what it shows."""
    if f.over:
        return
    text = f.page.evaluate("() => document.body.innerText")
    now = time.perf_counter()
    ended = {
        "done": "measured here on the first",
        "stopped": "The frontier was ",
        "failed": "The frontier failed",
        "refused": "would need about",
        "busy": "The server is busy",
    }
    for state, words in ended.items():
        if words in text:
            f.state, f.ended = state, now
            if state != "done":
                f.note = next(line for line in text.splitlines() if words in line)
            return
    queued = re.search(r"waiting for a worker: number (\d+) in the queue", text)
    if queued:
        f.state, f.place = "queued", max(f.place, int(queued.group(1)))
    elif f.page.locator("[data-testid=stProgress]").count():
        f.state = "running"
        if f.started is None:
            f.started = now


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


def frontier_outcome(f: Frontier) -> str:
    """How a frontier ended, as the browser saw it: its state, when (from Measure), its largest
    place in the queue and when it started running."""
    if not f.over:
        words = f"not over when the run ended ({f.state})"
    else:
        words = f"{f.state} {f.ended - f.pressed:.0f} s after Measure"
    if f.place:
        words += f"; queued (place {f.place} at most)"
    if f.started is not None:
        words += f", running from {f.started - f.pressed:.0f} s"
    return words + (f": {f.note}" if f.note else "")


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
        help="contexts completing (0: only with --playground or --frontier)",
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
    p.add_argument(
        "--frontier",
        type=int_range(0, 4),
        default=0,
        help="contexts that each measure a frontier on the Frontier page meanwhile",
    )
    p.add_argument(
        "--frontier-images",
        type=int_range(1, 1024),
        default=16,
        help="test images each --frontier measure runs on",
    )
    args = p.parse_args(argv)
    if args.contexts == 0 and not args.playground and not args.frontier:
        p.error(
            "argument --contexts: 0 contexts completing is no load (add --playground or --frontier)"
        )
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
    after: list[float] = []  # --frontier: the switches timed once every frontier had ended
    frontiers: list[Frontier] = []
    with streamlit_server(env=env) as server, sync_playwright() as pw:
        browser = launch_chromium(pw)
        pages = []
        for _ in range(args.contexts + 1 + args.playground + args.frontier):
            page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
            page.set_default_timeout(120_000)
            page.goto(server.url)
            pages.append(page)
        frontiers = [Frontier(pages.pop()) for _ in range(args.frontier)]
        trainer = pages.pop() if args.playground else None
        *completers, browser_page = pages
        for page in pages + [f.page for f in frontiers]:
            settle(page)
        for f in frontiers:
            prepare_frontier(f.page, args.frontier_images)
        if trainer is not None:  # the race runs for the whole benchmark
            settle(trainer)
            first_draw = start_race(trainer, min(30.0, math.ceil(args.seconds / 30) / 2 + 0.5))
        for page in completers:
            prepare_completer(page, args.samples)
        open_page(browser_page, "Attention")
        rest_mb = current_rss(server.pid) / 2**20  # every page open, no work started
        n_head = 4
        for page in completers:  # everyone starts at once
            start_completion(page)
        for f in frontiers:
            keyed(f.page, "fr_run").get_by_role("button").click()
            f.pressed = time.perf_counter()
        browser_page.wait_for_timeout(1000)  # the completions are sampling
        i = 0
        while time.monotonic() < deadline and (
            len(times) + len(after) < args.switches or not all(f.over for f in frontiers)
        ):
            i += 1
            busy = not all(f.over for f in frontiers)
            try:
                seconds = switch_head(browser_page, i % n_head, 0)
            except Exception:
                browser_page.screenshot(path="/tmp/bench_load_failure.png")
                raise
            (times if busy or not frontiers else after).append(seconds)
            for f in frontiers:
                poll_frontier(f)
            for page in completers:  # keep the load up: a finished completion starts again
                if not completion_running(page):
                    completions += 1
                    start_completion(page)
        if trainer is not None:
            race_at_end = race_progress(trainer)
            trainer.context.close()  # the session ends: the race stops (and saves)
        for page in completers + [f.page for f in frontiers]:  # end what still runs
            page.context.close()  # (closing the tab cancels it)
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
    if frontiers:
        race += (
            f" + {len(frontiers)} measuring a frontier (dense, {', '.join(FRONTIER_FAMILIES)}, "
            f"{args.frontier_images} images)"
        )
    print(
        f"# load: {args.contexts} contexts completing ({args.samples} samples x 3 models){race}"
        f" + 1 switching heads, pool workers {workers}, {os.cpu_count()} CPUs\n"
    )
    print("| measurement | result |")
    print("|---|---|")
    during = " while a frontier was queued or running" if frontiers else ""
    for label, values in ((during, times), (" after every frontier had ended", after)):
        if values:
            print(
                f"| head switch, browsing context{label} ({len(values)} switches): "
                f"median / p95 / max | {statistics.median(values):.2f} / "
                f"{percentile(values, 0.95):.2f} / {max(values):.2f} s |"
            )
    for k, f in enumerate(frontiers, 1):
        print(f"| frontier {k} | {frontier_outcome(f)} |")
    logged = re.findall(rf"task '{FRONTIER_LABEL}' (\w+): waited ([\d.]+) s, ran ([\d.]+) s", log)
    if logged:  # in the order they ended
        print(
            "| frontiers in the server's log: status, queue wait, run | "
            + "; ".join(f"{status}, {float(w):.0f} s, {float(r):.0f} s" for status, w, r in logged)
            + " |"
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
    if args.contexts:
        print(f"| completions restarted during the switches | {completions} |")
    if frontiers:
        n = args.workers if args.workers is not None else default_workers()
        print(f"| server RSS with every page open, before the work | {rest_mb:.0f} MB |")
        print(
            f"| server peak RSS: above that, against the pool's bound ({n} worker(s) x "
            f"{TASK_BUDGET_MB} MB) | {peak:.0f} MB: +{peak - rest_mb:.0f} MB of "
            f"{n * TASK_BUDGET_MB} MB |"
        )
    else:
        print(f"| server peak RSS | {peak:.0f} MB |")
    if "Traceback" in log:
        print("server log has a traceback:\n" + log[-3000:], file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
