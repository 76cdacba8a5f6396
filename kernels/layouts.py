"""Sparse Transformer attention layouts (Child et al. 2019), exact and causal.

A layout says which keys j a query i may attend to. Everything is 0-based and causal (j <= i);
the formulas are those of docs/DESIGN.md, "Layouts":

    dense          j <= i
    local(l)       0 <= i - j < l                         (a window of l keys, i included)
    column(l)      j <= i and (i - j) mod l == 0          (the paper's "strided" step 2)
    strided(l)     local(l) ∪ column(l)                   (merged: one softmax over the union)
    fixed(l, c)    j <= i and (j // l == i // l  or  j mod l >= l - c)
                   with num_verts = k > 1, head h uses v = h mod k and the summary
                   offsets l-(v+1)c <= j mod l <= l-vc-1 (``fixed_summary_offsets``).
    multihead(...) head h uses pattern h mod p (the paper's Eq. 8 arrangement).

and the families people compare today (docs/DESIGN.md, "Other families"; W = tokens a row):

    dilated(w, r)                  j = i - r*t, t = 0..w-1                 (LongNet)
    sinks(s, w)                    j < s  or  i - j < w                    (StreamingLLM)
    axial(W)                       same row so far  or  (i - j) mod W == 0 (Axial Transformer)
    neighborhood(kh, kw, W)        rows i//W - j//W < kh, |i%W - j%W| <= kw//2   (local-2D)
    block_sparse(b, nl, vs)        blocks u - v < nl  or  (v+1) mod vs == 0      (Phi-3-small)
    bigbird(b, w, g, r, seed)      blocks u - v < w, v < g, r random past blocks (BigBird)

The content-based selections (top-k, MoBA) depend on the scores, so they are no masks known
ahead: kernels/selection.py holds them.

Each layout is a small frozen dataclass with the same three views of one predicate:

* ``mask_mod(b, h, q_idx, kv_idx)``: FlexAttention's signature, on integer tensors, so a layout
  plugs straight into ``create_block_mask``;
* ``dense_mask(n, n_heads)``: the [n_heads, n, n] boolean mask (for small n);
* ``nnz(n, n_heads)``: the exact number of allowed pairs from closed forms, no mask built.

``parts()`` names the pieces a layout is the union of (local / column for strided, block /
summary for fixed), which the app colours and the analysis measures coverage by.

Layouts are written and read as specs, e.g. ``"strided(l=28)"`` or ``"fixed(l=28, c=4)"``;
``parse_layout(repr(layout)) == layout`` always holds.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, TypeVar

import numpy as np

if TYPE_CHECKING:
    import torch
    from torch import Tensor

# torch is imported where it is used, not here: the app's first page draws layouts with numpy
# (the predicates below are plain operators, so they take numpy arrays as well as tensors) and
# need not pay torch's second of import time
MaskMod = Callable[..., "Tensor"]
Index = TypeVar("Index", int, "Tensor")  # an int, or an integer tensor / array of them


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


# --- closed-form sums over i = 0 .. n-1 (for nnz) ---------------------------------------------


def _sum_min(n: int, l: int) -> int:
    """sum_i min(i + 1, l): the size of a causal window of l keys."""
    if n <= l:
        return n * (n + 1) // 2
    return l * (l + 1) // 2 + (n - l) * l


def _sum_floor(n: int, l: int) -> int:
    """sum_i floor(i / l)."""
    q, r = divmod(n, l)
    return l * q * (q - 1) // 2 + r * q


def _sum_mod(n: int, l: int) -> int:
    """sum_i (i mod l)."""
    q, r = divmod(n, l)
    return q * l * (l - 1) // 2 + r * (r - 1) // 2


# --- the fixed layout's summary rule ----------------------------------------------------------


def fixed_summary_offsets(head: Index, l: Index, c: Index, num_verts: Index) -> tuple[Index, Index]:
    """Inclusive [lo, hi] of the summary offsets (j mod l) that ``head`` uses in fixed(l, c,
    num_verts): head h takes summary set v = h mod num_verts, the c offsets
    l - (v+1)c <= j mod l <= l - vc - 1 (set 0 is the last c keys of a block).

    The one statement of the rule: plain operators, so it takes ints, tensors and numpy arrays
    alike. Triton cannot compile a function of this module, so kernels/triton/common.py holds
    its one @triton.jit twin, ``_fixed_summary_offsets``, which every kernel uses (the fixed
    kernels, the capture kernels, whose union over heads is head 0 of fixed(l, c')); the two
    are tested equal (tests/test_triton_common.py).
    """
    v = head % num_verts
    return l - (v + 1) * c, l - v * c - 1


# --- the layouts ------------------------------------------------------------------------------

_SNAKE = {"BlockSparse": "block_sparse", "MultiHead": "multihead"}


class Layout:
    """Base of all layouts: the shared views built from each layout's own predicate."""

    #: how many heads the pattern cycles over (fixed with num_verts, multihead); 1 = same for all
    period: int = 1

    @property
    def name(self) -> str:
        return repr(self)

    @property
    def family(self) -> str:
        """The constructor's name, as in specs: "strided", "block_sparse", ..."""
        return _SNAKE.get(type(self).__name__, type(self).__name__.lower())

    def __repr__(self) -> str:
        args = ", ".join(f"{f.name}={getattr(self, f.name)}" for f in fields(self))  # type: ignore[arg-type]
        return f"{self.family}({args})"

    @property
    def mask_mod(self) -> MaskMod:
        """FlexAttention mask_mod ``(b, h, q_idx, kv_idx) -> bool tensor``: True where query q_idx
        may attend to key kv_idx in head h.

        A property returning a plain 4-argument function (not a bound method), because
        FlexAttention tells mask_mods from score_mods by counting positional arguments.
        """
        parts = tuple(self.parts().values())

        def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            out = parts[0](b, h, q_idx, kv_idx)
            for part in parts[1:]:
                out = out | part(b, h, q_idx, kv_idx)
            return out

        mask_mod.__name__ = f"mask_mod_{type(self).__name__.lower()}"
        return mask_mod

    def parts(self) -> dict[str, MaskMod]:
        """The named pieces whose union is this layout, each a causal mask_mod."""
        raise NotImplementedError

    def check_heads(self, n_heads: int) -> None:
        """Raise ValueError if the layout cannot be used with n_heads heads."""
        _check_int("n_heads", n_heads, 1)
        if n_heads % self.period:
            raise ValueError(
                f"{self!r} cycles over {self.period} head patterns, so the number of heads must "
                f"be a multiple of {self.period}; got {n_heads}"
            )

    def dense_mask(
        self, n: int, n_heads: int = 1, device: torch.device | str | None = None
    ) -> Tensor:
        """The full boolean mask, shape [n_heads, n, n]; O(n^2) memory, for small n."""
        import torch

        _check_int("n", n, 1)
        self.check_heads(n_heads)
        h = torch.arange(n_heads, device=device)[:, None, None]
        i = torch.arange(n, device=device)[None, :, None]
        j = torch.arange(n, device=device)[None, None, :]
        b = torch.zeros((), dtype=torch.long, device=device)
        return self.mask_mod(b, h, i, j).expand(n_heads, n, n).contiguous()

    def nnz(self, n: int, n_heads: int = 1) -> int:
        """Exact number of allowed (head, i, j) triples, from closed forms."""
        _check_int("n", n, 0)
        self.check_heads(n_heads)
        return sum(self._nnz_head(n, h) for h in range(n_heads))

    def density(self, n: int) -> float:
        """Allowed pairs as a share of the n(n+1)/2 causal pairs (averaged over head patterns)."""
        return self.nnz(n, self.period) / (self.period * n * (n + 1) / 2)

    def _nnz_head(self, n: int, h: int) -> int:
        raise NotImplementedError


@dataclass(frozen=True, repr=False)
class Dense(Layout):
    """Full causal attention: j <= i."""

    def parts(self) -> dict[str, MaskMod]:
        return {"causal": lambda b, h, q, k: q >= k}

    def _nnz_head(self, n: int, h: int) -> int:
        return n * (n + 1) // 2


@dataclass(frozen=True, repr=False)
class Local(Layout):
    """A causal window of l keys: 0 <= i - j < l."""

    l: int

    def __post_init__(self) -> None:
        _check_int("local: l", self.l, 1)

    def parts(self) -> dict[str, MaskMod]:
        return {"local": _local_mod(self.l)}

    def _nnz_head(self, n: int, h: int) -> int:
        return _sum_min(n, self.l)


@dataclass(frozen=True, repr=False)
class Column(Layout):
    """Every l-th key back from the query: j <= i and (i - j) mod l == 0."""

    l: int

    def __post_init__(self) -> None:
        _check_int("column: l", self.l, 1)

    def parts(self) -> dict[str, MaskMod]:
        return {"column": _column_mod(self.l)}

    def _nnz_head(self, n: int, h: int) -> int:
        return _sum_floor(n, self.l) + n


@dataclass(frozen=True, repr=False)
class Strided(Layout):
    """local(l) ∪ column(l), merged. For images l = W*C: the previous row and the column above."""

    l: int

    def __post_init__(self) -> None:
        _check_int("strided: l", self.l, 1)

    def parts(self) -> dict[str, MaskMod]:
        return {"local": _local_mod(self.l), "column": _column_mod(self.l)}

    def _nnz_head(self, n: int, h: int) -> int:
        # the column part adds floor(i / l) keys beyond the window (i itself is in both)
        return _sum_min(n, self.l) + _sum_floor(n, self.l)


@dataclass(frozen=True, repr=False)
class Fixed(Layout):
    """Own block of l keys plus the last c "summary" keys of every earlier block.

    With num_verts = k > 1, head h uses summary set v = h mod k at offsets
    [l - (v+1)c, l - vc - 1] within each block (``fixed_summary_offsets``), so k * c <= l is
    required.
    """

    l: int
    c: int
    num_verts: int = 1

    def __post_init__(self) -> None:
        _check_int("fixed: l", self.l, 1)
        _check_int("fixed: c", self.c, 1)
        _check_int("fixed: num_verts", self.num_verts, 1)
        if self.c * self.num_verts > self.l:
            raise ValueError(
                f"fixed(l={self.l}, c={self.c}, num_verts={self.num_verts}): the summary "
                f"offsets need c * num_verts <= l (each of the {self.num_verts} head groups "
                f"takes c={self.c} of the l={self.l} positions of a block)"
            )

    @property
    def period(self) -> int:  # type: ignore[override]
        return self.num_verts

    def __repr__(self) -> str:
        nv = f", num_verts={self.num_verts}" if self.num_verts != 1 else ""
        return f"fixed(l={self.l}, c={self.c}{nv})"

    def parts(self) -> dict[str, MaskMod]:
        l = self.l

        def block(b: Tensor, h: Tensor, q: Tensor, k: Tensor) -> Tensor:
            return (q >= k) & (q // l == k // l)

        def summary(b: Tensor, h: Tensor, q: Tensor, k: Tensor) -> Tensor:
            lo, hi = fixed_summary_offsets(h, l, self.c, self.num_verts)
            r = k % l
            return (q >= k) & (r >= lo) & (r <= hi)

        return {"block": block, "summary": summary}

    def _nnz_head(self, n: int, h: int) -> int:
        # own block up to i, plus c summary keys in each of the floor(i/l) complete earlier blocks
        return _sum_mod(n, self.l) + n + self.c * _sum_floor(n, self.l)


@dataclass(frozen=True, repr=False)
class MultiHead(Layout):
    """Each head its own pattern (the paper's Eq. 8): head h uses patterns[h mod p]."""

    patterns: tuple[Layout, ...]

    def __post_init__(self) -> None:
        if len(self.patterns) < 1:
            raise ValueError("multihead(...) needs at least one pattern")
        for p in self.patterns:
            if not isinstance(p, Layout):
                raise ValueError(f"multihead(...) takes layouts, got {p!r}")
            if p.period != 1:
                raise ValueError(f"multihead(...) patterns must be the same in every head: {p!r}")

    @property
    def period(self) -> int:  # type: ignore[override]
        return len(self.patterns)

    def __repr__(self) -> str:
        return f"multihead({', '.join(map(repr, self.patterns))})"

    def parts(self) -> dict[str, MaskMod]:
        p = len(self.patterns)
        names: list[str] = []
        for pattern in self.patterns:
            names += [k for k in pattern.parts() if k not in names]

        def part_of(name: str) -> MaskMod:
            def mod(b: Tensor, h: Tensor, q: Tensor, k: Tensor) -> Tensor:

                out = q != q  # all False, as a tensor or an array like q
                for idx, pattern in enumerate(self.patterns):
                    sub = pattern.parts().get(name)
                    if sub is not None:
                        out = out | ((h % p == idx) & sub(b, h, q, k))
                return out

            return mod

        return {name: part_of(name) for name in names}

    def _nnz_head(self, n: int, h: int) -> int:
        return self.patterns[h % len(self.patterns)]._nnz_head(n, 0)


# --- the families users compare today (docs/DESIGN.md, "Layouts": the other families) --------


def _count_rows(n: int, row_count: Callable[[np.ndarray], np.ndarray]) -> int:
    """sum over queries i < n of row_count(i), evaluated in slices of at most 2**16 queries: O(n)
    time, O(2**16) memory, no mask (for the families with no short closed form)."""
    total = 0
    for start in range(0, n, 1 << 16):
        i = np.arange(start, min(n, start + (1 << 16)), dtype=np.int64)
        total += int(row_count(i).sum())
    return total


@dataclass(frozen=True, repr=False)
class Dilated(Layout):
    """w keys spaced r apart, back from the query: j = i - r*t for t = 0..w-1 (LongNet's dilated
    segment, Longformer's dilated window; r = 1 is local(w))."""

    w: int
    r: int

    def __post_init__(self) -> None:
        _check_int("dilated: w", self.w, 1)
        _check_int("dilated: r", self.r, 1)

    def parts(self) -> dict[str, MaskMod]:
        w, r = self.w, self.r

        def dilated(b: Tensor, h: Tensor, q: Tensor, k: Tensor) -> Tensor:
            return (q >= k) & ((q - k) % r == 0) & (q - k < r * w)

        return {"dilated": dilated}

    def _nnz_head(self, n: int, h: int) -> int:
        # row i keeps min(w, floor(i / r) + 1) keys: the cap binds from i = r*w on
        m = min(n, self.r * self.w)
        return _sum_floor(m, self.r) + m + self.w * (n - m)


@dataclass(frozen=True, repr=False)
class Sinks(Layout):
    """The first s tokens (attention sinks) + a causal window of w keys: j < s or i - j < w
    (StreamingLLM)."""

    s: int
    w: int

    def __post_init__(self) -> None:
        _check_int("sinks: s", self.s, 1)
        _check_int("sinks: w", self.w, 1)

    def parts(self) -> dict[str, MaskMod]:
        s = self.s

        def sink(b: Tensor, h: Tensor, q: Tensor, k: Tensor) -> Tensor:
            return (q >= k) & (k < s)

        return {"sink": sink, "window": _local_mod(self.w)}

    def _nnz_head(self, n: int, h: int) -> int:
        # |sinks| + |window| - |both|; both = {j : max(0, i - w + 1) <= j <= min(s - 1, i)},
        # empty from i = s + w - 1 on
        s, w = self.s, self.w

        def both(i: np.ndarray) -> np.ndarray:
            return np.maximum(0, np.minimum(s - 1, i) - np.maximum(0, i - w + 1) + 1)

        return _sum_min(n, s) + _sum_min(n, w) - _count_rows(min(n, s + w - 1), both)


@dataclass(frozen=True, repr=False)
class Axial(Layout):
    """Masked row + column attention over an image of ``width`` tokens a row (Ho et al. 2019):
    the row so far (j // width == i // width) and the column above ((i - j) mod width == 0)."""

    width: int

    def __post_init__(self) -> None:
        _check_int("axial: width", self.width, 1)

    def parts(self) -> dict[str, MaskMod]:
        return {"row": _row_mod(self.width), "column": _column_mod(self.width)}

    def _nnz_head(self, n: int, h: int) -> int:
        # the row so far ((i mod width) + 1 keys, i included) + floor(i / width) rows above
        return _sum_mod(n, self.width) + n + _sum_floor(n, self.width)


@dataclass(frozen=True, repr=False)
class Neighborhood(Layout):
    """A 2-D neighbourhood over an image of ``width`` tokens a row (Image Transformer local-2D,
    NATTEN): the kh rows up to the query's own, the columns within kw // 2 of its own, then
    raster-causal (j <= i: in the query's row, only the columns to its left). NATTEN's causal
    mode is per axis and would drop the columns to the right in the rows above too."""

    kh: int
    kw: int
    width: int

    def __post_init__(self) -> None:
        _check_int("neighborhood: kh", self.kh, 1)
        _check_int("neighborhood: kw", self.kw, 1)
        _check_int("neighborhood: width", self.width, 1)

    def parts(self) -> dict[str, MaskMod]:
        kh, half, width = self.kh, self.kw // 2, self.width

        def neighborhood(b: Tensor, h: Tensor, q: Tensor, k: Tensor) -> Tensor:
            dr = q // width - k // width
            dc = q % width - k % width
            return (q >= k) & (dr < kh) & (dc <= half) & (-dc <= half)

        return {"neighborhood": neighborhood}

    def _nnz_head(self, n: int, h: int) -> int:
        kh, half, width = self.kh, self.kw // 2, self.width

        def row_count(i: np.ndarray) -> np.ndarray:
            r, c = i // width, i % width
            span = np.minimum(width - 1, c + half) - np.maximum(0, c - half) + 1
            own = c - np.maximum(0, c - half) + 1
            return np.minimum(r, kh - 1) * span + own

        return _count_rows(n, row_count)


@dataclass(frozen=True, repr=False)
class BlockSparse(Layout):
    """Block-causal attention over blocks of ``block`` tokens (onnxruntime's SparseAttention,
    the Phi-3-small layout): query block u sees key block v <= u when u - v < local_blocks or
    (v + 1) mod vert_stride == 0, causal (j <= i) inside the diagonal block."""

    block: int
    local_blocks: int
    vert_stride: int

    def __post_init__(self) -> None:
        _check_int("block_sparse: block", self.block, 1)
        _check_int("block_sparse: local_blocks", self.local_blocks, 1)
        _check_int("block_sparse: vert_stride", self.vert_stride, 1)

    def parts(self) -> dict[str, MaskMod]:
        size, nl, vs = self.block, self.local_blocks, self.vert_stride

        def local(b: Tensor, h: Tensor, q: Tensor, k: Tensor) -> Tensor:
            return (q >= k) & (q // size - k // size < nl)

        def vertical(b: Tensor, h: Tensor, q: Tensor, k: Tensor) -> Tensor:
            return (q >= k) & ((k // size + 1) % vs == 0)

        return {"local": local, "vertical": vertical}

    def _nnz_head(self, n: int, h: int) -> int:
        size, nl, vs = self.block, self.local_blocks, self.vert_stride

        def row_count(i: np.ndarray) -> np.ndarray:
            u = i // size
            # earlier blocks: the nl - 1 before u, then those of [0, u - nl] with (v+1) % vs == 0
            vertical = np.maximum(0, u - nl + 1) // vs
            return size * (np.minimum(u, nl - 1) + vertical) + i % size + 1

        return _count_rows(n, row_count)


# the random blocks' draw: integer arithmetic modulo a prime below 2**31, so every product stays
# under 2**62 and ints, int64 tensors and numpy arrays give the same draw
HASH_PRIME = 2_147_483_629


def _hash3(seed: Index, u: Index, t: Index) -> Index:
    x = (seed % HASH_PRIME * 1_000_003 + u * 7_919 + t * 104_729 + 12_345) % HASH_PRIME
    x = (x * x + 2_654_435) % HASH_PRIME
    return (x * x + 40_503) % HASH_PRIME


def bigbird_random_block(
    seed: Index, u: Index, t: Index, random: int, window: int, globals_: int
) -> Index:
    """The t-th random key block (t < random) of query block u in bigbird(..., seed): drawn from
    the candidates [globals_, u - window] (past blocks outside the window and the globals) by
    stratified sampling, one block from each of ``random`` equal strata, so the draws are
    distinct; with fewer candidates than ``random`` every candidate is taken (slot t takes
    candidate t) and a slot past them names block -1, which no key is in."""
    m = u - window + 1 - globals_  # how many candidates
    m_pos = m * (m > 0)  # max(m, 0) with plain operators
    lo = t * m_pos // random
    hi = (t + 1) * m_pos // random
    width = hi - lo + (hi == lo)  # avoid % 0 where a stratum is empty (m < random)
    drawn = lo + _hash3(seed, u, t) % width
    few = m_pos < random + 0 * t  # few candidates: slot t takes candidate t, if there is one
    pick = drawn + few * (t - drawn)
    valid = pick < m_pos
    return (globals_ + pick + 1) * valid - 1


@dataclass(frozen=True, repr=False)
class BigBird(Layout):
    """BigBird's block layout made causal (Zaheer et al. 2020) over blocks of ``block`` tokens:
    query block u sees the window of key blocks u - window + 1 .. u, the first ``globals``
    blocks, and ``random`` blocks drawn from the rest of its past (bigbird_random_block), fixed
    by ``seed``; causal (j <= i) inside the diagonal block. The paper's encoder window of 3
    blocks centred on the query is window=2 here (the future block is dropped)."""

    block: int
    window: int
    globals: int
    random: int
    seed: int = 0

    def __post_init__(self) -> None:
        _check_int("bigbird: block", self.block, 1)
        _check_int("bigbird: window", self.window, 1)
        _check_int("bigbird: globals", self.globals, 0)
        _check_int("bigbird: random", self.random, 0)
        _check_int("bigbird: seed", self.seed, 0)
        if self.random > 16:
            raise ValueError(f"bigbird: random must be <= 16 blocks, got {self.random}")

    def parts(self) -> dict[str, MaskMod]:
        size, w, g, r, seed = self.block, self.window, self.globals, self.random, self.seed

        def window(b: Tensor, h: Tensor, q: Tensor, k: Tensor) -> Tensor:
            return (q >= k) & (q // size - k // size < w)

        def global_(b: Tensor, h: Tensor, q: Tensor, k: Tensor) -> Tensor:
            return (q >= k) & (k // size < g)

        def random(b: Tensor, h: Tensor, q: Tensor, k: Tensor) -> Tensor:
            u, v = q // size, k // size
            out = q != q  # all False, as a tensor or an array like q
            for t in range(r):
                out = out | (v == bigbird_random_block(seed, u, t, r, w, g))
            return out

        parts = {"window": window}
        if g:
            parts["global"] = global_
        if r:
            parts["random"] = random
        return parts

    def _nnz_head(self, n: int, h: int) -> int:
        size, w, g, r = self.block, self.window, self.globals, self.random

        def row_count(i: np.ndarray) -> np.ndarray:
            u = i // size
            in_window = np.minimum(u, w - 1)  # earlier blocks in the window
            # globals outside the window: blocks [0, min(g, u - w + 1))
            extra_globals = np.clip(np.minimum(g, u - w + 1), 0, None)
            candidates = np.clip(u - w + 1 - g, 0, None)
            return size * (in_window + extra_globals + np.minimum(candidates, r)) + i % size + 1

        return _count_rows(n, row_count)


def _local_mod(l: int) -> MaskMod:
    def local(b: Tensor, h: Tensor, q: Tensor, k: Tensor) -> Tensor:
        return (q >= k) & (q - k < l)

    return local


def _row_mod(width: int) -> MaskMod:
    def row(b: Tensor, h: Tensor, q: Tensor, k: Tensor) -> Tensor:
        return (q >= k) & (q // width == k // width)

    return row


def _column_mod(l: int) -> MaskMod:
    def column(b: Tensor, h: Tensor, q: Tensor, k: Tensor) -> Tensor:
        return (q >= k) & ((q - k) % l == 0)

    return column


# --- constructors (the public, attention-gym-like names) --------------------------------------


def dense() -> Dense:
    return Dense()


def local(l: int) -> Local:
    return Local(l)


def column(l: int) -> Column:
    return Column(l)


def strided(l: int) -> Strided:
    return Strided(l)


def fixed(l: int, c: int, num_verts: int = 1) -> Fixed:
    return Fixed(l, c, num_verts)


def multihead(*patterns: Layout) -> MultiHead:
    return MultiHead(tuple(patterns))


def dilated(w: int, r: int) -> Dilated:
    return Dilated(w, r)


def sinks(s: int, w: int) -> Sinks:
    return Sinks(s, w)


def axial(width: int) -> Axial:
    return Axial(width)


def neighborhood(kh: int, kw: int, width: int) -> Neighborhood:
    return Neighborhood(kh, kw, width)


def block_sparse(block: int, local_blocks: int, vert_stride: int) -> BlockSparse:
    return BlockSparse(block, local_blocks, vert_stride)


def bigbird(
    block: int,
    window: int,
    globals: int,  # noqa: A002  (BigBird's own name for the global blocks)
    random: int,
    seed: int = 0,
) -> BigBird:
    return BigBird(block, window, globals, random, seed)


_CONSTRUCTORS: dict[str, Callable[..., Layout]] = {
    "dense": dense,
    "local": local,
    "column": column,
    "strided": strided,
    "fixed": fixed,
    "multihead": multihead,
    "dilated": dilated,
    "sinks": sinks,
    "axial": axial,
    "neighborhood": neighborhood,
    "block_sparse": block_sparse,
    "bigbird": bigbird,
}

#: content-based selections: specs of kernels/selection.py, which need the scores (not masks)
SELECTIONS = ("topk", "moba")


def parse_layout(spec: str | Layout) -> Layout:
    """Turn a spec such as ``"strided(l=28)"``, ``"fixed(28, 4)"`` or ``"dense"`` into a layout.

    Parsed with ``ast`` (never evaluated): only the constructor names above, integer arguments
    and nested layouts (for ``multihead``) are accepted. Raises ValueError with what is allowed.
    """
    if isinstance(spec, Layout):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"a layout spec must be a non-empty string, got {spec!r}")
    try:
        node = ast.parse(spec.strip(), mode="eval").body
    except SyntaxError:
        raise ValueError(f"cannot parse layout spec {spec!r}; {_SPEC_HELP}") from None
    return _build(node, spec)


# The largest integer a layout spec may hold: 2**20 tokens, models.checkpoint.MAX_TOKENS.
MAX_SPEC_INT = 2**20

_SPEC_HELP = (
    "expected one of dense(), local(l=L), column(l=L), strided(l=L), "
    "fixed(l=L, c=C[, num_verts=K]), dilated(w=W, r=R), sinks(s=S, w=W), axial(width=W), "
    "neighborhood(kh=KH, kw=KW, width=W), block_sparse(block=B, local_blocks=L, vert_stride=V), "
    "bigbird(block=B, window=W, globals=G, random=R[, seed=S]), multihead(LAYOUT, ...)"
)


def _build(node: ast.expr, spec: str) -> Layout:
    if isinstance(node, ast.Name):  # bare "dense"
        node = ast.Call(func=node, args=[], keywords=[])
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
        raise ValueError(f"cannot parse layout spec {spec!r}; {_SPEC_HELP}")
    name = node.func.id
    if name in SELECTIONS:
        raise ValueError(
            f"{name} in {spec!r} is a content-based selection: which keys it keeps depends on "
            f"the scores, so it is no static layout (no mask_mod, no mask ahead of the run); "
            f"it runs through kernels.selection (the reference / masked path)"
        )
    if name not in _CONSTRUCTORS:
        raise ValueError(f"unknown layout {name!r} in {spec!r}; {_SPEC_HELP}")
    if name == "multihead":
        if node.keywords:
            raise ValueError(f"multihead takes layouts as positional arguments: {spec!r}")
        return multihead(*(_build(a, spec) for a in node.args))

    return call_spec(node, spec, _CONSTRUCTORS[name], "layout", _SPEC_HELP)


def call_spec(node: ast.Call, spec: str, make: Callable, what: str, help_: str):
    """``make(*args, **kwargs)`` with a parsed spec call's integer arguments, each bounded by
    MAX_SPEC_INT before any arithmetic (a 23-digit l would overflow the first int64 it meets);
    ValueError naming what is wrong. Shared with kernels/selection.py's specs."""

    def value(a: ast.expr) -> int:
        if isinstance(a, ast.UnaryOp) and isinstance(a.op, ast.USub):
            return -value(a.operand)
        if not (isinstance(a, ast.Constant) and type(a.value) is int):
            raise ValueError(f"{what} arguments must be integers in {spec!r}; {help_}")
        if abs(a.value) > MAX_SPEC_INT:
            raise ValueError(
                f"{what} argument {a.value} in {spec!r} is out of range: it is over "
                f"{MAX_SPEC_INT:,} (2**20, the longest sequence)"
            )
        return a.value

    args = [value(a) for a in node.args]
    kwargs = {k.arg: value(k.value) for k in node.keywords if k.arg is not None}
    try:
        return make(*args, **kwargs)
    except TypeError as e:
        raise ValueError(f"bad arguments in {what} spec {spec!r} ({e}); {help_}") from None


#: every static family by its constructor's name, with its parameters in spec order
FAMILY_PARAMS: dict[str, tuple[str, ...]] = {
    "dense": (),
    "local": ("l",),
    "column": ("l",),
    "strided": ("l",),
    "fixed": ("l", "c", "num_verts"),
    "dilated": ("w", "r"),
    "sinks": ("s", "w"),
    "axial": ("width",),
    "neighborhood": ("kh", "kw", "width"),
    "block_sparse": ("block", "local_blocks", "vert_stride"),
    "bigbird": ("block", "window", "globals", "random", "seed"),
}


def image_family_params(name: str, row_stride: int) -> dict[str, int]:
    """A family's parameters for images of ``row_stride`` tokens a row, at about strided's
    budget (one row back + the column above: ~41 keys a query on 28 x 28) where the family can
    be sized; each aligned with the image where it has a period (a row, a column, a block that
    divides the row). fixed's c is set by image_layout_spec from the length."""
    w = row_stride
    block = max(1, w // 4)
    table: dict[str, dict[str, int]] = {
        "dense": {},
        "local": {"l": w + w // 2},
        "column": {"l": w},
        "strided": {"l": w},
        "fixed": {"l": w, "c": 1},
        "dilated": {"w": w, "r": 2},
        "sinks": {"s": max(1, w // 7), "w": w + w // 4},
        "axial": {"width": w},
        "neighborhood": {"kh": 4, "kw": 2 * max(1, w // 5) + 1, "width": w},
        "block_sparse": {"block": block, "local_blocks": 5, "vert_stride": 8},
        "bigbird": {"block": block, "window": 5, "globals": 1, "random": 2, "seed": 0},
    }
    if name not in table:
        raise ValueError(f"unknown layout family {name!r}; choose one of {', '.join(table)}")
    return table[name]


def image_layout_spec(name: str, row_stride: int, n_tokens: int) -> str:
    """A family by name, sized for images of ``row_stride`` tokens a row (image_family_params):
    "strided" -> strided(l=row), "axial" -> axial(width=row), ...; a spec with arguments (or
    any other text) is returned as it is.

    fixed's c is the smallest that gives fixed at least strided's density over ``n_tokens``, so
    both layouts get the same attention budget: c = 2 on 28x28 gray (41.5 vs 41.0 keys per query).
    """
    if name not in FAMILY_PARAMS:
        return name
    params = image_family_params(name, row_stride)
    if name == "fixed":
        target = strided(row_stride).density(n_tokens)
        c = next(
            c for c in range(1, row_stride + 1) if fixed(row_stride, c).density(n_tokens) >= target
        )
        return f"fixed(l={row_stride}, c={c})"
    return repr(_CONSTRUCTORS[name](**params))
