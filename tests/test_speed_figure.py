"""viz/speed_figure.py: the measured curves, their slopes and the guides, from plain rows."""

import math

import pytest

from viz.speed_figure import fitted_power, series, slope_line, speed_figure


def rows_growing(power_dense: float, power_sparse: float) -> list[dict]:
    rows = []
    for n in (1024, 4096, 16384):
        rows.append(
            {
                "N": n,
                "case": "dense causal SDPA",
                "layout": "dense",
                "fwd_ms": 1e-6 * n**power_dense,
                "fwd_bwd_ms": 3e-6 * n**power_dense,
            }
        )
        rows.append(
            {
                "N": n,
                "case": "composed",
                "layout": "strided",
                "fwd_ms": 1e-5 * n**power_sparse,
                "fwd_bwd_ms": None,
            }
        )
        rows.append(
            {
                "N": n,
                "case": "masked SDPA",
                "layout": "strided",
                "fwd_ms": None if n == 16384 else 2e-6 * n**2,
                "fwd_bwd_ms": None,
            }
        )
    return rows  # fmt: skip


def test_the_fitted_slope_is_the_power_of_n():
    ns = [1024, 4096, 16384, 65536]
    assert fitted_power(ns, [n**2 * 3.0 for n in ns]) == pytest.approx(2.0)
    assert fitted_power(ns, [n * math.sqrt(n) for n in ns]) == pytest.approx(1.5)
    assert fitted_power([1024], [1.0]) is None


def test_series_keep_only_what_was_run_in_order():
    lines = series(list(reversed(rows_growing(2, 1.5))), "fwd_ms")
    assert lines[("masked SDPA", "strided")][0] == [1024, 4096]  # 16,384 was not run
    assert lines[("composed", "strided")][0] == [1024, 4096, 16384]
    assert ("composed", "strided") not in series(rows_growing(2, 1.5), "fwd_bwd_ms")


def test_the_figure_draws_each_path_with_its_slope_and_the_guides():
    fig = speed_figure(rows_growing(2, 1.5), "fwd_ms")
    names = [t.name for t in fig.data]
    assert names[:2] == ["N² (slope 2)", "N·√N (slope 1.5)"]
    assert "dense causal SDPA (slope 2.00)" in names
    assert "strided, composed (slope 1.50)" in names
    assert fig.layout.xaxis.type == "log" and fig.layout.yaxis.type == "log"
    guide = fig.data[0]  # through dense's first point, growing as N^2
    assert guide.y[0] == pytest.approx(1e-6 * 1024**2)
    assert guide.y[-1] / guide.y[0] == pytest.approx(16**2)
    assert slope_line([2, 4], 2, 3.0, 1.5) == pytest.approx([3.0, 3.0 * 2**1.5])


def test_an_unknown_metric_is_refused():
    with pytest.raises(ValueError, match="metric must be one of"):
        speed_figure([], "seconds")
