"""How a learned attention head compares with a prescribed layout: pure functions on arrays.

Every function takes attention rows ``probs`` of shape [..., Q, N] (any leading dims, e.g.
[images, heads]) for the query positions ``queries`` [Q] of an image with ``geometry``, and
returns one number per leading index. Nothing here imports streamlit or runs a model.

Metrics of a head (each averaged over its query rows):
    coverage        attention mass on pairs the layout allows (1 = the layout would lose nothing)
    parts           that mass split over the layout's parts (local / column, block / summary);
                    a pair in two parts counts for the first one
    entropy         bits; log2(k) for a head spread evenly over k keys
    k90             the fewest keys that hold 90 % of the row's mass
    distance        mean distance in pixels between query and key pixel, sum_j p_ij d(i, j)
    same_row / same_col / same_channel   mass on keys in the query's row / column / channel

Head types, decided in this order (thresholds below, chosen on hand-built heads in
tests/test_analysis.py):
    row      same_row >= SHARE and k90 >= MIN_SPREAD       attends along its own row
    column   same_col >= SHARE and k90 >= MIN_SPREAD       attends up its own column
    local    distance <= LOCAL_PX and k90 <= LOCAL_KEYS    a small neighbourhood (conv-like)
    sparse   k90 <= SPARSE_KEYS                            a few keys, wherever they are
    global   anything else                                 broad, far-reaching
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from kernels.layouts import Layout
from models.tokens import Geometry, token_coords

SHARE = 0.6
MIN_SPREAD = 4.0
LOCAL_PX = 5.0  # about a 3x3 to 9x9 neighbourhood in raster order (the last row of keys)
LOCAL_KEYS = 32.0
SPARSE_KEYS = 5.0
HEAD_TYPES = ("row", "column", "local", "sparse", "global")
METRICS = ("coverage", "entropy", "k90", "distance", "same_row", "same_col", "same_channel")


def default_queries(geometry: Geometry) -> Tensor:
    """Every position from the second image row on, where a query has both a row and a column
    of context; the first row would make every head look local."""
    return torch.arange(geometry.row_stride, geometry.n_tokens)


def _pairs(queries: Tensor, n: int, geometry: Geometry) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per (query, key): pixel distance, same row, same column, same channel; each [Q, N]."""
    qr, qc, qch = token_coords(queries, geometry)
    kr, kc, kch = token_coords(torch.arange(n), geometry)
    dr = (qr[:, None] - kr[None, :]).double()
    dc = (qc[:, None] - kc[None, :]).double()
    return (
        torch.sqrt(dr**2 + dc**2),
        qr[:, None] == kr[None, :],
        qc[:, None] == kc[None, :],
        qch[:, None] == kch[None, :],
    )


def layout_rows(layout: Layout, queries: Tensor, n: int, heads: list[int]) -> dict[str, Tensor]:
    """Each part's mask on the query rows, made exclusive in part order: {part: [H, Q, N]}."""
    h = torch.tensor(heads)[:, None, None]
    j = torch.arange(n)[None, None, :]
    taken = torch.zeros(len(heads), len(queries), n, dtype=torch.bool)
    out = {}
    for name, part in layout.parts().items():
        m = part(torch.tensor(0), h, queries[None, :, None], j).expand_as(taken)
        out[name] = m & ~taken
        taken = taken | m
    return out


def head_metrics(
    probs: Tensor,
    queries: Tensor,
    geometry: Geometry,
    layout: Layout | None = None,
    heads: list[int] | None = None,
) -> dict[str, Tensor]:
    """All metrics of attention rows probs [..., H, Q, N] (rows of the heads ``heads``, default
    0..H-1); each value is a tensor [..., H] (mean over the query rows)."""
    p = probs.double()
    *_, H, Q, N = p.shape
    heads = list(range(H)) if heads is None else heads
    dist, same_row, same_col, same_ch = _pairs(queries, N, geometry)
    plogp = torch.where(p > 0, p * torch.log2(p.clamp_min(1e-300)), torch.zeros_like(p))
    sorted_p = p.sort(dim=-1, descending=True).values
    # the number of keys before the running mass reaches 90 %, plus the one that reaches it
    k90 = ((sorted_p.cumsum(-1) - sorted_p) < 0.9 - 1e-9).sum(-1).double()
    out = {
        "entropy": -plogp.sum(-1).mean(-1),
        "k90": k90.mean(-1),
        "distance": (p * dist).sum(-1).mean(-1),
        "same_row": (p * same_row).sum(-1).mean(-1),
        "same_col": (p * same_col).sum(-1).mean(-1),
        "same_channel": (p * same_ch).sum(-1).mean(-1),
    }
    if layout is not None:
        parts = layout_rows(layout, queries, N, heads)
        total = 0
        for name, mask in parts.items():
            out[f"coverage_{name}"] = (p * mask).sum(-1).mean(-1)
            total = total + out[f"coverage_{name}"]
        out["coverage"] = total
    return out


def head_type(m: dict[str, float]) -> str:
    """The type of one head from its metrics (see the module docstring for the rule)."""
    if m["same_row"] >= SHARE and m["k90"] >= MIN_SPREAD:
        return "row"
    if m["same_col"] >= SHARE and m["k90"] >= MIN_SPREAD:
        return "column"
    if m["distance"] <= LOCAL_PX and m["k90"] <= LOCAL_KEYS:
        return "local"
    if m["k90"] <= SPARSE_KEYS:
        return "sparse"
    return "global"


def aggregate(per_image: dict[str, Tensor]) -> dict[str, tuple[Tensor, Tensor]]:
    """Mean and standard deviation over the first (image) dimension of every metric."""
    return {
        k: (v.mean(0), v.std(0, unbiased=False) if v.shape[0] > 1 else torch.zeros_like(v[0]))
        for k, v in per_image.items()
    }


def uniform_entropy_bits(k: int) -> float:
    """Entropy of a head spread evenly over k keys."""
    return math.log2(k)
