"""Image completion: keep part of an image and let the model sample the rest.

``keep_mask`` turns "the top rows" or "a rectangle" into the tokens to keep, ``complete`` samples
every other token in raster order with the kept ones fixed (models.sampling.sample), and
``hidden_view`` draws the pixels still to be sampled gray. The Complete page and the command line
(tools/complete.py) both complete images through here.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from models.model import NO_INTERVENTION, Intervention, SparseTransformer
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
    # every channel of a kept pixel: [H, W] -> [H, W, C] -> [H*W*C], the tokens in raster order
    return pixels[:, :, None].expand(h, w, c).flatten()


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
    intervention: Intervention = NO_INTERVENTION,
) -> np.ndarray:
    """Samples that keep ``image``'s pixels where ``keep``: uint8 [n_samples, H, W, C];
    ``intervention`` (models.model) runs the model with another attention or edited heads."""
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
        intervention=intervention,
    )
    return tokens_to_image(out, geometry)


def hidden_view(image: np.ndarray, keep: torch.Tensor) -> np.ndarray:
    """The image [H, W, C] with the pixels to be sampled drawn gray."""
    tokens = image_to_tokens(image)  # [N]
    tokens[~keep] = HIDDEN_GRAY
    return tokens_to_image(tokens, Geometry(*image.shape))
