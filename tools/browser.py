"""Driving the app in a real browser: Debian's Chromium, one `streamlit run` server, waiting for
a run to end. The real-browser tests (tests/browser_util.py adds their fixtures) and the app
benchmarks (tools/bench_app.py, tools/bench_load.py) share it.

scripts/system_packages.sh installs chromium; requirements-dev.txt has playwright.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tools.memory import peak_rss

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
IDLE = "[data-testid=stApp][data-test-script-state=notRunning]"


def launch_chromium(playwright):
    """Debian's Chromium, headless with FLAGS, from a running sync_playwright()."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Server:
    url: str
    pid: int
    log: Path  # the server's stdout and stderr (a file: a full pipe would block the server)

    def peak_rss_mb(self) -> float:
        """The server process's peak resident set size so far (Linux /proc VmHWM)."""
        return peak_rss(self.pid) / 2**20


def streamlit_command(port: int, root: Path = ROOT) -> list[str]:
    """The app served on 127.0.0.1:port as scripts/app.sh serves it (app_pages/serve.py: `streamlit
    run app.py`, the first page's modules imported before it listens), as the tests and
    tools/bench_app.py start it; a ``root`` checkout without app_pages/serve.py (an older commit
    benchmarked beside this one) by `streamlit run app.py`, as that commit served it."""
    if (Path(root) / "app_pages" / "serve.py").exists():
        serve = ["app_pages.serve"]
    else:
        serve = ["streamlit", "run", "app.py"]
    return [
        sys.executable,
        "-m",
        *serve,
        "--server.headless",
        "true",
        "--server.port",
        str(port),
        "--server.address",
        "127.0.0.1",
        "--browser.gatherUsageStats",
        "false",
        # no reloading: a source file edited during the test (another checkout user, an editor)
        # would make the watcher drop modules from sys.modules while a session imports them
        "--server.fileWatcherType",
        "none",
    ]


@contextlib.contextmanager
def streamlit_server(env: dict[str, str] | None = None, root: Path = ROOT) -> Iterator[Server]:
    """The app served (streamlit_command) on a free port until the block ends.

    ``env`` is added to this process's environment (e.g. SPARSE_EXPLORER_MODELS); ``root``: the
    checkout whose app.py runs (tools/bench_app.py's --baseline runs an older commit's).
    """
    port = free_port()
    cmd = streamlit_command(port, root)
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "server.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                cmd,
                cwd=root,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
            )
        url = f"http://127.0.0.1:{port}"
        t0 = time.time()
        while time.time() - t0 < 60:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.3)
        else:
            proc.kill()
            proc.wait(timeout=20)
            raise RuntimeError(
                "streamlit did not start: " + log.read_text(errors="replace")[-2000:]
            )
        try:
            yield Server(url, proc.pid, log)
        finally:
            proc.terminate()
            proc.wait(timeout=20)


def settle(page) -> None:
    """Wait until the script has finished its run (and a moment for the frontend to draw)."""
    page.wait_for_timeout(300)
    page.wait_for_selector(IDLE)
    page.wait_for_timeout(300)


def click_menu(page, title: str) -> None:
    """Click a page's entry in the menu at the top (not yet waiting for the page); in a narrow
    window the pages that do not fit are behind its "N more" entry."""
    link = page.get_by_role("link", name=title).first
    if link.is_visible():
        link.click()
    else:
        page.get_by_text(re.compile(r"^\d+ more$")).first.click()
        page.get_by_role("menuitem").filter(has_text=title).first.click()


def open_page(page, title: str) -> None:
    """Open a page from the menu at the top and wait until it is drawn."""
    click_menu(page, title)
    settle(page)
    page.get_by_role("heading").first.wait_for()


def keyed(page, key: str):
    """The element drawn with ``key=key`` (Streamlit gives its container the class st-key-KEY)."""
    return page.locator(f".st-key-{key}")


def choose(page, key: str, option: str) -> None:
    """Pick ``option`` in the selectbox ``key`` (not yet waiting for the run it starts)."""
    # its Open button: a click on the container's centre can fall on the box's text input,
    # which takes the focus without opening the list (a label with a help icon moves it
    # there); the box scrolled into view first, as scrolling closes an open list
    box = keyed(page, key)
    box.scroll_into_view_if_needed()
    page.wait_for_timeout(200)
    item = page.get_by_role("option", name=option, exact=True)
    for _ in range(5):
        box.get_by_role("button", name="Open").first.click()
        for _ in range(10):
            if item.count():
                item.click()
                return
            page.wait_for_timeout(100)
    item.click()  # (not open after five tries: fails with playwright's own message)
