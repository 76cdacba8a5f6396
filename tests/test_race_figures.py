"""viz/race_figures.py: the race's bits/dim curves from arrays."""

from __future__ import annotations

import numpy as np
import pytest

from viz.race_figures import MAX_TRAIN_POINTS, Curve, race_curves_figure, smooth


def curve(name: str, steps: int) -> Curve:
    s = np.arange(1, steps + 1)
    return Curve(
        name=name,
        steps=s,
        seconds=s * 0.1,
        train_bpd=8.0 - np.log1p(s),
        test_steps=np.array([0, steps]),
        test_seconds=np.array([0.0, steps * 0.1]),
        test_bpd=np.array([8.0, 8.0 - np.log1p(steps)]),
    )


def test_curves_against_steps_and_seconds_with_baselines():
    curves = [curve("dense", 50), curve("strided", 50)]
    base = {"uniform over observed values": 7.5, "nothing": float("nan")}
    fig = race_curves_figure(curves, against="steps", baselines=base)
    names = [t.name for t in fig.data]
    assert names == [
        "dense train",
        "dense held-out",
        "strided train",
        "strided held-out",
        "uniform over observed values (7.50)",
    ]
    assert list(fig.data[1].x) == [0, 50]
    assert list(fig.data[-1].x) == [0.0, 50.0] and list(fig.data[-1].y) == [7.5, 7.5]
    by_time = race_curves_figure(curves, against="seconds")
    assert by_time.data[0].x[-1] == pytest.approx(5.0)
    assert by_time.layout.xaxis.title.text.startswith("seconds")
    with pytest.raises(ValueError, match="against"):
        race_curves_figure(curves, against="minutes")


def test_smooth_averages_long_curves_down():
    x = np.arange(10 * MAX_TRAIN_POINTS)
    y = (x % 10).astype(float)  # mean 4.5 over each window of 10
    sx, sy = smooth(x, y)
    assert len(sx) == MAX_TRAIN_POINTS
    assert np.allclose(sy, 4.5) and sx[0] == 9
    short = np.arange(5.0)
    assert smooth(short, short)[1] is short
