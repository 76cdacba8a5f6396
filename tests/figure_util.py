"""Reading back what a figure draws as an image: a go.Image's PNG, and the values a mosaic's
colours stand for (head_grid_figure draws its tiles as one image, not a heatmap of numbers)."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from viz.style import scale_rgba


def image_rgba(trace) -> np.ndarray:
    """uint8 [H, W, 4]: the PNG of a go.Image trace (a figure's trace, or its JSON spec)."""
    source = trace["source"]
    head, data = source.split(",", 1)
    assert head == "data:image/png;base64", head
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGBA"))


def image_values(trace, colorscale="Viridis", levels: int = 4097) -> np.ndarray:
    """The values in [0, 1] an image's colours stand for on ``colorscale`` (the nearest of
    ``levels`` colours along it: within about 0.004 for Viridis, one PNG colour level), NaN
    where it is transparent."""
    rgba = image_rgba(trace)
    lut = scale_rgba(np.linspace(0.0, 1.0, levels), colorscale)[:, :3].astype(np.int32)
    rgb = rgba[..., :3].reshape(-1, 1, 3).astype(np.int32)
    nearest = ((rgb - lut[None]) ** 2).sum(-1).argmin(-1)
    values = (nearest / (levels - 1)).reshape(rgba.shape[:2])
    return np.where(rgba[..., 3] == 0, np.nan, values)
