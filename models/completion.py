"""Complete an image: keep part of it, let the model sample the rest.

    python -m tools.complete photo.jpg --model assets/models/strided --keep-rows 14 \\
        --samples 8 --seed 0 --out grid.png

The image is prepared for the model (models.uploads.prepare_image: EXIF orientation, alpha, gray or
RGB, centre-crop or letterbox, 8-bit). Fashion-MNIST garments are light on black, so photos of
dark things on white want ``--invert``. The kept part is the top rows (default: half) or a
rectangle ``--rect X0 Y0 X1 Y1`` in pixel coordinates (end exclusive); everything else is sampled
in raster order with the kept pixels fixed.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from models.model import SparseTransformer
from models.sampling import sample
from models.tokens import Geometry, image_to_tokens, tokens_to_image

HIDDEN_GRAY = 128  # how the pixels to be sampled are drawn in the "kept" picture


def keep_mask(
    geometry: Geometry,
    *,
    keep_rows: int | None = None,
    rect: tuple[int, int, int, int] | None = None,
) -> torch.Tensor:
    """Which tokens to keep, bool [H*W*C]: the top ``keep_rows`` rows (default: half) or the
    pixels of ``rect`` = (x0, y0, x1, y1), end exclusive. Raises ValueError when impossible."""
    h, w, c = geometry
    pixels = torch.zeros(h, w, dtype=torch.bool)
    if rect is not None and keep_rows is not None:
        raise ValueError("keep either the top rows or a rectangle, not both")
    if rect is not None:
        x0, y0, x1, y1 = rect
        if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
            raise ValueError(
                f"rectangle {rect} must satisfy 0 <= x0 < x1 <= {w} and 0 <= y0 < y1 <= {h} "
                f"for a {w}x{h} image (x1, y1 exclusive)"
            )
        pixels[y0:y1, x0:x1] = True
    else:
        rows = h // 2 if keep_rows is None else keep_rows
        if not 0 <= rows <= h:
            raise ValueError(f"keep_rows must be between 0 and {h}, got {rows}")
        pixels[:rows] = True
    return pixels[:, :, None].expand(h, w, c).flatten()  # every channel of a kept pixel


def complete(
    model: SparseTransformer,
    image: np.ndarray,
    keep: torch.Tensor,
    *,
    n_samples: int = 4,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = 0,
    on_row: Callable[[int, torch.Tensor], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> np.ndarray:
    """Samples that keep ``image``'s pixels where ``keep``: uint8 [n_samples, H, W, C]."""
    geometry = model.config.geometry
    if image.shape != tuple(geometry):
        raise ValueError(f"image is {image.shape}; the model needs {tuple(geometry)}")
    tokens = image_to_tokens(image)  # [N]
    out = sample(
        model,
        n_samples=n_samples,
        prefix=tokens,
        known=keep,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        on_row=on_row,
        cancel=cancel,
    )
    return tokens_to_image(out, geometry)


def hidden_view(image: np.ndarray, keep: torch.Tensor) -> np.ndarray:
    """The image with the pixels to be sampled drawn gray."""
    shown = image.copy().reshape(-1)
    shown[~keep.numpy()] = HIDDEN_GRAY
    return shown.reshape(image.shape)
