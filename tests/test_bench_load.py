"""tools/bench_load.py without a browser: its numbers and its bounds (the load test itself runs
by hand: python -m tools.bench_load)."""

import pytest

from tools.bench_load import main, percentile


def test_percentile_picks_from_the_sorted_values():
    values = [0.5, 3.0, 1.0, 2.0, 0.7]
    assert percentile(values, 0.5) == 1.0 and percentile(values, 1.0) == 3.0
    assert percentile(values, 0.0) == 0.5 and percentile([1.2], 0.95) == 1.2


@pytest.mark.parametrize("args", [["--contexts", "0"], ["--samples", "17"], ["--switches", "0"]])
def test_the_load_is_bounded(args, capsys):
    assert main(args) == 2  # before any server or browser starts
    err = capsys.readouterr().err
    assert err.startswith("error: argument") and err.count("\n") == 1
