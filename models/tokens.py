"""Image <-> token sequence: the one home of the pixel <-> token mapping.

A Sparse Transformer models an image as a flat sequence of 8-bit tokens. We use raster order with
colour channels interleaved per pixel (R,G,B of pixel 0, then pixel 1, ...), so token ``i`` of an
image with width W and C channels (row stride ``W*C``, ``Geometry.row_stride``) sits at::

    row = i // (W*C),  col = (i // C) % W,  channel = i % C

Everything that leaves this module is either a ``torch.LongTensor`` of tokens or a ``np.uint8``
array shaped [H, W, C] (or [N, H, W, C]); grayscale images keep an explicit C=1 axis so the rest of
the code never has to special-case them. docs/DESIGN.md, "Token order" states the convention.

This module imports torch only where it makes tensors (tensors it is given are recognised by
their ``detach`` method), so the app's first page, which needs Geometry and token_coords but no
tensors, does not pay torch's import time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

if TYPE_CHECKING:
    import torch


class Geometry(NamedTuple):
    """Shape of an image as the model sees it; the sequence length is height*width*channels."""

    height: int
    width: int
    channels: int

    @property
    def n_tokens(self) -> int:
        return self.height * self.width * self.channels

    @property
    def row_stride(self) -> int:
        """Tokens per image row: token i + row_stride is the pixel below token i. It is the
        natural l of the strided and fixed layouts."""
        return self.width * self.channels

    def __str__(self) -> str:
        return f"{self.height}x{self.width}x{self.channels}"


def _check_uint8(images: np.ndarray) -> None:
    if not isinstance(images, np.ndarray):
        raise TypeError(f"expected a numpy array, got {type(images).__name__}")
    if images.dtype != np.uint8:
        raise ValueError(f"expected dtype uint8, got {images.dtype}")


def image_to_tokens(image: np.ndarray) -> torch.Tensor:
    """Flatten one uint8 image [H, W, C] (or [H, W], meaning C=1) into a LongTensor [H*W*C].

    A C-order reshape of an HWC array is exactly raster order with channels interleaved, which is
    why the whole module standardises on HWC.
    """
    _check_uint8(image)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3:
        raise ValueError(f"expected an image of shape [H, W, C] or [H, W], got {image.shape}")
    return images_to_tokens(image[None])[0]  # [H, W, C] as a batch of one -> [H*W*C]


def images_to_tokens(images: np.ndarray, *, dtype: type = np.int64) -> torch.Tensor:
    """Flatten a uint8 batch [B, H, W, C] into tokens [B, H*W*C] (same order as above).

    Tokens are int64 (what embeddings and losses index with) unless ``dtype`` says otherwise:
    ``np.uint8`` shares the images' memory where it can, so a dataset costs one byte per token
    until each batch is cast.
    """
    _check_uint8(images)
    if images.ndim != 4:
        raise ValueError(f"expected a batch of shape [B, H, W, C], got {images.shape}")
    import torch

    flat = images.reshape(images.shape[0], -1)  # [B, H, W, C] -> [B, H*W*C], raster order
    return torch.from_numpy(flat.astype(dtype, copy=False))


def _as_numpy(x: Any) -> np.ndarray:
    """An array or tensor as a numpy array; a tensor is detached and brought to the CPU first."""
    if hasattr(x, "detach"):  # a torch tensor (torch is never imported to ask)
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def tokens_to_image(tokens: torch.Tensor | np.ndarray, geometry: Geometry) -> np.ndarray:
    """Inverse of image_to_tokens: [N] -> uint8 [H, W, C], or a batch [B, N] -> [B, H, W, C].

    Values outside 0..255 are an error rather than being wrapped or clipped, because they mean a
    bug upstream (e.g. a sampler emitting the wrong vocabulary) that silent casting would hide.
    """
    arr = _as_numpy(tokens)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"tokens must be integers, got dtype {arr.dtype}")
    if arr.ndim not in (1, 2):
        raise ValueError(f"tokens must have shape [N] or [B, N], got {tuple(arr.shape)}")
    n = geometry.n_tokens
    if arr.shape[-1] != n:
        raise ValueError(f"got {arr.shape[-1]} tokens but geometry {geometry} needs {n} tokens")
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise ValueError(
            f"token values must be in 0..255, got range {int(arr.min())}..{int(arr.max())}"
        )
    return arr.astype(np.uint8).reshape(arr.shape[:-1] + tuple(geometry))  # [..., H, W, C]


def token_coords(i: Any, geometry: Geometry) -> tuple[Any, Any, Any]:
    """(row, col, channel) of token index ``i``; vectorised for numpy arrays and torch tensors.

    Used to label attention patterns and to map a token back onto the pixel it describes.
    """
    n = geometry.n_tokens
    if isinstance(i, np.ndarray) or hasattr(i, "detach"):
        arr = _as_numpy(i)
        if not np.issubdtype(arr.dtype, np.integer):  # bool is not an integer dtype here
            raise ValueError(f"token indices must be integers, got dtype {arr.dtype}")
        if arr.size and (arr.min() < 0 or arr.max() >= n):
            raise IndexError(f"token index out of range 0..{n - 1}: got {arr.min()}..{arr.max()}")
    else:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"token index must be an int, array or tensor, got {type(i).__name__}")
        i = int(i)
        if not 0 <= i < n:
            raise IndexError(f"token index {i} out of range 0..{n - 1} for geometry {geometry}")
    c = geometry.channels
    return i // geometry.row_stride, (i // c) % geometry.width, i % c


def pixel_to_token(row: int, col: int, channel: int, geometry: Geometry) -> int:
    """The token index of pixel (row, col) in ``channel``: the inverse of token_coords."""
    if not (0 <= row < geometry.height and 0 <= col < geometry.width):
        raise ValueError(f"pixel ({row}, {col}) is outside the {geometry} image")
    if not 0 <= channel < geometry.channels:
        raise ValueError(f"channel {channel} is outside 0..{geometry.channels - 1}")
    return row * geometry.row_stride + col * geometry.channels + channel


def pixel_tokens(
    row: int, col: int, geometry: Geometry, channel: int | None = None
) -> dict[int, int]:
    """{channel: token} of pixel (row, col): of the one ``channel`` given, or of all of the
    pixel's channels (None; a colour pixel is three tokens)."""
    chans = range(geometry.channels) if channel is None else [channel]
    return {ch: pixel_to_token(row, col, ch, geometry) for ch in chans}
