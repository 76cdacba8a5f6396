"""tools/bench_app.py's own arithmetic: the comparison with a baseline commit, the turns the
trees take, and the browser profile's split by owner (no browser or server here: the timed runs
are tools/bench_app.py's, recorded in docs/BENCHMARKS.md)."""

from __future__ import annotations

import argparse
import subprocess

import pytest

from tools import bench_app


def test_commit_arg_takes_a_commit_and_refuses_the_rest():
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=bench_app.ROOT, capture_output=True, text=True
    ).stdout.strip()
    if not head:
        pytest.skip("not a git checkout")
    assert bench_app.commit_arg("HEAD") == head
    assert bench_app.commit_arg(head[:10]) == head
    for bad in ("", "nonsense", "-x", "HEAD~100000", "0" * 40):
        with pytest.raises(argparse.ArgumentTypeError, match="not a commit"):
            bench_app.commit_arg(bad)


def test_compared_line_gives_both_medians_and_the_speed_up():
    row = bench_app.compared_line("click", [0.2, 0.3, 0.25], [0.5, 0.4, 0.6], "goal")
    assert row == (
        "| click (medians of 3 and 3; range) | 250 ms (200-300) | 500 ms (400-600) | 2.00x | goal |"
    )
    # without a baseline: the plain row
    assert bench_app.compared_line("first", [2.0, 3.0], None, "<= 3 s", "s") == (
        "| first (median of 2; range) | 2.50 s (2.00-3.00) | <= 3 s |"
    )


def test_alternate_takes_turns():
    order = []
    out = bench_app.alternate({"ours": "a", "theirs": "b"}, 3, lambda root: order.append(root))
    assert order == ["a", "b", "a", "b", "a", "b"]
    assert {k: len(v) for k, v in out.items()} == {"ours": 3, "theirs": 3}


def test_cpu_by_owner_sorts_samples_by_the_script_that_spends_them():
    frame = lambda i, name, url="": {  # noqa: E731
        "id": i,
        "callFrame": {"functionName": name, "url": url},
        "children": [],
    }
    nodes = [
        frame(1, "(root)"),
        frame(2, "(program)"),
        frame(3, "(idle)"),
        frame(4, "(garbage collector)"),
        frame(5, "draw", "http://x/static/js/PlotlyChart.abc.js"),
        frame(6, "render", "http://x/static/js/react-dom.js"),
        frame(7, "(anonymous)"),  # no script of its own: its caller's
    ]
    nodes[0]["children"] = [2, 3, 4, 5, 6]
    nodes[4]["children"] = [7]
    profile = {
        "nodes": nodes,
        "samples": [2, 3, 4, 5, 7, 6, 6],
        "timeDeltas": [1000, 2000, 500, 3000, 1000, 250, 250],
    }
    assert bench_app.cpu_by_owner(profile) == {
        "style, layout, paint (outside script)": 1.0,
        "idle": 2.0,
        "garbage collection": 0.5,
        "plotly.js": 4.0,
        "React and Streamlit's other code": 0.5,
    }
