"""analysis/attention.py: a model's attention on one image as arrays; the forms agree."""

import numpy as np
import pytest
import torch

from analysis.attention import capture_image, head_maps, query_rows
from models import ModelConfig, SparseTransformer
from models.tokens import pixel_to_token
from viz.layout_view import pool_tiles

IMAGE = np.random.default_rng(0).integers(0, 256, (28, 28, 1), dtype=np.uint8)


def tiny(layout: str = "strided(l=28)") -> SparseTransformer:
    torch.manual_seed(0)
    return SparseTransformer(ModelConfig.from_name("fmnist-tiny", layout=layout)).eval()


@pytest.fixture(scope="module")
def model() -> SparseTransformer:
    return tiny()


def test_query_rows_are_rows_of_the_full_maps(model):
    q = pixel_to_token(10, 5, 0, model.config.geometry)
    rows = query_rows(model, IMAGE, q)  # [L, H, N]
    assert rows.shape == (2, 2, 784) and rows.dtype == np.float32
    np.testing.assert_allclose(rows.sum(-1), 1, atol=1e-5)  # softmax rows
    assert (rows[..., q + 1 :] == 0).all()  # causal: no later key
    for layer in range(2):
        full = head_maps(model, IMAGE, layer)
        assert full.shape == (2, 784, 784) and full.dtype == np.float32
        np.testing.assert_allclose(rows[layer], full[:, q], atol=1e-6)
    np.testing.assert_array_equal(query_rows(model, IMAGE, q, layers=[1, 0]), rows[::-1])


def test_pooled_maps_are_the_tile_means_of_the_full_map():
    dense = tiny("dense()")
    full = head_maps(dense, IMAGE, 1)
    pooled = head_maps(dense, IMAGE, 1, tile=3)  # 784 = 3 * 261 + 1: a partial last tile
    assert pooled.shape == (2, 262, 262)
    for h in range(2):
        np.testing.assert_allclose(pooled[h], pool_tiles(full[h], 3), rtol=1e-5, atol=1e-7)


def test_capture_image_keeps_every_head_row_and_the_chosen_maps(model):
    att = capture_image(model, IMAGE, query=(10, 5), layers=[1], heads=[1])
    q = pixel_to_token(10, 5, 0, model.config.geometry)
    assert att.query == (10, 5) and att.query_token == q
    assert att.layers == [1] and att.heads == [1] and att.layouts == [model.layouts[1]]
    assert att.rows.shape == (1, 2, 784)  # every head: the overview grid shows them all
    assert att.maps.shape == (1, 1, 784, 784)  # the chosen head only
    np.testing.assert_allclose(att.maps[0, 0], head_maps(model, IMAGE, 1)[1], atol=1e-6)
    np.testing.assert_allclose(att.rows, query_rows(model, IMAGE, q, [1]), atol=1e-6)
    light = capture_image(model, IMAGE, query=(10, 5), maps=False)  # every layer, no maps
    assert light.maps is None and light.layers == [0, 1] and light.heads == [0, 1]
    np.testing.assert_allclose(light.rows[1:], att.rows, atol=1e-6)
    assert np.array_equal(light.image, IMAGE) and light.geometry == model.config.geometry
