"""viz/charts.py, viz/head_tables.py, viz/mosaics.py: the figures of the inspection pages, built
from arrays, read back, and written in every export format (matplotlib draws them again for PNG,
SVG and PDF)."""

from __future__ import annotations

import io

import numpy as np
import pytest

from analysis.metrics import HEAD_TYPES
from viz.charts import bpd_figure, curves_figure, distribution_figure
from viz.export import FORMATS, Exportable, export_bytes
from viz.head_tables import head_table_figure, type_timeline_figure
from viz.mosaics import mosaic_figure
from viz.style import BITS_COLORS, DIFF_COLORS, diverging_range


def figures() -> dict:
    rng = np.random.default_rng(0)
    maps = rng.random((2, 3, 28, 28))
    probs = rng.random(256)
    probs /= probs.sum()
    steps = [0, 1, 3, 10]
    return {
        "mosaic": mosaic_figure(
            maps, title="m", col_labels=["a", "b", "c"], row_labels=["x", "y"], colorbar_title="v"
        ),
        "bits": mosaic_figure(
            maps[0], title="b", col_labels=["a", "b", "c"], colorscale=BITS_COLORS, zmin=0
        ),
        "distribution": distribution_figure({"dense": probs, "strided": probs}, 7, "d"),
        "curves": curves_figure(
            steps,
            {"L0H0": np.arange(4.0), "L0H1": np.ones(4)},
            title="c",
            y_title="y",
            x=list(range(4)),
        ),  # fmt: skip
        "heads": head_table_figure(
            rng.random((2, 2)), title="h", colorbar_title="r", labels=np.full((2, 2), "local")
        ),
        "types": type_timeline_figure(
            rng.integers(0, len(HEAD_TYPES), (4, 2, 2)), steps, title="t"
        ),
        "bpd": bpd_figure(
            train=(np.arange(1, 11), np.linspace(8, 4, 10)),
            test=(np.array([5, 10]), np.array([6.0, 4.5])),
            probes=(np.array(steps), np.array([8.0, 7, 6, 4])),
        ),
    }


def test_mosaic_tiles_labels_and_scales():
    maps = np.arange(2 * 3 * 4 * 5, dtype=float).reshape(2, 3, 4, 5)
    fig = mosaic_figure(maps, title="t", col_labels=list("abc"), row_labels=["r0", "r1"])
    z = np.asarray(fig.data[0].z, dtype=float)
    assert z.shape == (2 * 5 - 1, 3 * 6 - 1)  # a blank line between tiles
    assert np.array_equal(z[5:9, 6:11], maps[1, 1]) and np.isnan(z[4]).all()
    assert list(fig.layout.xaxis.ticktext) == list("abc")
    tiles = fig.data[0]  # hover: the tile's name, then its pixel and raw value as numbers
    assert tiles.text[5, 6] == "r1 b" and tiles.text[4, 6] == ""
    np.testing.assert_array_equal(tiles.customdata[5, 7], [0, 1, maps[1, 1, 0, 1]])
    assert tiles.hovertemplate.startswith("%{text}<br>row %{customdata[0]}, col %{customdata[1]}")
    scaled = np.asarray(
        mosaic_figure(maps, title="t", col_labels=list("abc"), per_tile=True).data[0].z
    )
    assert np.nanmax(scaled[:4, :5]) == 1.0 and np.nanmax(scaled[5:, 12:]) == 1.0
    with pytest.raises(ValueError):
        mosaic_figure(maps, title="t", col_labels=["a"])


def test_distribution_marks_the_true_value():
    p = np.zeros(256)
    p[7] = 0.25
    p[9] = 0.75
    fig = distribution_figure({"m": p}, 7, "d")
    (mark,) = [t for t in fig.data if t.name.startswith("true value")]
    assert list(mark.x) == [7] and list(mark.y) == [0.25]
    # one true value per curve: the three channels of a colour pixel
    q = np.roll(p, 1)  # 0.25 at 8, 0.75 at 10
    fig = distribution_figure({"m red": p, "m green": q}, {"m red": 9, "m green": 8}, "d")
    marks = [t for t in fig.data if t.name.startswith("true value")]
    assert [(list(t.x), list(t.y)) for t in marks] == [([9], [0.75]), ([8], [0.25])]


def test_colour_scales_are_lists_plotly_js_can_read():
    for scale in (BITS_COLORS, DIFF_COLORS):
        assert scale[0][0] == 0 and scale[-1][0] == 1
        assert all(c.startswith("rgb(") for _, c in scale)
    assert diverging_range(np.array([-2.0, 1.0, 0.5])) > 0
    assert diverging_range(np.zeros(3)) > 0  # never an empty range


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_figure_exports(fmt):
    for name, fig in figures().items():
        item = Exportable(name, fig, {"x": np.arange(3)}, {"model": "m"})
        data = export_bytes(item, fmt, dpi=60)
        assert len(data) > 100, (name, fmt)
        if fmt == "npz":
            assert "metadata" in np.load(io.BytesIO(data)).files


def test_curves_keep_markers_and_legend_while_few():
    steps = list(range(16))
    few = curves_figure(steps, {"a": np.arange(16.0), "b": np.ones(16)}, title="t", y_title="y")
    assert few.data[0].mode == "lines+markers" and few.layout.showlegend is not False
    many = {f"L{i}H{j}": np.arange(16.0) for i in range(8) for j in range(4)}  # 512 points
    fig = curves_figure(steps, many, title="t", y_title="y")
    assert len(fig.data) == 32 and {t.mode for t in fig.data} == {"lines"}
    assert fig.layout.showlegend is False
