"""What the Predictions and Ablation pages share: test images spread over the test split, and
bits-per-pixel maps side by side on one scale."""

from __future__ import annotations

import numpy as np
import streamlit as st

from models.datasets import held_out_source, load_images
from models.tokens import Geometry, images_to_tokens
from viz.mosaics import mosaic_figure
from viz.style import BITS_COLORS


@st.cache_data(max_entries=4, show_spinner=False)
def test_images(data: str, height: int, width: int, channels: int) -> np.ndarray:
    return load_images(data, "test", Geometry(height, width, channels))


def spread(geometry: Geometry, count: int, offset: float = 0.0):
    """``count`` test images spread over the test split, as tokens [count, N]; ``offset`` (0..1
    of the spacing) picks other images at the same spread."""
    grid = (geometry.height, geometry.width, geometry.channels)
    images = test_images(held_out_source(geometry), *grid)
    step = len(images) / count
    idx = (np.arange(count) * step + offset * step).astype(int) % len(images)
    return images_to_tokens(images[idx])


def bits_mosaic(maps: np.ndarray, *, title: str, col_labels, value_name: str, tile_px: int):
    """Bits-per-pixel maps [M, h, w] side by side, on one scale from 0 to their 99.5th
    percentile."""
    return mosaic_figure(
        maps,
        title=title,
        col_labels=col_labels,
        colorscale=BITS_COLORS,
        zmin=0,
        zmax=float(np.percentile(maps, 99.5)),
        colorbar_title="bits",
        value_name=value_name,
        tile_px=tile_px,
    )
