"""Per-token values onto the image grid: [..., N] -> [..., H, W, C].

Anything measured per token (bits of surprise, attention received, rollout weight) is drawn on
the image it came from. Where each token lands is models.tokens' business (docs/DESIGN.md,
"Token order"): the placement is a scatter through ``token_coords``, never a reshape formula
written here, so a change of token order cannot silently transpose every map.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from models.tokens import Geometry, token_coords


def token_map(values: Tensor | np.ndarray, geometry: Geometry) -> Tensor | np.ndarray:
    """values [..., N] (N = geometry.n_tokens) -> [..., H, W, C], same type and dtype.

    Token i goes to (row, col, channel) = token_coords(i, geometry); every cell is written once
    because the mapping is a bijection.
    """
    n = geometry.n_tokens
    if values.shape[-1] != n:
        raise ValueError(
            f"got {values.shape[-1]} values per image but geometry {geometry} has {n} tokens"
        )
    grid = (geometry.height, geometry.width, geometry.channels)
    if isinstance(values, np.ndarray):
        rows, cols, chans = token_coords(np.arange(n), geometry)
        out = np.zeros(values.shape[:-1] + grid, dtype=values.dtype)
    else:
        rows, cols, chans = token_coords(torch.arange(n, device=values.device), geometry)
        out = values.new_zeros(*values.shape[:-1], *grid)
    out[..., rows, cols, chans] = values  # [..., N] scattered onto [..., H, W, C]
    return out


def pixel_map(
    values: np.ndarray, geometry: Geometry, channel: int | None, *, combine: str = "sum"
) -> np.ndarray:
    """values [..., N] -> [..., H, W]: one number per pixel from its ``geometry.channels``
    tokens: the token of ``channel``, or, with channel None, all of them combined ("sum": what
    the pixel holds in all, e.g. bits of its three values or attention its tokens receive;
    "mean": a pixel's average, e.g. of the rows its three query tokens give)."""
    grid = token_map(np.asarray(values), geometry)  # [..., H, W, C]
    if channel is not None:
        if not 0 <= channel < geometry.channels:
            raise ValueError(f"channel {channel} outside 0..{geometry.channels - 1}")
        return grid[..., channel]
    if combine not in ("sum", "mean"):
        raise ValueError(f"combine must be 'sum' or 'mean', got {combine!r}")
    return grid.sum(-1) if combine == "sum" else grid.mean(-1)
