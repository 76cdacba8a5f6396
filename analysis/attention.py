"""A trained model's attention on one image, as numpy arrays for the pages and the exports.

model + image -> arrays. The model's capture forms (kernels/capture.py; docs/DESIGN.md,
"Capture without an N x N matrix") are asked for what a view shows and nothing more:

    query_rows      the attention of one query token in every layer and head   [L, H, N]
    head_maps       every head's N x N map of one layer, or its P x P tile means [H, n, n]
    capture_image   both, for the chosen layers and heads and a query pixel: an ImageAttention,
                    what viz.export.model_items draws (viz never runs a model)
    capture_memory  the bytes capture_image and its figures take (checked before it runs)
    run_under       the Intervention that runs a model under another attention: one spec in
                    every layer, or one per layer (a list, or "spec; spec; ...")

Each takes ``intervention`` (models.model.Intervention, default none): the model's attention
captured as it runs under another layout or selection (the Frontier page's points).

Everything returned is float32 numpy on the CPU, whatever device the model runs on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from kernels.layouts import Layout
from kernels.selection import parse_attention
from models.model import NO_INTERVENTION, Intervention, SparseTransformer
from models.tokens import Geometry, image_to_tokens, pixel_to_token


def _tokens(image: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, C] -> a batch of one token sequence [1, N]."""
    return image_to_tokens(image)[None]


def under_specs(under: str | Sequence[str], n_layer: int) -> list[str]:
    """The attention of each of ``n_layer`` layers that ``under`` names: one spec (every layer),
    a list of one per layer, or the same as one text separated by ";" (a fitted frontier
    point's per-layer layouts). ValueError names what is wrong: a spec that does not parse, or
    per-layer specs that are not one per layer."""
    parts = [under] if isinstance(under, str) else list(under)
    if len(parts) == 1 and isinstance(parts[0], str):
        parts = parts[0].split(";")
    parts = [str(p).strip() for p in parts]
    if not parts or any(not p for p in parts):
        raise ValueError("an empty attention spec (give one spec, or one per layer)")
    if len(parts) not in (1, n_layer):
        raise ValueError(
            f"{len(parts)} per-layer specs for a model of {n_layer} layers: give one spec for "
            f"every layer, or exactly {n_layer}"
        )
    specs = parts * n_layer if len(parts) == 1 else parts
    out = []
    for i, spec in enumerate(specs):
        try:
            out.append(repr(parse_attention(spec)))
        except (TypeError, ValueError) as e:
            where = "" if len(parts) == 1 else f"layer {i}: "
            raise ValueError(f"{where}{spec!r} is not an attention spec: {e}") from None
    return out


def run_under(model: SparseTransformer, under: str | Sequence[str]) -> Intervention:
    """The Intervention that runs ``model`` with the attention ``under`` names in its layers
    (under_specs), checked against its heads (ValueError)."""
    specs = under_specs(under, model.config.n_layer)
    if len(set(specs)) == 1:
        intervention = Intervention.everywhere(specs[0], model.config.n_layer)
    else:
        intervention = Intervention(attention={i: parse_attention(s) for i, s in enumerate(specs)})
    intervention.check(model.config)
    return intervention


def query_rows(
    model: SparseTransformer,
    image: np.ndarray,
    query: int,
    layers: Sequence[int] | None = None,
    *,
    intervention: Intervention = NO_INTERVENTION,
) -> np.ndarray:
    """Attention of token ``query`` over every key in each of ``layers`` (default all) and
    every head: float32 [len(layers), H, N]."""
    caps = model.capture(
        _tokens(image),
        layers=layers,
        form="rows",
        queries=[int(query)],
        intervention=intervention,
    )
    order = sorted(caps) if layers is None else [int(i) for i in layers]
    return np.stack([caps[i].probs[0, :, 0].float().numpy() for i in order])


def every_row(
    model: SparseTransformer, image: np.ndarray, *, intervention: Intervention = NO_INTERVENTION
) -> np.ndarray:
    """Every query's attention in every layer and head, from one forward: float32
    [L, H, N, N] (row q of [l, h] is query_rows(model, image, q)[l, h]). 4 * L * H * N^2 bytes:
    for small images only (capture_memory says how much)."""
    caps = model.capture(_tokens(image), form="full", intervention=intervention)
    return np.stack([caps[i].probs[0].float().numpy() for i in sorted(caps)])


def head_maps(
    model: SparseTransformer,
    image: np.ndarray,
    layer: int,
    tile: int = 1,
    *,
    intervention: Intervention = NO_INTERVENTION,
) -> np.ndarray:
    """Every head's attention map of ``layer``: float32 [H, N, N] when ``tile`` is 1, else the
    mean of every tile x tile block [H, ceil(N / tile), ceil(N / tile)] (the capture's pooled
    form: the N x N map is never made)."""
    if tile == 1:
        cap = model.capture(_tokens(image), layers=[layer], form="full", intervention=intervention)[
            layer
        ]
        return cap.probs[0].float().numpy()
    cap = model.capture(
        _tokens(image), layers=[layer], form="pooled", block=tile, intervention=intervention
    )[layer]
    return cap.mean[0].float().numpy()


@dataclass(frozen=True)
class ImageAttention:
    """A model's attention on one image for one query pixel, as arrays: what the exports draw.

    ``rows`` holds every head (the overview grid shows them all); ``maps`` only the heads in
    ``heads``, in that order, and only when asked for.
    """

    image: np.ndarray  # uint8 [H, W, C]
    geometry: Geometry
    query: tuple[int, int]  # the query pixel (row, col); its token is channel 0's
    layers: list[int]
    heads: list[int]
    layouts: list[Layout]  # the attention layout of each of ``layers``
    rows: np.ndarray  # float32 [len(layers), n_head, N]: the query token's attention
    maps: np.ndarray | None  # float32 [len(layers), len(heads), N, N], or None

    @property
    def query_token(self) -> int:
        return pixel_to_token(*self.query, 0, self.geometry)


def capture_memory(config, layers: int, heads: int, maps: bool = True) -> int:
    """Bytes that capture_image(..., maps=maps) over ``layers`` layers and ``heads`` heads and
    the figures drawn from it take at their peak: every head's N x N map of each layer
    (float32), the chosen heads' copy, and one drawn copy per chosen head's map."""
    n = config.height * config.width * config.channels
    rows = layers * config.n_head * n * 4
    if not maps:
        return rows
    return rows + 4 * n * n * layers * (config.n_head + 2 * heads)


def capture_image(
    model: SparseTransformer,
    image: np.ndarray,
    *,
    query: tuple[int, int],
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    maps: bool = True,
    intervention: Intervention = NO_INTERVENTION,
) -> ImageAttention:
    """The attention of the query pixel ``query`` (row, col) in ``layers`` (default all) and,
    with ``maps``, the N x N maps of ``heads`` (default all) in those layers; under an
    ``intervention`` its ``layouts`` are the static layouts the layers ran with (a selection
    such as top-k has none: the model's own is named)."""
    config = model.config
    layers = list(range(config.n_layer)) if layers is None else [int(i) for i in layers]
    heads = list(range(config.n_head)) if heads is None else [int(h) for h in heads]
    row, col = (int(v) for v in query)
    q = pixel_to_token(row, col, 0, config.geometry)
    if maps:  # one capture for both: the rows are rows of the full maps
        caps = model.capture(_tokens(image), layers=layers, form="full", intervention=intervention)
        probs = [caps[i].probs[0].float().numpy() for i in layers]  # each [H, N, N]
        rows = np.stack([p[:, q] for p in probs])
        full = np.stack([p[heads] for p in probs])
    else:
        rows, full = query_rows(model, image, q, layers, intervention=intervention), None
    return ImageAttention(
        image=image,
        geometry=config.geometry,
        query=(row, col),
        layers=layers,
        heads=heads,
        layouts=[_layout_under(model, i, intervention) for i in layers],
        rows=rows,
        maps=full,
    )


def _layout_under(model: SparseTransformer, layer: int, intervention: Intervention) -> Layout:
    chosen = intervention.attention.get(layer)
    return chosen if isinstance(chosen, Layout) else model.layouts[layer]
