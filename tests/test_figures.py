"""viz/pixels.py, viz/maps.py, viz/mosaics.py: what the figures hold, read back from the figure
objects."""

import numpy as np
import plotly.graph_objects as go
import pytest

from tests.figure_util import image_values
from viz.maps import MAP_ROWS_TRACE, attention_map_figure, clicked_map_row
from viz.mosaics import GRID_TILES_TRACE, clicked_tile, head_grid_figure
from viz.pixels import clicked_pixel, pixel_grid_figure


def trace(fig, name: str):
    (found,) = [t for t in fig.data if t.name == name]
    return found


def test_head_grid_is_a_mosaic_of_maps_each_scaled_to_its_maximum():
    maps = np.random.default_rng(0).random((2, 3, 4, 5))
    fig = head_grid_figure(maps, "grid", layers=[3, 5])
    heads = trace(fig, "heads")  # one image: its colours on the Viridis scale over [0, 1]
    z = image_values(heads)
    assert z.shape == (2 * 5 - 1, 3 * 6 - 1)
    np.testing.assert_allclose(z[5:9, 12:17], maps[1, 2] / maps[1, 2].max(), atol=0.005)
    assert np.isnan(z[4]).all() and np.isnan(z[:, 5]).all()  # the blank lines between tiles
    assert list(fig.layout.yaxis.ticktext) == ["layer 3", "layer 5"]  # the layers it shows
    assert list(fig.layout.xaxis.ticktext) == ["head 0", "head 1", "head 2"]
    # one click target per tile at its centre, its hover naming the layer, head and peak
    tiles = trace(fig, "tiles")
    assert fig.data.index(tiles) == GRID_TILES_TRACE and heads.hoverinfo == "skip"
    assert (tiles.x[5], tiles.y[5]) == (2 * 6 + 2, 5 + 1.5)  # tile (1, 2) = point 1 * 3 + 2
    r, c = divmod(int(maps[1, 2].argmax()), 5)
    assert tiles.text[5].startswith(f"layer 5, head 2<br>peak {maps[1, 2].max():.4f}")
    assert f"at row {r}, col {c}" in tiles.text[5]
    assert fig.layout.hoverdistance == -1  # the nearest tile centre, anywhere in the chart
    event = {"selection": {"points": [{"curve_number": 1, "point_index": 5}]}}
    assert clicked_tile(event, 3) == (1, 2)
    assert clicked_tile({"selection": {"points": [{"curve_number": 0, "x": 1}]}}, 3) is None
    assert clicked_tile(None, 3) is None
    assert not fig.layout.shapes  # no query given: nothing outlined


def test_attention_map_is_log_scaled_and_blank_without_weight():
    """One image coloured by log10 p over [-6, 0] (its colour bar says so), transparent
    where a pair has no weight."""
    probs = np.array([[1.0, 0.0, 0.0], [0.01, 0.99, 0.0], [1e-9, 0.5, 0.5]])
    fig = attention_map_figure(probs, 1, "map")
    log_p = -6 + 6 * image_values(trace(fig, "attention"))  # the colours read back
    want = np.array([[0, np.nan, np.nan], [-2, np.log10(0.99), np.nan], [-6, -0.301, -0.301]])
    np.testing.assert_allclose(log_p, want, atol=0.03)  # (1e-9: below the scale, its end)
    bar = trace(fig, "colour bar").marker
    assert list(bar.colorbar.ticktext) == ["-6", "-5", "-4", "-3", "-2", "-1", "0"]
    np.testing.assert_allclose(bar.colorbar.tickvals, np.arange(7) / 6)
    # the bar's scale is the one the colours were read back on
    assert bar.colorscale == go.scatter.Marker(colorscale="Viridis").colorscale


def test_attention_map_rows_hover_their_peak():
    """Each map row's hover names its queries and the cell they weigh most, from the weights
    themselves (no number per cell is sent)."""
    probs = np.array([[1.0, 0, 0], [0.2, 0.8, 0], [0.5, 0.1, 0.4]])
    peaks = trace(attention_map_figure(probs, 4, "m"), "queries").customdata
    # rows of 4 queries (the last one of a 12-token map ends at 11), the peak's keys and log p
    np.testing.assert_allclose(
        peaks,
        [[0, 3, 0, 3, 0], [4, 7, 4, 7, np.log10(0.8)], [8, 11, 0, 3, np.log10(0.5)]],
        rtol=1e-6,
    )
    # 10 tokens: the last row of tiles holds queries 8-9 and the last column keys 8-9
    short = trace(attention_map_figure(probs, 4, "m", n_tokens=10), "queries").customdata
    assert list(short[2, :2]) == [8, 9]
    exact = trace(attention_map_figure(probs, 1, "m"), "queries")
    assert exact.hovertemplate.startswith("query %{y}: most weight on key %{customdata[2]}")
    assert list(exact.customdata[:, 2]) == [0, 1, 0]


def test_attention_map_rows_are_click_targets():
    fig = attention_map_figure(np.eye(5) / 1.0, 4, "map")  # 5 map rows of 4 queries each
    rows = trace(fig, "queries")
    assert fig.data.index(rows) == MAP_ROWS_TRACE and fig.layout.hovermode == "y"
    # the axes in tokens: each row's point on the diagonal cell of its row, at its first query,
    # the image's pixel k centred there; hovering by row, the cursor anywhere on a row hovers
    # its point, and the axis names that query (the image's own hover is off: in hovermode "y"
    # it would name the diagonal's cell, not the one under the cursor)
    assert list(rows.y) == list(rows.x) == [0, 4, 8, 12, 16]
    image = trace(fig, "attention")
    assert (image.x0, image.dx, image.y0, image.dy) == (0, 4, 0, 4)
    assert image.hoverinfo == "skip"
    assert rows.hovertemplate.startswith("queries %{customdata[0]}-%{customdata[1]}: most")
    assert list(rows.customdata[3, :2]) == [12, 15]
    # the image from -2 (pixel 0 is 4 tokens wide) to 18; token t at t - 1.5, ticked there
    assert fig.layout.yaxis.type is None and list(fig.layout.yaxis.range) == [18, -2]
    assert list(fig.layout.xaxis.range) == [-2, 18]
    assert list(fig.layout.xaxis.ticktext)[:2] == ["0", "5"]
    assert list(fig.layout.xaxis.tickvals)[:2] == [-1.5, 3.5]
    event = {"selection": {"points": [{"curve_number": 1, "point_index": 3, "y": 13.5}]}}
    assert clicked_map_row(event) == 3
    assert clicked_map_row({"selection": {"points": [{"curve_number": 0}]}}) is None


def test_pixel_grid_points_are_pixels_and_clicks_map_back():
    values = np.arange(12, dtype=float).reshape(3, 4)
    fig = pixel_grid_figure(values, title="t", query=(1, 2), outline=values > 9)
    pixels = trace(fig, "pixels")
    assert list(pixels.marker.color) == list(range(12))
    assert (list(pixels.x)[6], list(pixels.y)[6]) == (2, 1)  # point i is pixel divmod(i, 4)
    assert list(trace(fig, "layout").x) == [2, 3] and list(trace(fig, "query").y) == [1]
    event = {"selection": {"points": [{"curve_number": 0, "point_index": 6}]}}
    assert clicked_pixel(event, 4) == (1, 2)
    assert (
        clicked_pixel({"selection": {"points": []}}, 4) is None and clicked_pixel(None, 4) is None
    )


def test_pixel_grid_hover_from_numbers():
    values = np.arange(6, dtype=float).reshape(2, 3)
    extra = np.stack([values, 10 * values], axis=-1)  # [H, W, 2]
    fig = pixel_grid_figure(
        values, title="t", hover_values=extra, hover_template="row %{y}, col %{x}: %{customdata[1]}"
    )
    pixels = trace(fig, "pixels")
    assert pixels.text is None and pixels.hovertemplate.startswith("row %{y}, col %{x}: %{custom")
    np.testing.assert_array_equal(np.asarray(pixels.customdata)[4], [4, 40])  # pixel (1, 1)
    assert (pixels.x[4], pixels.y[4]) == (1, 1)  # %{x} is the column, %{y} the row
    plain = trace(pixel_grid_figure(values, title="t"), "pixels")  # default: the value itself
    assert plain.text is None and "%{marker.color" in plain.hovertemplate


def test_click_targets_are_data_not_drawn_nodes():
    """Every invisible click layer is hovered and selected by plotly from its data, but draws
    one point only (hundreds of SVG nodes were most of a view's redraw in the browser)."""
    rng = np.random.default_rng(0)
    figs = {
        "pixels": pixel_grid_figure(rng.random((4, 5)), title="t"),
        "tiles": head_grid_figure(rng.random((2, 2, 4, 5)), "g"),
        "queries": attention_map_figure(np.tril(rng.random((6, 6))), 2, "m"),
    }
    for name, fig in figs.items():
        layer = trace(fig, name)
        assert layer.marker.opacity == 0 and layer.marker.maxdisplayed == 1, name


def test_head_grid_has_a_colour_bar_and_a_shared_scale_that_keeps_faint_heads_visible():
    """Each tile on its own scale: a colour bar in shares of its peak. One shared scale: the
    weights over a robust cap (the 99th percentile of the positive weights), square-rooted,
    the colour bar labelled in weights and the subtitle saying how; a diffuse head is not
    drowned by one sharp head as it was on a linear scale to the grid's maximum."""
    from viz.mosaics import GRID_PERCENTILE, grid_scale

    rng = np.random.default_rng(1)
    maps = rng.random((2, 2, 10, 10))
    maps /= maps.sum((2, 3), keepdims=True)  # diffuse heads: about 0.01 each
    maps[0, 0] = 0
    maps[0, 0, 3, 3] = 1.0  # one sharp head
    own = head_grid_figure(maps, "g")
    bar = trace(own, "colour bar").marker  # the image has no colour bar: a trace draws it
    assert bar.showscale and "peak" in bar.colorbar.title.text
    assert list(bar.colorbar.ticktext) == ["0%", "25%", "50%", "75%", "100%"]
    assert "own scale" in own.layout.title.subtitle.text
    shared = head_grid_figure(maps, "g", shared_scale=True)
    z = image_values(trace(shared, "heads"))
    cap = np.percentile(maps[maps > 0], GRID_PERCENTILE)
    want = np.clip(maps[1, 1] / cap, 0, 1) ** 0.5
    np.testing.assert_allclose(z[11:21, 11:21], want, atol=0.005)
    assert z[3, 3] == pytest.approx(1.0, abs=0.005)  # the sharp pixel saturates
    diffuse = z[11:21, 11:21]
    assert np.median(diffuse) > 0.4  # visible: on a linear scale to the max it was ~0.01
    assert np.median(maps[1, 1] / maps.max()) < 0.02
    assert f"{cap:.3g}" in shared.layout.title.subtitle.text
    bar = trace(shared, "colour bar").marker
    assert "square root" in bar.colorbar.title.text
    # the colour bar's labels are weights: the top one is the cap, a quarter way is cap / 16
    assert float(bar.colorbar.ticktext[-1]) == pytest.approx(cap, rel=0.05)
    assert float(bar.colorbar.ticktext[1]) == pytest.approx(cap / 16, rel=0.05)
    # all zero: no division by zero, black tiles
    scaled, _, _ = grid_scale(np.zeros((1, 2, 3, 3)), True)
    assert np.isfinite(scaled).all() and (scaled == 0).all()
