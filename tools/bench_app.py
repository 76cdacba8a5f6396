"""Benchmark the app's responsiveness on this machine with the shipped models.

    .venv/bin/python tools/bench_app.py

1. First page: seconds from `streamlit run` to the Layouts page fully drawn in headless
   Chromium (script finished and its figures on screen); the median of 5 fresh servers, with
   the range (a 2-core machine varies by a second from start to start).
2. Server time of interactions on the Attention page (AppTest reruns, caches warm): switching
   layer, switching head, clicking a pixel (a new query); median of several.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from browser_util import free_port, launch_chromium, streamlit_command  # noqa: E402


def first_page_seconds() -> float:
    from playwright.sync_api import sync_playwright

    port = free_port()
    with sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            streamlit_command(port),
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            while True:
                try:
                    page.goto(f"http://127.0.0.1:{port}", timeout=2000)
                    break
                except Exception:  # the server is not listening yet
                    time.sleep(0.1)
            page.wait_for_selector("[data-testid=stApp][data-test-script-state=notRunning]")
            page.locator("[data-testid=stPlotlyChart] .main-svg").first.wait_for()
            return time.perf_counter() - t0
        finally:
            browser.close()
            proc.terminate()
            proc.wait()


def interaction_ms(repeats: int = 5) -> dict[str, float]:
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.switch_page("app_pages/attention.py").run()
    out: dict[str, list[float]] = {"switch layer": [], "switch head": [], "click a pixel": []}
    n_layer = len(at.selectbox(key="att_layer").options)
    n_head = len(at.selectbox(key="att_head").options)
    for k in range(repeats * 2):  # the first round fills the caches; time the rest
        for name, key, value in (
            ("switch layer", "att_layer", (k + 1) % n_layer),
            ("switch head", "att_head", (k + 1) % n_head),
            ("click a pixel", "att_row", 5 + k % 20),  # a new query row: a new capture
        ):
            widget = at.number_input(key=key) if key == "att_row" else at.selectbox(key=key)
            widget.set_value(value)
            t = time.perf_counter()
            at.run()
            if k >= repeats:
                out[name].append(1000 * (time.perf_counter() - t))
            assert not at.exception, at.exception
    return {k: statistics.median(v) for k, v in out.items()}


def main() -> int:
    import torch

    print(
        f"# app responsiveness, {date.today()}, {torch.get_num_threads()} threads, "
        f"shipped models, CPU\n"
    )
    firsts = [first_page_seconds() for _ in range(5)]
    print("| measurement | result | goal |")
    print("|---|---|---|")
    print(
        f"| first page drawn after `streamlit run` (median of 5; range) "
        f"| {statistics.median(firsts):.2f} s ({min(firsts):.2f}-{max(firsts):.2f}) | <= 5 s |",
        flush=True,
    )
    for name, ms in interaction_ms().items():
        print(f"| Attention page: {name} (server time, median) | {ms:.0f} ms | <= 300 ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
