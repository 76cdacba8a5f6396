"""Arrays that show a layout: which part of it allows each (query, key) pair or key pixel.

Part codes are small integers: 0 = not allowed, k = the k-th part of ``layout.parts()`` (1-based,
a pair in two parts gets the first), so one colour map draws every layout.
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


def mask_view(layout: Layout, n: int, head: int = 0, max_cells: int = MAX_EXACT_CELLS):
    """The N x N picture of a layout: (array, tile) where tile is 1 for exact part codes
    [n, n], or the tile size P for a pooled view of allowed-pair density per P x P tile,
    computed row block by row block so memory stays O(P * n)."""
    if n <= max_cells:
        return part_codes(layout, np.arange(n), n, head), 1
    tile = -(-n // MAX_TILES)
    nb = -(-n // tile)
    density = np.zeros((nb, nb), dtype=np.float32)
    for a in range(nb):
        rows = np.arange(a * tile, min((a + 1) * tile, n))
        allowed = part_codes(layout, rows, n, head) > 0  # [tile, n]
        padded = np.zeros((len(rows), nb * tile), dtype=bool)
        padded[:, :n] = allowed
        density[a] = padded.reshape(len(rows), nb, tile).mean(axis=(0, 2))
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
