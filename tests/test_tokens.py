"""models/tokens.py: the one pixel <-> token mapping (raster order, channels interleaved)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from models.tokens import (
    Geometry,
    image_to_tokens,
    images_to_tokens,
    pixel_to_token,
    pixel_tokens,
    token_coords,
    tokens_to_image,
)

rng = np.random.default_rng(0)


def random_image(h: int, w: int, c: int) -> np.ndarray:
    return rng.integers(0, 256, size=(h, w, c), dtype=np.uint8)


def test_geometry_basics():
    g = Geometry(28, 28, 1)
    assert g.n_tokens == 784
    assert str(g) == "28x28x1"
    assert str(Geometry(32, 16, 3)) == "32x16x3"
    assert Geometry(32, 32, 3) == (32, 32, 3)


def test_row_stride_is_one_image_row_of_tokens():
    assert Geometry(28, 28, 1).row_stride == 28
    assert Geometry(32, 32, 3).row_stride == 96
    g = Geometry(4, 5, 3)
    # the token below token i (same column and channel, next row) is i + row_stride
    for i in range(g.n_tokens - g.row_stride):
        r, c, ch = token_coords(i, g)
        assert token_coords(i + g.row_stride, g) == (r + 1, c, ch)


@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 32, 3), (5, 9, 3)])
def test_roundtrip_exact(shape):
    img = random_image(*shape)
    tokens = image_to_tokens(img)
    assert tokens.dtype == torch.long and tokens.shape == (img.size,)
    back = tokens_to_image(tokens, Geometry(*shape))
    assert back.dtype == np.uint8 and back.shape == shape
    np.testing.assert_array_equal(back, img)
    # numpy input works too
    np.testing.assert_array_equal(tokens_to_image(tokens.numpy(), Geometry(*shape)), img)


def test_raster_order_channels_interleaved():
    # pixel (r, c) has colour (10*(2r+c) + 1, +2, +3): tokens must be R,G,B of each pixel in turn
    img = np.array(
        [[[1, 2, 3], [11, 12, 13]], [[21, 22, 23], [31, 32, 33]]],
        dtype=np.uint8,
    )
    expected = [1, 2, 3, 11, 12, 13, 21, 22, 23, 31, 32, 33]
    assert image_to_tokens(img).tolist() == expected
    assert [token_coords(i, Geometry(2, 2, 3)) for i in (0, 4, 8, 11)] == [
        (0, 0, 0),
        (0, 1, 1),
        (1, 0, 2),
        (1, 1, 2),
    ]


def test_gray_2d_input_and_batch():
    img = random_image(4, 6, 1)
    assert torch.equal(image_to_tokens(img[:, :, 0]), image_to_tokens(img))
    batch = np.stack([random_image(4, 6, 3) for _ in range(3)])
    tokens = images_to_tokens(batch)
    assert tokens.shape == (3, 72) and tokens.dtype == torch.long
    assert torch.equal(tokens[1], image_to_tokens(batch[1]))
    np.testing.assert_array_equal(tokens_to_image(tokens, Geometry(4, 6, 3)), batch)


def test_a_dataset_can_stay_one_byte_per_token():
    batch = np.stack([random_image(4, 6, 3) for _ in range(3)])
    compact = images_to_tokens(batch, dtype=np.uint8)
    assert compact.dtype == torch.uint8 and compact.shape == (3, 72)
    assert np.shares_memory(compact.numpy(), batch)  # a view: no copy of the dataset
    assert torch.equal(compact.long(), images_to_tokens(batch))


@pytest.mark.parametrize("shape", [(3, 5, 3), (4, 4, 1), (2, 7, 3)])
def test_token_coords_match_pixels(shape):
    g = Geometry(*shape)
    img = random_image(*shape)
    tokens = image_to_tokens(img)
    idx = np.arange(g.n_tokens)
    rows, cols, chans = token_coords(idx, g)
    trows, tcols, tchans = token_coords(torch.arange(g.n_tokens), g)
    assert isinstance(rows, np.ndarray) and isinstance(trows, torch.Tensor)
    for i in range(g.n_tokens):
        r, c, ch = token_coords(i, g)
        assert all(type(v) is int for v in (r, c, ch))
        assert (rows[i], cols[i], chans[i]) == (r, c, ch)
        assert (int(trows[i]), int(tcols[i]), int(tchans[i])) == (r, c, ch)
        assert img[r, c, ch] == tokens[i]
    np.testing.assert_array_equal(img[rows, cols, chans], tokens.numpy())


@pytest.mark.parametrize("shape", [(3, 5, 3), (4, 4, 1), (1, 1, 1)])
def test_pixel_to_token_inverts_token_coords(shape):
    g = Geometry(*shape)
    for i in range(g.n_tokens):
        assert pixel_to_token(*token_coords(i, g), g) == i
    with pytest.raises(ValueError, match="outside"):
        pixel_to_token(g.height, 0, 0, g)
    with pytest.raises(ValueError, match="outside"):
        pixel_to_token(0, -1, 0, g)
    with pytest.raises(ValueError, match="channel"):
        pixel_to_token(0, 0, g.channels, g)


def test_token_coords_out_of_range():
    g = Geometry(2, 2, 3)
    for bad in (-1, 12):
        with pytest.raises(IndexError):
            token_coords(bad, g)
    with pytest.raises(IndexError):
        token_coords(np.array([0, 12]), g)
    with pytest.raises(IndexError):
        token_coords(torch.tensor([-1, 0]), g)
    with pytest.raises(ValueError):
        token_coords(np.array([0.5]), g)


def test_token_coords_refuses_what_is_not_an_index():
    g = Geometry(2, 2, 3)
    with pytest.raises(ValueError, match="integers"):
        token_coords(torch.tensor([True, False]), g)
    with pytest.raises(ValueError, match="integers"):
        token_coords(torch.tensor([1.0]), g)
    for bad in (True, 1.0, "3"):
        with pytest.raises(TypeError):
            token_coords(bad, g)


def test_token_conversion_errors():
    with pytest.raises(ValueError, match="uint8"):
        image_to_tokens(np.zeros((2, 2, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="shape"):
        image_to_tokens(np.zeros(5, dtype=np.uint8))
    with pytest.raises(ValueError):
        images_to_tokens(np.zeros((2, 2, 3), dtype=np.uint8))
    g = Geometry(2, 2, 3)
    with pytest.raises(ValueError, match="0..255"):
        tokens_to_image(torch.full((12,), 256), g)
    with pytest.raises(ValueError, match="0..255"):
        tokens_to_image(torch.full((12,), -1), g)
    with pytest.raises(ValueError) as err:
        tokens_to_image(torch.zeros(10, dtype=torch.long), g)
    assert "10" in str(err.value) and "12" in str(err.value)
    with pytest.raises(ValueError):
        tokens_to_image(torch.zeros(12), g)  # float tokens


def test_the_mapping_works_without_importing_torch():
    """The app's first page maps pixels to tokens before anything has imported torch."""
    code = textwrap.dedent(
        """
        import sys
        import numpy as np
        from models.tokens import Geometry, pixel_to_token, token_coords, tokens_to_image
        g = Geometry(4, 5, 3)
        assert [int(v[7]) for v in token_coords(np.arange(g.n_tokens), g)] == [0, 2, 1]
        assert pixel_to_token(1, 2, 1, g) == 22 and g.row_stride == 15
        assert tokens_to_image(np.arange(60), g).shape == (4, 5, 3)
        print("torch" in sys.modules)
        """
    )
    root = Path(__file__).resolve().parents[1]
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert (run.returncode, run.stdout.strip()) == (0, "False"), run.stderr[-2000:]


def test_pixel_tokens_are_a_pixels_channels():
    g = Geometry(4, 5, 3)
    whole = pixel_tokens(2, 3, g)
    assert list(whole) == [0, 1, 2]  # red, green, blue, in token order
    assert list(whole.values()) == [pixel_to_token(2, 3, ch, g) for ch in range(3)]
    assert [token_coords(t, g) for t in whole.values()] == [(2, 3, ch) for ch in range(3)]
    assert pixel_tokens(2, 3, g, 1) == {1: whole[1]}
    assert pixel_tokens(0, 0, Geometry(2, 2, 1)) == {0: 0}
