"""Labelled grids of small images (samples, completions), drawn with Pillow."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def image_grid(
    rows: list[tuple[str, list[np.ndarray]]],
    *,
    scale: int = 3,
    pad: int = 4,
    label_width: int = 110,
    background: int = 255,
    columns: int | None = None,
) -> Image.Image:
    """One row per (label, images); images are uint8 [H, W, C] (C = 1 or 3), all the same size.

    Pixels are enlarged ``scale`` times with nearest-neighbour so single pixels stay visible.
    ``columns`` wraps a row's images into lines of at most that many (the label on the first),
    so many samples stay large enough to read instead of one long, shrunk strip.
    """
    if not rows or not any(images for _, images in rows):
        raise ValueError("image_grid needs at least one image")
    if columns is not None:
        if columns < 1:
            raise ValueError(f"columns must be at least 1, got {columns}")
        rows = [
            (label if k == 0 else "", images[k : k + columns])
            for label, images in rows
            for k in range(0, max(len(images), 1), columns)
        ]
    first = next(img for _, images in rows for img in images)
    h, w = first.shape[0] * scale, first.shape[1] * scale
    cols = max(len(images) for _, images in rows)
    width = label_width + cols * (w + pad) + pad
    height = len(rows) * (h + pad) + pad
    canvas = Image.new("RGB", (width, height), (background,) * 3)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for r, (label, images) in enumerate(rows):
        y = pad + r * (h + pad)
        draw.text((pad, y + h // 2 - 6), label, fill=(0, 0, 0), font=font)
        for c, img in enumerate(images):
            if img.shape != first.shape or img.dtype != np.uint8:
                raise ValueError(
                    f"all images must be the same uint8 {first.shape}, got {img.dtype} {img.shape}"
                )
            tile = Image.fromarray(img[..., 0] if img.shape[2] == 1 else img).convert("RGB")
            tile = tile.resize((w, h), Image.NEAREST)
            canvas.paste(tile, (label_width + pad + c * (w + pad), y))
    return canvas
