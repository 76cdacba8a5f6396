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

from kernels.layouts import BigBird, Layout, MultiHead
from models.tokens import Geometry, token_coords

MAX_EXACT_CELLS = 1024  # above this, the N x N view is pooled into tiles
MAX_TILES = 256  # a pooled view has at most this many tiles per side


def part_names(layout: Layout) -> list[str]:
    return list(layout.parts())


def _index_dtype(layout: Layout, n: int) -> type:
    """The integer type to evaluate ``layout``'s predicates in: int32 where no intermediate can
    leave its range, as its remainder and division run several times faster than int64's (the
    N x N view of a 3072-token image is 9.4 M pairs). BigBird's random-block hash multiplies
    indices by large primes, so it needs int64; and a constant beyond int32 (dilated's r * w,
    say) makes numpy raise OverflowError, which the callers answer with int64."""
    patterns = layout.patterns if isinstance(layout, MultiHead) else (layout,)
    if n >= 1 << 15 or any(isinstance(p, BigBird) for p in patterns):
        return np.int64
    return np.int32


def _evaluate(layout: Layout, queries: np.ndarray, n: int, head: int, combine) -> None:
    """Call ``combine(k, mask)`` for each part k (1-based) of ``layout`` with its bool mask over
    (queries x all n keys), in int32 where that is exact (_index_dtype), else int64."""
    dtype = _index_dtype(layout, n)
    while True:
        try:
            q = np.asarray(queries).astype(dtype)[:, None]
            j = np.arange(n, dtype=dtype)[None, :]
            masks = [part(dtype(0), dtype(head), q, j) for part in layout.parts().values()]
            break
        except OverflowError:  # a constant beyond int32: the exact, slower int64
            if dtype is np.int64:
                raise
            dtype = np.int64
    for k, m in enumerate(masks, start=1):
        combine(k, np.broadcast_to(m, (len(q), n)))  # a part may broadcast (e.g. j < s)


def part_codes(layout: Layout, queries: np.ndarray, n: int, head: int = 0) -> np.ndarray:
    """Part code of every (query, key) pair: int8 [Q, n]. The layouts' predicates are plain
    integer operators, so numpy evaluates them (no torch needed to draw a layout)."""
    queries = np.asarray(queries, dtype=np.int64)
    codes = np.zeros((len(queries), n), dtype=np.int8)

    def first_part(k: int, m: np.ndarray) -> None:
        codes[(codes == 0) & m] = k

    _evaluate(layout, queries, n, head, first_part)
    return codes


def tile_for(n: int, max_side: int) -> int:
    """The tile size that draws an n x n map with at most ``max_side`` cells a side (1: exact)."""
    return max(1, -(-n // max_side))


def pool_tiles(a: np.ndarray, tile: int) -> np.ndarray:
    """The mean of every ``tile`` x ``tile`` block of [..., R, C] arrays: [..., ceil(R / tile),
    ceil(C / tile)] (float64); a partial block at the bottom or right edge is the mean of the
    entries it has (as the capture's pooled form, kernels/capture.py)."""
    *lead, r, c = a.shape
    nr, nc = -(-r // tile), -(-c // tile)
    padded = a
    if r % tile or c % tile:
        padded = np.zeros((*lead, nr * tile, nc * tile), dtype=np.float64)
        padded[..., :r, :c] = a
    # the block sums as ``tile`` strided slices added, columns then rows: numpy's sum over a
    # short axis of a reshaped array took 3x longer (a layer switch pools 4 maps of 784 x 784)
    across = np.zeros((*lead, nr * tile, nc), dtype=np.float64)
    for k in range(tile):
        across += padded[..., k::tile]
    sums = np.zeros((*lead, nr, nc), dtype=np.float64)
    for k in range(tile):
        sums += across[..., k::tile, :]
    rows = np.minimum(tile, r - tile * np.arange(nr))  # entries of each block row / column
    cols = np.minimum(tile, c - tile * np.arange(nc))
    return sums / (rows[:, None] * cols[None, :])


def allowed_pairs(layout: Layout, queries: np.ndarray, n: int, head: int = 0) -> np.ndarray:
    """Whether each (query, key) pair is allowed: bool [Q, n], the union of the parts (what the
    pooled view counts; cheaper than part codes, which also say which part)."""
    queries = np.asarray(queries, dtype=np.int64)
    allowed = np.zeros((len(queries), n), dtype=bool)

    def union(k: int, m: np.ndarray) -> None:
        allowed[:] |= m

    _evaluate(layout, queries, n, head, union)
    return allowed


POOL_CHUNK = 1 << 21  # pairs evaluated at once for a pooled view: ~2 MB of booleans


def mask_view(layout: Layout, n: int, head: int = 0, max_cells: int = MAX_EXACT_CELLS):
    """The N x N picture of a layout: (array, tile) where tile is 1 for exact part codes
    [n, n], or the tile size P for a pooled view of allowed-pair density per P x P tile,
    computed a band of tile rows at a time so memory stays O(POOL_CHUNK)."""
    if n <= max_cells:
        return part_codes(layout, np.arange(n), n, head), 1
    tile = tile_for(n, MAX_TILES)
    nb = -(-n // tile)
    band = max(1, POOL_CHUNK // (tile * n))  # tile rows a band
    counts = np.zeros((nb, nb), dtype=np.int64)
    padded = np.zeros((band * tile, nb * tile), dtype=bool)  # keys past n stay False
    for a in range(0, nb, band):
        rows = np.arange(a * tile, min((a + band) * tile, n))
        padded[:] = False
        padded[: len(rows), :n] = allowed_pairs(layout, rows, n, head)
        tiles = -(-len(rows) // tile)
        block = padded[: tiles * tile].reshape(tiles, tile, nb, tile)
        counts[a : a + tiles] = block.sum(axis=(1, 3))
    # the mean over the entries each tile has (a partial tile at the edge has fewer)
    sizes = np.minimum(tile, n - tile * np.arange(nb))
    return (counts / (sizes[:, None] * sizes[None, :])).astype(np.float32), tile


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
