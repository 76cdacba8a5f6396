import numpy as np
import pytest

from viz.grid import image_grid


def test_grid_places_enlarged_images():
    black = np.zeros((4, 5, 1), dtype=np.uint8)
    red = np.zeros((4, 5, 3), dtype=np.uint8)
    red[..., 0] = 255
    grid = image_grid([("a", [black, black]), ("b", [black])], scale=2, pad=1, label_width=10)
    assert grid.size == (10 + 2 * (10 + 1) + 1, 2 * (8 + 1) + 1)
    assert grid.getpixel((11, 1)) == (0, 0, 0)  # first image, top-left pixel
    assert grid.getpixel((10 + 1 + 11, 10)) == (255, 255, 255)  # the empty slot of row b
    with pytest.raises(ValueError, match="same"):
        image_grid([("a", [black, red])])
    with pytest.raises(ValueError, match="at least one"):
        image_grid([("a", [])])
