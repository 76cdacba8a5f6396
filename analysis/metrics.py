"""How a learned attention head compares with a prescribed layout: pure functions on arrays.

Every function takes attention rows ``probs`` of shape [..., Q, N] (any leading dims, e.g.
[images, heads]) for the query positions ``queries`` [Q] of an image with ``geometry``, and
returns one number per leading index. Plain numpy (float64): nothing here imports torch or
streamlit or runs a model; analysis/learned.py runs the model and hands its rows over.

Metrics of a head (each averaged over its query rows):
    coverage        attention mass on pairs the layout allows (1 = the layout would lose nothing)
    parts           that mass split over the layout's parts (local / column, block / summary);
                    a pair in two parts counts for the first one
    entropy         bits; log2(k) for a head spread evenly over k keys
    k90             the fewest keys that hold 90 % of the row's mass
    distance        mean distance in pixels between query and key pixel, sum_j p_ij d(i, j)
    same_row / same_col / same_channel   mass on keys in the query's row / column / channel

Head types, decided in this order (thresholds below, chosen on hand-built heads in
tests/test_metrics.py):
    row      same_row >= SHARE and k90 >= MIN_SPREAD       attends along its own row
    column   same_col >= SHARE and k90 >= MIN_SPREAD       attends up its own column
    local    distance <= LOCAL_PX and k90 <= LOCAL_KEYS    a small neighbourhood (conv-like)
    sparse   k90 <= SPARSE_KEYS                            a few keys, wherever they are
    global   anything else                                 broad, far-reaching
"""

from __future__ import annotations

import numpy as np

from kernels.layouts import Layout
from models.tokens import Geometry, token_coords

SHARE = 0.6
MIN_SPREAD = 4.0
LOCAL_PX = 5.0  # about a 3x3 to 9x9 neighbourhood in raster order (the last row of keys)
LOCAL_KEYS = 32.0
SPARSE_KEYS = 5.0
HEAD_TYPES = ("row", "column", "local", "sparse", "global")
METRICS = ("coverage", "entropy", "k90", "distance", "same_row", "same_col", "same_channel")


def default_queries(geometry: Geometry) -> np.ndarray:
    """Every position from the second image row on, where a query has both a row and a column
    of context; the first row would make every head look local. int64 [Q]."""
    return np.arange(geometry.row_stride, geometry.n_tokens, dtype=np.int64)


def _pairs(
    queries: np.ndarray, n: int, geometry: Geometry
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per (query, key): pixel distance, same row, same column, same channel; each [Q, N]."""
    qr, qc, qch = token_coords(queries, geometry)
    kr, kc, kch = token_coords(np.arange(n, dtype=np.int64), geometry)
    dr = (qr[:, None] - kr[None, :]).astype(np.float64)
    dc = (qc[:, None] - kc[None, :]).astype(np.float64)
    return (
        np.sqrt(dr**2 + dc**2),
        qr[:, None] == kr[None, :],
        qc[:, None] == kc[None, :],
        qch[:, None] == kch[None, :],
    )


def layout_rows(
    layout: Layout, queries: np.ndarray, n: int, heads: list[int]
) -> dict[str, np.ndarray]:
    """Each part's mask on the query rows, made exclusive in part order: {part: bool [H, Q, N]}.

    The layouts' predicates are plain integer operators, so they take numpy arrays."""
    h = np.asarray(heads, dtype=np.int64)[:, None, None]
    i = np.asarray(queries, dtype=np.int64)[None, :, None]
    j = np.arange(n, dtype=np.int64)[None, None, :]
    taken = np.zeros((len(heads), i.shape[1], n), dtype=bool)
    out = {}
    for name, part in layout.parts().items():
        m = np.broadcast_to(part(np.int64(0), h, i, j), taken.shape)
        out[name] = m & ~taken
        taken = taken | m
    return out


def head_metrics(
    probs: np.ndarray,
    queries: np.ndarray,
    geometry: Geometry,
    layout: Layout | None = None,
    heads: list[int] | None = None,
) -> dict[str, np.ndarray]:
    """All metrics of attention rows probs [..., H, Q, N] (rows of the heads ``heads``, default
    0..H-1); each value is float64 [..., H] (mean over the query rows)."""
    p = np.asarray(probs, dtype=np.float64)
    queries = np.asarray(queries, dtype=np.int64)
    *_, H, Q, N = p.shape
    heads = list(range(H)) if heads is None else heads
    dist, same_row, same_col, same_ch = _pairs(queries, N, geometry)
    plogp = np.where(p > 0, p * np.log2(np.maximum(p, 1e-300)), 0.0)
    sorted_p = -np.sort(-p, axis=-1)  # descending
    # the number of keys before the running mass reaches 90 %, plus the one that reaches it
    k90 = ((np.cumsum(sorted_p, axis=-1) - sorted_p) < 0.9 - 1e-9).sum(-1).astype(np.float64)
    out = {
        "entropy": -plogp.sum(-1).mean(-1),
        "k90": k90.mean(-1),
        "distance": (p * dist).sum(-1).mean(-1),
        "same_row": (p * same_row).sum(-1).mean(-1),
        "same_col": (p * same_col).sum(-1).mean(-1),
        "same_channel": (p * same_ch).sum(-1).mean(-1),
    }
    if layout is not None:
        out.update(layout_coverage(p, queries, layout, heads))
    return out


def layout_coverage(
    probs: np.ndarray, queries: np.ndarray, layout: Layout, heads: list[int] | None = None
) -> dict[str, np.ndarray]:
    """The coverage metrics alone (the only ones that depend on a layout) of rows probs
    [..., H, Q, N]: the mass on each of the layout's parts and in all, float64 [..., H]; for
    scoring one capture against several layouts without measuring the rest again."""
    p = np.asarray(probs, dtype=np.float64)
    *_, H, _, N = p.shape
    heads = list(range(H)) if heads is None else heads
    out = {}
    total = 0
    for name, mask in layout_rows(layout, np.asarray(queries, dtype=np.int64), N, heads).items():
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


def aggregate(per_image: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Mean and standard deviation (population: ddof 0) over the first (image) dimension of
    every metric; the spread of a single image is 0."""
    out = {}
    for k, v in per_image.items():
        v = np.asarray(v, dtype=np.float64)
        out[k] = (v.mean(0), v.std(0) if v.shape[0] > 1 else np.zeros_like(v[0]))
    return out


def shared_mass(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """The attention mass two rows p, q [..., N] have in common, sum_j min(p_j, q_j): 1 for
    identical rows, 0 for rows on disjoint keys; 1 minus their total variation distance."""
    return np.minimum(np.asarray(p, np.float64), np.asarray(q, np.float64)).sum(-1)
