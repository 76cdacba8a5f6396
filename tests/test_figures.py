"""viz/figures.py: what the figures hold, read back from the figure objects."""

import numpy as np

from viz.figures import attention_map_figure, clicked_pixel, head_grid_figure, pixel_grid_figure


def trace(fig, name: str):
    (found,) = [t for t in fig.data if t.name == name]
    return found


def test_head_grid_is_a_mosaic_of_maps_each_scaled_to_its_maximum():
    maps = np.random.default_rng(0).random((2, 3, 4, 5))
    fig = head_grid_figure(maps, "grid", selected=(1, 2), layers=[3, 5])
    heads = trace(fig, "heads")
    z = np.asarray(heads.z, dtype=float)
    assert z.shape == (2 * 5 - 1, 3 * 6 - 1)
    np.testing.assert_allclose(z[5:9, 12:17], maps[1, 2] / maps[1, 2].max())
    assert np.isnan(z[4]).all() and np.isnan(z[:, 5]).all()  # the blank lines between tiles
    assert list(fig.layout.yaxis.ticktext) == ["layer 3", "layer 5"]  # the layers it shows
    assert list(fig.layout.xaxis.ticktext) == ["head 0", "head 1", "head 2"]
    # hover: layer, head, pixel row and column, raw weight
    np.testing.assert_allclose(heads.customdata[6, 14], [5, 2, 1, 2, maps[1, 2, 1, 2]])
    assert "layer %{customdata[0]}, head %{customdata[1]}" in heads.hovertemplate
    assert "row %{customdata[2]}, col %{customdata[3]}: %{customdata[4]" in heads.hovertemplate
    (box,) = fig.layout.shapes  # the selected head
    assert (box.x0, box.y0) == (2 * 6 - 0.5, 5 - 0.5)


def test_attention_map_is_log_scaled_and_blank_without_weight():
    probs = np.array([[1.0, 0.0], [0.01, 0.99]])
    z = np.asarray(trace(attention_map_figure(probs, 1, "map"), "attention").z, dtype=float)
    assert z[0, 0] == 0 and np.isnan(z[0, 1]) and z[1, 0] == np.log10(0.01)


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
