"""Arrays that show a layout: which part of it allows each (query, key) pair or key pixel.

Part codes are small integers: 0 = not allowed, k = the k-th part of ``layout.parts()`` (1-based,
a pair in two parts gets the first), so one colour map draws every layout.

An N x N map too large to draw cell by cell is drawn as the means of P x P tiles: tile_for picks
P, pool_tiles pools an array (a layout's mask here). A model's attention map arrives pooled
from the capture itself (kernels/capture.py, through analysis.attention.head_maps), so the
N x N matrix is never made.
"""

from __future__ import annotations

import numpy as np

from kernels.layouts import Layout
from models.tokens import Geometry, token_coords

MAX_EXACT_CELLS = 1024  # above this, the N x N view is pooled into tiles
MAX_TILES = 256  # a pooled view has at most this many tiles per side


def part_names(layout: Layout) -> list[str]:
    return list(layout.parts())


def part_codes(layout: Layout, queries: np.ndarray, n: int, head: int = 0) -> np.ndarray:
    """Part code of every (query, key) pair: int8 [Q, n]. The layouts' predicates are plain
    integer operators, so numpy evaluates them (no torch needed to draw a layout)."""
    queries = np.asarray(queries, dtype=np.int64)
    h = np.int64(head)
    j = np.arange(n, dtype=np.int64)[None, :]
    codes = np.zeros((len(queries), n), dtype=np.int8)
    for k, part in enumerate(layout.parts().values(), start=1):
        m = np.broadcast_to(part(np.int64(0), h, queries[:, None], j), codes.shape)
        codes[(codes == 0) & m] = k
    return codes


def tile_for(n: int, max_side: int) -> int:
    """The tile size that draws an n x n map with at most ``max_side`` cells a side (1: exact)."""
    return max(1, -(-n // max_side))


def pool_tiles(a: np.ndarray, tile: int) -> np.ndarray:
    """The mean of every ``tile`` x ``tile`` block of a [R, C] array: [ceil(R / tile),
    ceil(C / tile)]; a partial block at the bottom or right edge is the mean of the entries it
    has (as the capture's pooled form, kernels/capture.py)."""
    r, c = a.shape
    nr, nc = -(-r // tile), -(-c // tile)
    padded = np.zeros((nr * tile, nc * tile), dtype=np.float64)
    padded[:r, :c] = a
    sums = padded.reshape(nr, tile, nc, tile).sum(axis=(1, 3))
    rows = np.minimum(tile, r - tile * np.arange(nr))  # entries of each block row / column
    cols = np.minimum(tile, c - tile * np.arange(nc))
    return sums / (rows[:, None] * cols[None, :])


def mask_view(layout: Layout, n: int, head: int = 0, max_cells: int = MAX_EXACT_CELLS):
    """The N x N picture of a layout: (array, tile) where tile is 1 for exact part codes
    [n, n], or the tile size P for a pooled view of allowed-pair density per P x P tile,
    computed one row of tiles at a time so memory stays O(P * n)."""
    if n <= max_cells:
        return part_codes(layout, np.arange(n), n, head), 1
    tile = tile_for(n, MAX_TILES)
    nb = -(-n // tile)
    density = np.zeros((nb, nb), dtype=np.float32)
    for a in range(nb):
        rows = np.arange(a * tile, min((a + 1) * tile, n))
        density[a] = pool_tiles(part_codes(layout, rows, n, head) > 0, tile)[0]
    return density, tile


def pixel_view(
    layout: Layout, geometry: Geometry, query: int, head: int = 0, key_channel: int | None = None
) -> np.ndarray:
    """Which pixels token ``query`` may attend to, as part codes int8 [H, W].

    For RGB, a pixel shows the part of its key token in ``key_channel`` (default: the query's
    own channel).
    """
    n = geometry.n_tokens
    if not 0 <= query < n:
        raise ValueError(f"query token {query} is outside 0..{n - 1}")
    codes = part_codes(layout, np.array([query]), n, head)[0]  # [n]
    _, _, ch = token_coords(query, geometry)
    ch = ch if key_channel is None else key_channel
    return codes.reshape(geometry.height, geometry.width, geometry.channels)[:, :, ch]
