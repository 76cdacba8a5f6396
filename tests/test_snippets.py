"""kernels/snippets.py: the copied mask_mod snippet of every static family, run on its own (exec,
nothing of the project in its namespace), gives exactly the layout's mask, elementwise through
torch.vmap and block by block through FlexAttention's create_block_mask on the CPU."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch.nn.attention.flex_attention import create_block_mask

from kernels import layouts as L
from kernels.snippets import mask_mod_source

# several parameter choices a family; the sizes below are multiples of none of the widths,
# blocks or strides (so partial rows, blocks and strata are checked)
LAYOUTS = [
    L.dense(),
    L.local(5),
    L.column(7),
    L.strided(7),
    L.strided(28),
    L.fixed(7, 2),
    L.fixed(12, 2, num_verts=3),
    L.fixed(10, 3, num_verts=2),
    L.dilated(4, 3),
    L.dilated(9, 1),
    L.sinks(3, 8),
    L.sinks(1, 1),
    L.axial(7),
    L.axial(28),
    L.neighborhood(3, 5, 7),
    L.neighborhood(2, 4, 11),
    L.neighborhood(4, 1, 6),
    L.block_sparse(4, 2, 3),
    L.block_sparse(7, 1, 2),
    L.bigbird(4, 2, 1, 2, seed=0),
    L.bigbird(3, 1, 0, 3, seed=7),
    L.bigbird(5, 3, 2, 0),
    L.bigbird(2, 2, 1, 16, seed=123_456),
    L.multihead(L.strided(7), L.fixed(7, 2), L.bigbird(4, 2, 1, 2, seed=3)),
    L.multihead(L.axial(9), L.neighborhood(2, 3, 9)),
]
SIZES = (61, 203)


def snippet_mask_mod(layout: L.Layout):
    """The snippet's mask_mod, exec'd in a namespace of its own."""
    namespace: dict = {}
    exec(compile(mask_mod_source(layout), f"<snippet of {layout!r}>", "exec"), namespace)  # noqa: S102
    return namespace["mask_mod"]


def vmap_mask(mask_mod, n: int, n_heads: int) -> torch.Tensor:
    """[n_heads, n, n]: mask_mod on one scalar (b, h, q, kv) at a time, vmapped over all."""
    one = torch.vmap(mask_mod, in_dims=(None, None, None, 0))
    row = torch.vmap(one, in_dims=(None, None, 0, None))
    head = torch.vmap(row, in_dims=(None, 0, None, None))
    b = torch.tensor(0)
    return head(b, torch.arange(n_heads), torch.arange(n), torch.arange(n))


@pytest.mark.parametrize("layout", LAYOUTS, ids=repr)
def test_snippet_equals_the_layout_elementwise(layout):
    mask_mod = snippet_mask_mod(layout)
    heads = layout.period
    for n in SIZES:
        expected = layout.dense_mask(n, heads)
        got = vmap_mask(mask_mod, n, heads)
        assert got.dtype == torch.bool
        assert torch.equal(got, expected), (layout, n)
        assert int(got.sum()) == layout.nnz(n, heads)


@pytest.mark.parametrize("layout", LAYOUTS, ids=repr)
def test_snippet_block_mask_on_the_cpu(layout):
    """create_block_mask marks a block when any pair in it is allowed: the same blocks as the
    layout's own mask, pooled."""
    mask_mod = snippet_mask_mod(layout)
    heads, n, block = layout.period, SIZES[1], 16
    got = create_block_mask(mask_mod, 1, heads, n, n, device="cpu", BLOCK_SIZE=block)
    nb = -(-n // block)
    padded = torch.zeros(heads, nb * block, nb * block, dtype=torch.bool)
    padded[:, :n, :n] = layout.dense_mask(n, heads)
    expected = padded.reshape(heads, nb, block, nb, block).any(dim=(2, 4))
    assert torch.equal(got.to_dense()[0].bool(), expected), layout


def test_snippet_is_self_contained_with_literal_parameters():
    source = mask_mod_source(L.bigbird(8, 3, 1, 2, seed=5))
    assert "kernels" not in source and "import torch" in source
    assert "def mask_mod(b, h, q_idx, kv_idx):" in source
    assert "random_block(5, q_idx // 8, 1, 2, 3, 1)" in source  # seed, u, t, r, w, g
    fixed = mask_mod_source(L.fixed(28, 2))
    assert "kv_idx % 28 >= 26" in fixed and "q_idx // 28 == kv_idx // 28" in fixed


def test_layouts_without_a_static_mask_are_refused():
    @dataclass(frozen=True, repr=False)
    class Scored(L.Layout):  # a layout of no family the snippets know
        k: int

    with pytest.raises(ValueError, match="no static mask_mod"):
        mask_mod_source(Scored(4))
