"""Layouts are exact: every view of a layout equals the formulas of docs/DESIGN.md, "Layouts",
pair by pair."""

from __future__ import annotations

import itertools
import re
from typing import NamedTuple

import pytest
import torch

from kernels import layouts as L

SIZES = [1, 2, 7, 28, 29, 64, 100]  # includes n < l, n = l, n not a multiple of l or block
BLOCKS = [1, 3, 16, 32]


def formula(layout: L.Layout, h: int, i: int, j: int) -> bool:
    """docs/DESIGN.md, "Layouts", written out literally, one pair at a time (no shared code with
    layouts.py)."""
    if j > i:
        return False
    if isinstance(layout, L.Dense):
        return True
    if isinstance(layout, L.Local):
        return i - j < layout.l
    if isinstance(layout, L.Column):
        return (i - j) % layout.l == 0
    if isinstance(layout, L.Strided):
        return i - j < layout.l or (i - j) % layout.l == 0
    if isinstance(layout, L.Fixed):
        l, c = layout.l, layout.c
        v = h % layout.num_verts
        return j // l == i // l or l - (v + 1) * c <= j % l <= l - v * c - 1
    if isinstance(layout, L.MultiHead):
        p = layout.patterns
        return formula(p[h % len(p)], 0, i, j)
    raise AssertionError(layout)


def formula_mask(layout: L.Layout, n: int, n_heads: int) -> torch.Tensor:
    m = torch.zeros(n_heads, n, n, dtype=torch.bool)
    for h, i, j in itertools.product(range(n_heads), range(n), range(n)):
        m[h, i, j] = formula(layout, h, i, j)
    return m


def part_masks(layout: L.Layout, n: int, n_heads: int) -> dict[str, torch.Tensor]:
    """Each of the layout's parts as a boolean mask [n_heads, n, n] (parts may overlap)."""
    layout.check_heads(n_heads)
    h = torch.arange(n_heads)[:, None, None]
    i = torch.arange(n)[None, :, None]
    j = torch.arange(n)[None, None, :]
    b = torch.zeros((), dtype=torch.long)
    return {k: p(b, h, i, j).expand(n_heads, n, n) for k, p in layout.parts().items()}


# --- which block x block tiles hold an allowed pair, from interval arithmetic on the tiles: ----
# O((n/block)^2), not O(n^2), so it answers at n = 65536 what a FlexAttention block mask visits
# (docs/DESIGN.md, "Composing sparse attention from dense pieces")


def tile_map(layout: L.Layout, n: int, block: int, n_heads: int | None = None) -> torch.Tensor:
    """bool [n_heads, ceil(n/block), ceil(n/block)]: True where a tile holds an allowed pair.
    ``n_heads`` defaults to the layout's period; the last tile row/column may be partial."""
    n_heads = layout.period if n_heads is None else n_heads
    layout.check_heads(n_heads)
    starts = torch.arange(0, n, block)
    ends = torch.clamp(starts + block, max=n) - 1
    # inside a tile i runs over [qs, qe] and j over [ks, ke] (inclusive), so i - j takes every
    # integer value in [qs - ke, qe - ks]
    t = Tiles(starts[None, :, None], ends[None, :, None], starts[None, None, :], ends[None, None])
    h = torch.arange(n_heads)[:, None, None]
    nb = len(starts)
    return _tiles(layout, t, h).expand(n_heads, nb, nb).contiguous()


class Tiles(NamedTuple):
    qs: torch.Tensor  # [1, QB, 1]
    qe: torch.Tensor
    ks: torch.Tensor  # [1, 1, KB]
    ke: torch.Tensor

    @property
    def causal(self) -> torch.Tensor:
        return self.ks <= self.qe


def _ceil_div(a: torch.Tensor, b: int) -> torch.Tensor:
    return -torch.div(-a, b, rounding_mode="floor")


def _count_mod_in(x: torch.Tensor, l: int, lo, hi) -> torch.Tensor:
    """#{0 <= j < x : lo <= j mod l <= hi}, for x >= 0."""
    width = hi - lo + 1
    partial = torch.minimum(torch.clamp(x % l - lo, min=0), torch.as_tensor(width))
    return torch.div(x, l, rounding_mode="floor") * width + partial


def _local_tiles(t: Tiles, l: int) -> torch.Tensor:
    lo = torch.clamp(t.qs - t.ke, min=0)
    return t.causal & (lo <= torch.clamp(t.qe - t.ks, max=l - 1))


def _column_tiles(t: Tiles, l: int) -> torch.Tensor:
    # some multiple of l in [lo, hi] = the i - j of the tile
    lo = torch.clamp(t.qs - t.ke, min=0)
    return t.causal & (_ceil_div(lo, l) * l <= t.qe - t.ks)


def _tiles(layout: L.Layout, t: Tiles, h: torch.Tensor) -> torch.Tensor:
    if isinstance(layout, L.Dense):
        return t.causal
    if isinstance(layout, L.Local):
        return _local_tiles(t, layout.l)
    if isinstance(layout, L.Column):
        return _column_tiles(t, layout.l)
    if isinstance(layout, L.Strided):
        return _local_tiles(t, layout.l) | _column_tiles(t, layout.l)
    if isinstance(layout, L.Fixed):
        l = layout.l
        # block part: the tiles share a block and some j <= i inside it. Checking the largest
        # shared block b = min(qe // l, ke // l) suffices: if b == qe // l, i can be qe and any
        # key of the tile in b works once ks <= qe; otherwise b == ke // l < qe // l and i can
        # be the last index of b, which is >= ke >= j.
        shared = torch.maximum(t.qs // l, t.ks // l) <= torch.minimum(t.qe // l, t.ke // l)
        block = shared & t.causal
        # summary part: some j in [ks, min(ke, qe)] has j mod l in [lo, hi]
        lo, hi = L.fixed_summary_offsets(h, l, layout.c, layout.num_verts)
        top = torch.minimum(t.ke, t.qe)
        count = _count_mod_in(top + 1, l, lo, hi) - _count_mod_in(t.ks, l, lo, hi)
        return block | (t.causal & (count > 0))
    if isinstance(layout, L.MultiHead):
        p = len(layout.patterns)
        out = torch.zeros((), dtype=torch.bool)
        for idx, pattern in enumerate(layout.patterns):
            out = out | ((h % p == idx) & _tiles(pattern, t, h))
        return out
    raise AssertionError(layout)


LAYOUTS = [
    L.dense(),
    L.local(1),
    L.local(5),
    L.column(1),
    L.column(7),
    L.strided(1),
    L.strided(7),
    L.strided(28),
    L.fixed(7, 1),
    L.fixed(7, 3),
    L.fixed(7, 7),
    L.fixed(8, 2, num_verts=4),
    L.fixed(28, 4, num_verts=2),
    L.multihead(L.local(4), L.column(4)),
    L.multihead(L.strided(5), L.fixed(5, 2), L.dense()),
]


@pytest.mark.parametrize("layout", LAYOUTS, ids=repr)
@pytest.mark.parametrize("n", [1, 7, 29, 50])
def test_dense_mask_equals_formula(layout: L.Layout, n: int) -> None:
    heads = layout.period * 2
    assert torch.equal(layout.dense_mask(n, heads), formula_mask(layout, n, heads))


@pytest.mark.parametrize("layout", LAYOUTS, ids=repr)
@pytest.mark.parametrize("n", SIZES + [200, 785])
def test_nnz_equals_mask_count(layout: L.Layout, n: int) -> None:
    heads = layout.period
    assert layout.nnz(n, heads) == int(layout.dense_mask(n, heads).sum())


def test_nnz_matches_design_closed_forms() -> None:
    for n, l, c in [(784, 28, 4), (3072, 96, 12), (1000, 33, 5)]:
        assert L.strided(l).nnz(n) == sum(min(i + 1, l) + i // l for i in range(n))
        assert L.fixed(l, c).nnz(n) == sum(i % l + 1 + (i // l) * c for i in range(n))
        assert L.dense().nnz(n, 3) == 3 * n * (n + 1) // 2


def test_nnz_at_large_n_needs_no_mask() -> None:
    n = 65536  # a dense mask would be 4 GiB; nnz must be instant and exact
    assert L.strided(256).nnz(n, 16) == 16 * sum(min(i + 1, 256) + i // 256 for i in range(n))


@pytest.mark.parametrize("layout", LAYOUTS, ids=repr)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("block", BLOCKS)
def test_tile_map_agrees_with_mask(layout: L.Layout, n: int, block: int) -> None:
    heads = layout.period
    mask = layout.dense_mask(n, heads)
    nb = -(-n // block)
    padded = torch.zeros(heads, nb * block, nb * block, dtype=torch.bool)
    padded[:, :n, :n] = mask
    # [H, nb*block, nb*block] -> [H, nb, block, nb, block]: a tile is kept if any pair is allowed
    expected = padded.view(heads, nb, block, nb, block).any(dim=4).any(dim=2)
    got = tile_map(layout, n, block)
    assert got.shape == (heads, nb, nb)
    assert torch.equal(got, expected)


def test_tile_map_is_cheap_at_large_n() -> None:
    tiles = tile_map(L.strided(256), 65536, 128)
    assert tiles.shape == (1, 512, 512)
    # docs/DESIGN.md, "Composing sparse attention from dense pieces": with l = block = 128 the
    # column part touches every causal tile, which is why a naive block mask skips nothing
    tiles = tile_map(L.strided(128), 16384, 128)
    assert torch.equal(tiles[0], torch.ones(128, 128, dtype=torch.bool).tril())
    assert torch.equal(tile_map(L.fixed(128, 16), 16384, 128)[0], tiles[0])


@pytest.mark.parametrize("layout", LAYOUTS, ids=repr)
def test_parts_union_is_the_layout(layout: L.Layout) -> None:
    n, heads = 40, layout.period
    parts = part_masks(layout, n, heads)
    union = torch.zeros(heads, n, n, dtype=torch.bool)
    for m in parts.values():
        union |= m
    assert torch.equal(union, layout.dense_mask(n, heads))


def test_part_names() -> None:
    assert list(L.strided(4).parts()) == ["local", "column"]
    assert list(L.fixed(4, 1).parts()) == ["block", "summary"]
    assert list(L.dense().parts()) == ["causal"]


@pytest.mark.parametrize("layout", LAYOUTS, ids=repr)
def test_mask_mod_through_flex_create_block_mask(layout: L.Layout) -> None:
    flex = pytest.importorskip("torch.nn.attention.flex_attention")
    n, heads, block = 77, layout.period * 2, 16
    bm = flex.create_block_mask(
        layout.mask_mod, B=None, H=heads, Q_LEN=n, KV_LEN=n, device="cpu", BLOCK_SIZE=block
    )
    # to_dense() gives the tiles flex will visit: exactly those holding any allowed pair
    flex_tiles = bm.to_dense()[0].bool()  # [1, H, nb, nb] -> [H, nb, nb]
    assert torch.equal(flex_tiles, tile_map(layout, n, block, heads))
    # and the mask_mod evaluated element-wise by flex equals the dense mask
    h, i, j = torch.meshgrid(torch.arange(heads), torch.arange(n), torch.arange(n), indexing="ij")
    elementwise = torch.vmap(layout.mask_mod, in_dims=(None, 0, 0, 0))(torch.tensor(0), h, i, j)
    assert torch.equal(elementwise, formula_mask(layout, n, heads))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: L.local(0), "l must be >= 1"),
        (lambda: L.strided(-3), "l must be >= 1"),
        (lambda: L.column(2.5), "must be an integer"),
        (lambda: L.fixed(8, 0), "c must be >= 1"),
        (lambda: L.fixed(8, 9), "c * num_verts <= l"),
        (lambda: L.fixed(8, 3, num_verts=3), "c * num_verts <= l"),
        (lambda: L.fixed(8, 2, num_verts=0), "num_verts must be >= 1"),
        (lambda: L.multihead(), "at least one pattern"),
        (lambda: L.multihead(L.fixed(8, 2, 2)), "same in every head"),
    ],
)
def test_impossible_parameters_say_what_is_allowed(make, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        make()


def test_heads_must_fit_the_pattern_period() -> None:
    with pytest.raises(ValueError, match="multiple of 4"):
        L.fixed(8, 2, num_verts=4).dense_mask(10, n_heads=6)
    with pytest.raises(ValueError, match="multiple of 2"):
        L.multihead(L.local(3), L.column(3)).nnz(10, n_heads=3)


@pytest.mark.parametrize("layout", LAYOUTS, ids=repr)
def test_spec_round_trip(layout: L.Layout) -> None:
    assert L.parse_layout(repr(layout)) == layout
    assert layout.name == repr(layout)


def test_spec_forms() -> None:
    assert repr(L.strided(28)) == "strided(l=28)"
    assert repr(L.fixed(28, 4)) == "fixed(l=28, c=4)"
    assert L.parse_layout("dense") == L.dense()
    assert L.parse_layout("fixed(28, 4, num_verts=2)") == L.fixed(28, 4, 2)
    assert L.parse_layout(" strided( l = 96 ) ") == L.strided(96)


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "sparse(l=3)",
        "strided(l=3.5)",
        "strided(l='3')",
        "strided(3, 4)",
        "__import__('os')",
        "strided(l=0)",
        "fixed(l=4)",
        "multihead(l=3)",
        "strided(l=3) + 1",
    ],
)
def test_bad_specs_raise_value_error(spec: str) -> None:
    with pytest.raises(ValueError):
        L.parse_layout(spec)


def test_fixed_summary_offsets_is_the_rule_for_ints_tensors_and_arrays() -> None:
    import numpy as np

    # set 0 is the last c keys of a block; head h uses set h mod num_verts
    assert L.fixed_summary_offsets(0, 8, 2, 1) == (6, 7)
    assert L.fixed_summary_offsets(1, 8, 2, 4) == (4, 5)
    assert L.fixed_summary_offsets(7, 8, 2, 4) == (0, 1)
    heads = list(range(12))
    want = [L.fixed_summary_offsets(h, 28, 4, 3) for h in heads]
    lo, hi = L.fixed_summary_offsets(torch.tensor(heads), 28, 4, 3)
    assert list(zip(lo.tolist(), hi.tolist(), strict=True)) == want
    lo, hi = L.fixed_summary_offsets(np.array(heads), 28, 4, 3)
    assert list(zip(lo.tolist(), hi.tolist(), strict=True)) == want
    # the summary part of fixed is exactly these offsets, in every earlier block
    summary = L.fixed(28, 4, 3).parts()["summary"]
    for h, (a, b) in zip(heads, want, strict=True):
        keys = torch.arange(60)
        got = summary(torch.tensor(0), torch.tensor(h), torch.tensor(59), keys)
        assert torch.equal(got, (keys % 28 >= a) & (keys % 28 <= b))


def test_openai_bT_b_b_b_is_a_per_layer_list_of_specs() -> None:
    # OpenAI's CIFAR-10 'bT,b,b,b' (one strided layer for every three local layers) is a model
    # config's list of one spec per layer; there is no separate interleaving helper
    from models.model import ModelConfig

    specs = ["strided(l=96)", "local(l=96)", "local(l=96)", "local(l=96)"] * 2
    config = ModelConfig(height=4, width=32, channels=3, n_layer=8, n_head=2, layout=specs)
    assert config.layouts == (L.strided(96), L.local(96), L.local(96), L.local(96)) * 2


def test_density_of_image_layouts() -> None:
    n = 784  # a 28x28 image, one row = 28 tokens
    dense_pairs = n * (n + 1) / 2
    assert L.strided(28).density(n) == pytest.approx(L.strided(28).nnz(n) / dense_pairs)
    assert 0.05 < L.strided(28).density(n) < 0.15  # about a tenth of dense at 784 tokens
    assert L.dense().density(n) == 1.0


@pytest.mark.parametrize(
    "first",
    [
        "import kernels",
        "from kernels import BACKENDS",
        "from kernels import layouts",
        "import models.model",
        "from kernels import reference_attention",
        "import kernels.dispatch",
    ],
)
def test_lazy_exports_give_the_attention_function(first):
    """kernels and models export their torch-backed names lazily (kernels/lazy.py); whatever
    is imported first, `kernels.attention` is then the function, not the submodule of the same
    name, as when everything was imported eagerly."""
    import subprocess
    import sys

    code = (
        f"{first}\n"
        "import inspect, kernels\n"
        "from kernels import attention\n"
        "assert inspect.isfunction(attention), attention\n"
        "assert inspect.isfunction(kernels.attention), kernels.attention\n"
        "from models import ModelConfig, load_model\n"
        "assert callable(load_model) and isinstance(ModelConfig, type)\n"
    )
    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
