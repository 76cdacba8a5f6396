"""viz/layout_view.py: the arrays that draw a layout, and the pooling of N x N maps."""

import numpy as np
import pytest

from kernels import layouts as L
from models.tokens import Geometry
from viz.layout_view import mask_view, part_codes, part_names, pixel_view, pool_tiles, tile_for


def test_tile_for_keeps_at_most_max_side_cells():
    assert tile_for(392, 392) == 1 and tile_for(393, 392) == 2 and tile_for(784, 392) == 2
    assert tile_for(3072, 256) == 12 and tile_for(1, 256) == 1


def test_pool_tiles_is_the_mean_of_the_entries_each_tile_has():
    a = np.arange(5 * 7, dtype=float).reshape(5, 7)
    pooled = pool_tiles(a, 2)
    assert pooled.shape == (3, 4)
    for i in range(3):
        for j in range(4):
            assert pooled[i, j] == pytest.approx(a[2 * i : 2 * i + 2, 2 * j : 2 * j + 2].mean())
    np.testing.assert_array_equal(pool_tiles(a, 1), a)
    assert pool_tiles(np.ones((3, 3), dtype=bool), 2).tolist() == [[1, 1], [1, 1]]


@pytest.mark.parametrize("layout", [L.strided(28), L.fixed(28, 2)], ids=repr)
def test_pooled_mask_is_the_density_of_the_exact_mask(layout):
    n = 520  # pooled into tiles of 3 (at most 256 a side), the last one partial
    exact, tile = mask_view(layout, n)
    assert tile == 1 and exact.shape == (n, n) and (exact > 0).sum() == layout.nnz(n)
    pooled, tile = mask_view(layout, n, max_cells=100)
    assert tile == 3 and pooled.shape == (174, 174)
    np.testing.assert_allclose(pooled, pool_tiles(exact > 0, tile), atol=1e-6)


def test_part_codes_and_pixel_view_name_the_first_part():
    lay = L.strided(4)
    codes = part_codes(lay, np.array([9]), 10)[0]
    names = part_names(lay)
    assert [names[c - 1] if c else "" for c in codes] == (
        ["", "column", "", "", "", "column", "local", "local", "local", "local"]
    )
    g = Geometry(3, 4, 1)
    view = pixel_view(lay, g, 9)
    assert view.shape == (3, 4) and view.reshape(-1)[:10].tolist() == codes.tolist()
    with pytest.raises(ValueError, match="outside"):
        pixel_view(lay, g, 12)
