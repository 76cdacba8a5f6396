"""analysis/maps.py: per-token values onto pixels, one channel or all of a pixel's tokens."""

import numpy as np
import pytest

from analysis.maps import pixel_map
from models.tokens import Geometry, pixel_to_token


def test_pixel_map_takes_a_channel_or_combines_a_pixels_tokens():
    g = Geometry(2, 3, 3)
    values = np.arange(g.n_tokens, dtype=np.float64) ** 2  # every token a different value
    for r in range(2):
        for c in range(3):
            mine = [values[pixel_to_token(r, c, ch, g)] for ch in range(3)]
            for ch in range(3):
                assert pixel_map(values, g, ch)[r, c] == mine[ch]
            assert pixel_map(values, g, None)[r, c] == sum(mine)
            assert pixel_map(values, g, None, combine="mean")[r, c] == pytest.approx(sum(mine) / 3)
    stacked = np.stack([values, 2 * values])  # leading dims are kept: [2, H, W]
    np.testing.assert_array_equal(pixel_map(stacked, g, 1)[1], 2 * pixel_map(values, g, 1))


def test_pixel_map_of_a_grey_image_is_its_only_channel():
    g = Geometry(3, 2, 1)
    values = np.arange(6.0)
    np.testing.assert_array_equal(pixel_map(values, g, 0), pixel_map(values, g, None))


def test_pixel_map_refuses_what_has_no_meaning():
    g = Geometry(2, 2, 3)
    with pytest.raises(ValueError, match="channel 3"):
        pixel_map(np.zeros(12), g, 3)
    with pytest.raises(ValueError, match="combine"):
        pixel_map(np.zeros(12), g, None, combine="max")
    with pytest.raises(ValueError, match="tokens"):
        pixel_map(np.zeros(5), g, 0)
