"""The sparse-attention families of today (dilated, sinks, axial, neighborhood, block_sparse,
bigbird) are exact: every view equals docs/DESIGN.md, "Other families", written out pair by pair
here with no code shared with kernels/layouts.py, on sizes that are not multiples of the block
or the width."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest
import torch

from kernels import layouts as L


def random_picks(layout: L.BigBird, u: int) -> set[int]:
    """bigbird's random key blocks of query block u, checked against the rule of the docstring:
    distinct past blocks outside the window and the globals, min(random, candidates) of them."""
    candidates = list(range(layout.globals, u - layout.window + 1))
    picks = [
        int(L.bigbird_random_block(layout.seed, u, t, layout.random, layout.window, layout.globals))
        for t in range(layout.random)
    ]
    kept = [p for p in picks if p != -1]
    assert all(p in candidates for p in kept), (picks, candidates)
    assert len(set(kept)) == len(kept) == min(len(candidates), layout.random)
    return set(kept)


def formula(layout: L.Layout, i: int, j: int) -> bool:
    if j > i:
        return False
    if isinstance(layout, L.Dilated):
        return (i - j) % layout.r == 0 and (i - j) // layout.r < layout.w
    if isinstance(layout, L.Sinks):
        return j < layout.s or i - j < layout.w
    if isinstance(layout, L.Axial):
        w = layout.width
        return i // w == j // w or i % w == j % w
    if isinstance(layout, L.Neighborhood):
        w = layout.width
        return i // w - j // w < layout.kh and abs(i % w - j % w) <= layout.kw // 2
    if isinstance(layout, L.BlockSparse):
        u, v = i // layout.block, j // layout.block
        return u - v < layout.local_blocks or (v + 1) % layout.vert_stride == 0
    if isinstance(layout, L.BigBird):
        u, v = i // layout.block, j // layout.block
        return u - v < layout.window or v < layout.globals or v in random_picks(layout, u)
    raise AssertionError(layout)


def formula_mask(layout: L.Layout, n: int) -> torch.Tensor:
    m = torch.zeros(1, n, n, dtype=torch.bool)
    for i, j in itertools.product(range(n), range(n)):
        m[0, i, j] = formula(layout, i, j)
    return m


FAMILIES = [
    L.dilated(1, 1),
    L.dilated(3, 4),
    L.dilated(6, 2),
    L.sinks(1, 1),
    L.sinks(2, 5),
    L.sinks(9, 3),
    L.axial(1),
    L.axial(5),
    L.axial(7),
    L.neighborhood(1, 1, 5),
    L.neighborhood(2, 3, 5),
    L.neighborhood(3, 5, 7),
    L.neighborhood(2, 9, 4),
    L.block_sparse(1, 1, 1),
    L.block_sparse(4, 2, 3),
    L.block_sparse(3, 1, 2),
    L.bigbird(3, 2, 1, 2),
    L.bigbird(2, 1, 0, 3, seed=7),
    L.bigbird(4, 3, 2, 0),
    L.bigbird(1, 2, 1, 4, seed=123),
]
SIZES = [1, 2, 13, 29, 50]


@pytest.mark.parametrize("layout", FAMILIES, ids=repr)
@pytest.mark.parametrize("n", SIZES)
def test_dense_mask_equals_formula(layout: L.Layout, n: int) -> None:
    assert torch.equal(layout.dense_mask(n), formula_mask(layout, n))


@pytest.mark.parametrize("layout", FAMILIES, ids=repr)
@pytest.mark.parametrize("n", SIZES + [97, 300])
def test_nnz_equals_mask_count(layout: L.Layout, n: int) -> None:
    assert layout.nnz(n, 2) == 2 * int(layout.dense_mask(n).sum())


def test_nnz_at_large_n_needs_no_mask() -> None:
    n = 1 << 20
    # closed forms where one exists, row counts without a mask elsewhere
    assert L.dilated(4, 3).nnz(n) == sum(min(4, i // 3 + 1) for i in range(n))
    assert L.axial(1024).nnz(n) == sum(i % 1024 + 1 + i // 1024 for i in range(n))
    assert L.block_sparse(64, 16, 8).nnz(n) > 0
    assert L.bigbird(64, 3, 2, 3).nnz(n) > 0
    assert L.neighborhood(7, 7, 1024).nnz(n) > 0


@pytest.mark.parametrize("layout", FAMILIES, ids=repr)
def test_parts_union_is_the_layout_and_parts_are_causal(layout: L.Layout) -> None:
    n = 41
    h, i, j = torch.zeros(()), torch.arange(n)[:, None], torch.arange(n)[None, :]
    union = torch.zeros(n, n, dtype=torch.bool)
    for part in layout.parts().values():
        m = part(torch.zeros(()), h, i, j)
        assert not (m & (j > i)).any()
        union |= m
    assert torch.equal(union[None], layout.dense_mask(n))


@pytest.mark.parametrize("layout", FAMILIES, ids=repr)
def test_predicates_take_numpy_arrays(layout: L.Layout) -> None:
    # the Layouts page draws with numpy, without importing torch
    n = 37
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    got = np.broadcast_to(layout.mask_mod(0, 0, i, j), (n, n))
    assert np.array_equal(got, layout.dense_mask(n)[0].numpy())


@pytest.mark.parametrize("layout", FAMILIES, ids=repr)
def test_mask_mod_through_flex_attention(layout: L.Layout) -> None:
    flex = pytest.importorskip("torch.nn.attention.flex_attention")
    n, block = 45, 16
    bm = flex.create_block_mask(
        layout.mask_mod, B=None, H=1, Q_LEN=n, KV_LEN=n, device="cpu", BLOCK_SIZE=block
    )
    mask = layout.dense_mask(n)
    nb = -(-n // block)
    padded = torch.zeros(1, nb * block, nb * block, dtype=torch.bool)
    padded[:, :n, :n] = mask
    tiles = padded.view(1, nb, block, nb, block).any(dim=4).any(dim=2)
    assert torch.equal(bm.to_dense()[0].bool(), tiles)
    hh, ii, jj = torch.meshgrid(torch.arange(1), torch.arange(n), torch.arange(n), indexing="ij")
    elementwise = torch.vmap(layout.mask_mod, in_dims=(None, 0, 0, 0))(torch.tensor(0), hh, ii, jj)
    assert torch.equal(elementwise, mask)


@pytest.mark.parametrize("layout", FAMILIES, ids=repr)
def test_spec_round_trip(layout: L.Layout) -> None:
    assert L.parse_layout(repr(layout)) == layout


def test_spec_forms() -> None:
    spec = "block_sparse(block=64, local_blocks=16, vert_stride=8)"
    assert repr(L.block_sparse(64, 16, 8)) == spec
    assert L.parse_layout("neighborhood(3, 5, width=28)") == L.neighborhood(3, 5, 28)
    assert L.parse_layout("bigbird(block=28, window=2, globals=1, random=2)").seed == 0
    assert L.parse_layout("multihead(axial(width=28), sinks(s=4, w=28))").period == 2


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("dilated(w=0, r=2)", "dilated: w must be >= 1"),
        ("dilated(w=3, r=0)", "dilated: r must be >= 1"),
        ("sinks(s=0, w=4)", "sinks: s must be >= 1"),
        ("axial(width=-1)", "axial: width must be >= 1"),
        ("neighborhood(kh=2, kw=0, width=28)", "neighborhood: kw must be >= 1"),
        ("block_sparse(block=64, local_blocks=0, vert_stride=8)", "local_blocks must be >= 1"),
        ("bigbird(block=8, window=2, globals=-1, random=2)", "bigbird: globals must be >= 0"),
        ("bigbird(block=8, window=2, globals=1, random=99)", "random must be <= 16"),
        ("neighborhood(kh=2, kw=3)", "bad arguments"),
        ("topk(k=8)", "content-based selection"),
        ("moba(block=28, topk=3)", "content-based selection"),
        ("sliding(w=3)", "unknown layout"),
    ],
)
def test_bad_parameters_name_the_parameter_and_range(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        L.parse_layout(spec)


def test_special_cases_are_the_older_layouts() -> None:
    n = 90
    assert torch.equal(L.dilated(7, 1).dense_mask(n), L.local(7).dense_mask(n))
    assert torch.equal(L.dilated(n, 5).dense_mask(n), L.column(5).dense_mask(n))
    assert torch.equal(L.block_sparse(1, 6, n + 1).dense_mask(n), L.local(6).dense_mask(n))
    axial = L.axial(9).dense_mask(n)[0]
    assert torch.equal(axial, L.fixed(9, 1).parts()["block"](0, 0, *_ij(n)) | _col(9, n))
    # a neighbourhood as wide as the image and kh rows deep holds every key of those rows
    full_rows = L.neighborhood(2, 2 * 9 + 1, 9).dense_mask(n)
    assert torch.equal(full_rows, L.block_sparse(9, 2, n + 1).dense_mask(n))


def _ij(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.arange(n)[:, None], torch.arange(n)[None, :]


def _col(l: int, n: int) -> torch.Tensor:
    i, j = _ij(n)
    return (j <= i) & ((i - j) % l == 0)


def test_bigbird_seed_changes_only_the_random_blocks() -> None:
    n = 200
    a, b = L.bigbird(8, 2, 1, 3, seed=0), L.bigbird(8, 2, 1, 3, seed=1)
    assert not torch.equal(a.dense_mask(n), b.dense_mask(n))
    assert a.nnz(n) == b.nnz(n)  # the same number of blocks, drawn elsewhere
    i, j = _ij(n)
    for part in ("window", "global"):
        assert torch.equal(a.parts()[part](0, 0, i, j), b.parts()[part](0, 0, i, j))
