"""Who looks here (analysis/reverse.py): the column of one key token, from full and sparse maps."""

from __future__ import annotations

import pytest
import torch
from model_util import sharp_tiny

from analysis.reverse import (
    column_from_full,
    column_from_sparse,
    heads_average,
    heads_total,
    who_looks_here,
)
from kernels.capture import FullMap, SparseMap
from models import ModelConfig, SparseTransformer

N = 42  # 6 x 7 gray; one row = 7 tokens


def tiny(layout="dense()") -> SparseTransformer:
    return sharp_tiny(6, 7, 2, layout)


def tokens(batch=2, seed=0) -> torch.Tensor:
    return torch.randint(0, 256, (batch, N), generator=torch.Generator().manual_seed(seed))


def test_column_by_hand():
    probs = torch.tensor([[1.0, 0, 0], [0.25, 0.75, 0], [0.5, 0.1, 0.4]])[None, None]  # [1,1,3,3]
    want = torch.tensor([[[0, 0.75, 0.1]]])  # [B, H, N]: queries 1 and 2 look at key 1
    torch.testing.assert_close(column_from_full(FullMap(probs), 1), want)
    sparse = SparseMap(
        3, "dense()", torch.tensor([0, 1, 3, 6]), torch.tensor([0, 0, 1, 0, 1, 2]),
        torch.tensor([[[1.0, 0.25, 0.75, 0.5, 0.1, 0.4]]]),
    )  # fmt: skip
    torch.testing.assert_close(column_from_sparse(sparse, 1), want)
    two = torch.tensor([[[0.0, 0.5, 1.0], [0.0, 0.25, 0.0]]])  # [B=1, H=2, N=3]
    torch.testing.assert_close(heads_total(two), torch.tensor([[0.0, 0.75, 1.0]]))
    torch.testing.assert_close(heads_average(two), torch.tensor([[0.0, 0.375, 0.5]]))


@pytest.mark.parametrize("layout", ["dense()", "strided(l=7)", "fixed(l=7, c=2)"])
def test_full_and_sparse_forms_agree_exactly_and_earlier_queries_give_nothing(layout):
    model = tiny(layout)
    x = tokens()
    full = model.capture(x, form="full")
    sparse = model.capture(x, form="sparse")  # over each layer's own layout: all its attention
    for layer in (0, 1):
        for key in (0, 9, 20, 41):
            a = column_from_full(full[layer], key)  # [2, 2, 42]
            b = column_from_sparse(sparse[layer], key)
            assert a.shape == (2, 2, N)
            assert torch.equal(a, b)
            assert torch.equal(a[..., :key], torch.zeros_like(a[..., :key]))
            assert (a[..., key:] > 0).any()
    # a sparse support narrower than the attention keeps only its own pairs
    narrow = model.capture(x, form="sparse", support="local(l=7)")
    col = column_from_sparse(narrow[1], 20)
    assert torch.equal(col[..., 27:], torch.zeros_like(col[..., 27:]))
    torch.testing.assert_close(col[..., :27], column_from_full(full[1], 20)[..., :27])


def test_who_looks_here_from_the_model():
    model = tiny("strided(l=7)")
    x = tokens()
    cols = who_looks_here(model, x, 10, layers=[1])
    assert list(cols) == [1]
    want = column_from_full(model.capture(x, layers=[1], form="full")[1], 10)
    assert torch.equal(cols[1], want)
    with pytest.raises(ValueError, match="key token"):
        who_looks_here(model, x, N)


def test_dense_maps_above_4096_tokens_are_refused():
    big = FullMap(torch.zeros(1, 1, 1, 4097).expand(1, 1, 4097, 4097))  # no memory: a view
    with pytest.raises(ValueError, match="refused above 4,096 tokens"):
        column_from_full(big, 0)
    # a model with 4,624 tokens: full maps refused, a dense model's sparse capture too
    torch.manual_seed(0)
    config = ModelConfig(height=68, width=68, n_layer=1, n_head=1, n_embd=8)
    with pytest.raises(ValueError, match="refused above 4,096 tokens"):
        who_looks_here(SparseTransformer(config), torch.zeros(1, 4624, dtype=torch.long), 0)
    with pytest.raises(ValueError, match="refused above 4,096 tokens"):
        who_looks_here(
            SparseTransformer(config),
            torch.zeros(1, 4624, dtype=torch.long),
            0,
            support="multihead(dense(), local(l=4))",
        )


def test_above_4096_tokens_a_sparse_model_is_read_from_its_sparse_capture():
    torch.manual_seed(0)
    config = ModelConfig(height=68, width=68, n_layer=1, n_head=1, n_embd=8, layout="strided(l=68)")
    x = torch.randint(0, 256, (1, 4624), generator=torch.Generator().manual_seed(0))
    key = 4000
    col = who_looks_here(SparseTransformer(config).eval(), x, key)[0]  # [1, 1, 4624]
    assert col.shape == (1, 1, 4624)
    reach = torch.zeros(4624, dtype=torch.bool)
    reach[key : key + 68] = True  # the local part: the next 67 queries and the key itself
    reach[key::68] = True  # the column part: the same column in every later row
    assert torch.equal(col[0, 0] > 0, reach)
