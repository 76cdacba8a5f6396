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


def test_the_figure_draws_dense_and_composed_and_lists_the_others():
    """Fewer lines at first: dense and the composed kernels drawn, the other paths in the
    legend only (a click shows one); guides always drawn."""
    fig = speed_figure(rows_growing(2, 1.5), "fwd_ms")
    visible = {t.name.split(" (slope")[0]: t.visible for t in fig.data}
    assert visible["dense causal SDPA"] is True and visible["strided, composed"] is True
    assert visible["strided, SDPA + mask"] == "legendonly"
    assert visible["N²"] is None  # a guide: plotly's default, drawn


def test_log_axes_tick_only_clean_values():
    fig = speed_figure(rows_growing(2, 1.5), "fwd_ms")
    assert list(fig.layout.xaxis.tickvals) == [1024, 2048, 4096, 8192, 16384]
    assert list(fig.layout.xaxis.ticktext) == ["1,024", "2,048", "4,096", "8,192", "16,384"]
    ys = list(fig.layout.yaxis.tickvals)
    assert all(math.log10(v) == round(math.log10(v)) for v in ys)  # decades only
    assert fig.layout.yaxis.ticktext[ys.index(1.0)] == "1"
    assert fig.layout.height >= 600  # drawn 800 px wide with the legend: about square


def test_a_recorded_command_says_each_option_once():
    from viz.speed_figure import command_text

    doubled = "python -m tools.bench_kernels --device cpu --device cpu --crossover"
    assert command_text(doubled) == "python -m tools.bench_kernels --device cpu --crossover"
    other = "python -m tools.bench_kernels --device cpu --sizes 1024 --device cuda"
    assert command_text(other) == other  # another value is kept
