"""Head summaries and attention rollout (analysis/rollout.py): a 3 x 3 case by hand, then the
properties every rollout must have on a random model."""

from __future__ import annotations

import pytest
import torch
from model_util import sharp_tiny
from torch import Tensor

from analysis.rollout import (
    RESIDUAL,
    heads_max,
    heads_mean,
    model_rollout_row,
    rollout,
    rollout_row,
    with_residual,
)
from models import SparseTransformer


# the rollout of every query from full maps: the reference the row form is checked against
def model_rollout(
    model: SparseTransformer, tokens: Tensor, *, top: int | None = None, residual: float = RESIDUAL
) -> Tensor:
    """The rollout [B, N, N] of ``model`` on tokens [B, N] from the input to layer ``top``
    (default: the last), from full maps (N <= 4,096)."""
    caps = model.capture(tokens, layers=None if top is None else list(range(top + 1)), form="full")
    return rollout([heads_mean(caps[i].probs) for i in sorted(caps)], residual)


def T(rows, dtype=torch.float64) -> torch.Tensor:
    return torch.tensor(rows, dtype=dtype)


def tiny(layout="dense()") -> SparseTransformer:
    return sharp_tiny(3, 4, 3, layout)


def tokens(batch=2, n=12, seed=0) -> torch.Tensor:
    return torch.randint(0, 256, (batch, n), generator=torch.Generator().manual_seed(seed))


# two layers of two heads over three tokens; the head means are A1 and A2 below
HEADS_1 = T([[[1, 0, 0], [1, 0, 0], [0.4, 0, 0.6]], [[1, 0, 0], [0, 1, 0], [0, 0.6, 0.4]]])
HEADS_2 = T([[[1, 0, 0], [1, 0, 0], [0, 1, 0]], [[1, 0, 0], [1, 0, 0], [0, 0, 1]]])
A1 = T([[1, 0, 0], [0.5, 0.5, 0], [0.2, 0.3, 0.5]])
A2 = T([[1, 0, 0], [1, 0, 0], [0, 0.5, 0.5]])


def test_head_mean_and_max_by_hand():
    torch.testing.assert_close(heads_mean(HEADS_1[None]), A1[None])
    torch.testing.assert_close(heads_mean(HEADS_2[None]), A2[None])
    want_max = T([[1, 0, 0], [1, 1, 0], [0.4, 0.6, 0.6]])
    torch.testing.assert_close(heads_max(HEADS_1[None]), want_max[None])


def test_rollout_of_a_three_token_example_by_hand():
    a1 = heads_mean(HEADS_1[None])  # [1, 3, 3]
    a2 = heads_mean(HEADS_2[None])
    # A1' = 0.5 A1 + 0.5 I = [[1,0,0],[.25,.75,0],[.1,.15,.75]];
    # A2' = [[1,0,0],[.5,.5,0],[0,.25,.75]]; rollout = A2' @ A1'
    want = T([[1, 0, 0], [0.625, 0.375, 0], [0.1375, 0.3, 0.5625]])
    torch.testing.assert_close(rollout([a1, a2])[0], want, rtol=0, atol=1e-12)
    for q in range(3):
        torch.testing.assert_close(rollout_row([a1, a2], q)[0], want[q], rtol=0, atol=1e-12)
    # one layer: just A1'
    torch.testing.assert_close(rollout([a1]), with_residual(a1))


def test_residual_mixing_renormalises_rows_and_checks_its_weight():
    a = T([[[2.0, 0.0], [1.0, 1.0]]])  # rows sum to 2: e.g. a head-max map
    # 0.5 A + 0.5 I = [[1.5, 0], [0.5, 1]], then each row divided by its sum
    torch.testing.assert_close(with_residual(a), T([[[1.0, 0.0], [1 / 3, 2 / 3]]]))
    torch.testing.assert_close(with_residual(a, residual=1.0), torch.eye(2, dtype=a.dtype)[None])
    with pytest.raises(ValueError, match="residual"):
        with_residual(a, residual=1.5)


def test_identity_attention_rolls_out_to_identity():
    eye = torch.eye(5)[None].expand(2, 5, 5)
    torch.testing.assert_close(rollout([eye, eye, eye]), eye)
    torch.testing.assert_close(rollout_row([eye, eye], 3), eye[:, 3])


def test_model_rollout_is_causal_row_stochastic_and_matches_its_rows():
    model = tiny()
    x = tokens()
    r = model_rollout(model, x)  # [2, 12, 12]
    assert r.shape == (2, 12, 12)
    torch.testing.assert_close(r.sum(-1), torch.ones(2, 12), rtol=0, atol=1e-5)
    assert torch.equal(r.triu(1), torch.zeros_like(r))  # nothing from the future
    assert (r >= 0).all()
    # the attention is not trivially uniform or diagonal, so the checks below mean something
    assert r.diagonal(dim1=1, dim2=2).min() < 0.99
    for q in (0, 5, 11):
        torch.testing.assert_close(model_rollout_row(model, x, q), r[:, q], rtol=0, atol=1e-6)
    # up to a lower layer: the product of fewer maps
    first = heads_mean(model.capture(x, layers=[0], form="full")[0].probs)  # [2, 12, 12]
    torch.testing.assert_close(model_rollout(model, x, top=0), with_residual(first))


def test_sparse_layout_rollout_stays_inside_the_reach_of_its_layers():
    # one local(2) layer: position 5 reads only 4 and 5; three layers reach back to 2
    model = tiny("local(l=2)")
    r = model_rollout(model, tokens(1))
    assert torch.equal(r[0, 5, :2], torch.zeros(2)) and r[0, 5, 2] > 0


def test_bad_arguments_are_refused():
    eye = torch.eye(3)[None]
    with pytest.raises(ValueError, match="at least one layer"):
        rollout([])
    with pytest.raises(ValueError, match=r"\[B, N, N\]"):
        rollout([torch.ones(1, 2, 3)])
    with pytest.raises(ValueError, match="query"):
        rollout_row([eye], 3)
    with pytest.raises(ValueError, match="top layer"):
        model_rollout_row(tiny(), tokens(1), 0, top=3)
