"""tools/bench_load.py without a browser: its numbers and its bounds (the load test itself runs
by hand: python -m tools.bench_load)."""

import pytest

from tools.bench_load import Frontier, frontier_outcome, main, percentile, poll_frontier


def test_percentile_picks_from_the_sorted_values():
    values = [0.5, 3.0, 1.0, 2.0, 0.7]
    assert percentile(values, 0.5) == 1.0 and percentile(values, 1.0) == 3.0
    assert percentile(values, 0.0) == 0.5 and percentile([1.2], 0.95) == 1.2


@pytest.mark.parametrize(
    "args",
    [
        ["--contexts", "0"],
        ["--contexts", "0", "--frontier", "0"],  # no load at all
        ["--samples", "17"],
        ["--switches", "0"],
        ["--frontier", "5"],
        ["--frontier", "-1"],
        ["--frontier", "two"],
        ["--frontier", "1", "--frontier-images", "0"],
        ["--frontier", "1", "--frontier-images", "1025"],
    ],
)
def test_the_load_is_bounded(args, capsys):
    assert main(args) == 2  # before any server or browser starts
    err = capsys.readouterr().err
    assert err.startswith("error: argument") and err.count("\n") == 1


class FakePage:
    """What poll_frontier reads of a page: its text, and whether a progress bar is drawn."""

    def __init__(self, text: str, bar: bool = False) -> None:
        self.text, self.bar = text, bar

    def evaluate(self, script: str) -> str:
        return self.text

    def locator(self, selector: str):
        assert selector == "[data-testid=stProgress]"
        bar = self.bar
        return type("Found", (), {"count": lambda self: int(bar)})()


def test_a_frontier_is_followed_from_its_page():
    page = FakePage("The frontier is waiting for a worker: number 2 in the queue (1 running)")
    f = Frontier(page, pressed=0.0)
    poll_frontier(f)
    assert (f.state, f.place, f.over) == ("queued", 2, False)
    page.text = "The frontier is waiting for a worker: number 1 in the queue (1 running)"
    poll_frontier(f)
    assert (f.state, f.place) == ("queued", 2)  # its largest place is kept
    page.text, page.bar = "3 of 21: strided(l=28)", True
    poll_frontier(f)
    assert f.state == "running" and f.started is not None and not f.over
    page.text, page.bar = "dense, measured here on the first 16 test images; 17 points", False
    poll_frontier(f)
    assert f.state == "done" and f.over and f.note == ""
    ended = f.ended
    page.text = "The frontier was stopped; nothing to draw."
    poll_frontier(f)  # once over, never read again
    assert f.state == "done" and f.ended == ended
    words = frontier_outcome(f)
    assert words.startswith("done ") and "queued (place 2 at most)" in words
    assert "running from" in words


def test_a_frontier_that_ends_badly_says_why():
    f = Frontier(FakePage("Measure\nThe frontier failed: RuntimeError: no images\nMore"))
    poll_frontier(f)
    assert f.state == "failed" and f.note == "The frontier failed: RuntimeError: no images"
    assert frontier_outcome(f).endswith(": The frontier failed: RuntimeError: no images")
    f = Frontier(FakePage("Measure"))  # not seen queued or running yet
    poll_frontier(f)
    assert frontier_outcome(f) == "not over when the run ended (pressed)"


def test_the_budget_it_reports_is_the_apps():
    from app_pages import jobs
    from tools import bench_load

    assert bench_load.TASK_BUDGET_MB == jobs.MEMORY_BUDGET_MB
    assert bench_load.default_workers() == jobs.WORKERS
