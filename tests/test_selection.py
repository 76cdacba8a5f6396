"""Content-based selections (kernels/selection.py) are exact: the kept keys equal a per-row brute
force over the scores, the attention is the softmax over them alone, the count of kept pairs is
exact, and they run through the one attention entry point and the capture forms."""

from __future__ import annotations

import math
import re

import pytest
import torch
from selection_util import selection_mask

from kernels import attention
from kernels.capture import capture
from kernels.layouts import dense, parse_layout
from kernels.selection import (
    MoBA,
    TopK,
    moba,
    parse_attention,
    selection_attention,
    topk,
)


def qk(n: int, seed: int, b: int = 2, h: int = 3, d: int = 8, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(b, h, n, d, generator=g, dtype=dtype) for _ in range(3))


def brute_mask(q, k, sel) -> torch.Tensor:
    """The kept keys of every (batch, head, query), one row at a time from the definitions."""
    B, H, N, D = q.shape
    out = torch.zeros(B, H, N, N, dtype=torch.bool)
    for b in range(B):
        for h in range(H):
            for i in range(N):
                s = [float(q[b, h, i] @ k[b, h, j]) for j in range(i + 1)]
                if isinstance(sel, TopK):
                    order = sorted(range(i + 1), key=lambda j: -s[j])
                    for j in order[: sel.k]:
                        out[b, h, i, j] = True
                else:
                    size, u = sel.block, i // sel.block
                    gates = {
                        v: float(q[b, h, i] @ k[b, h, v * size : (v + 1) * size].mean(0))
                        for v in range(u)
                    }
                    best = sorted(gates, key=lambda v: -gates[v])[: sel.topk - 1]
                    for j in range(i + 1):
                        out[b, h, i, j] = j // size == u or j // size in best
    return out


SELECTIONS = [topk(1), topk(3), topk(10), topk(100), moba(4, 1), moba(4, 2), moba(3, 3), moba(5, 9)]


@pytest.mark.parametrize("sel", SELECTIONS, ids=repr)
@pytest.mark.parametrize("n", [1, 9, 23])
def test_kept_keys_equal_a_brute_force(sel, n):
    q, k, _ = qk(n, seed=n)
    got = selection_mask(q, k, sel, torch.arange(n), scale=0.3)
    assert torch.equal(got, brute_mask(q, k, sel))
    assert int(got.sum()) == q.shape[0] * sel.nnz(n, q.shape[1])


@pytest.mark.parametrize("sel", SELECTIONS, ids=repr)
def test_attention_is_the_softmax_over_the_kept_keys(sel):
    n = 21
    q, k, v = qk(n, seed=7)
    scale = 1 / math.sqrt(q.shape[-1])
    kept = brute_mask(q, k, sel)
    scores = (q @ k.transpose(-2, -1) * scale).masked_fill(~kept, -math.inf)
    want = torch.softmax(scores, -1) @ v
    out, lse = attention(q, k, v, sel, return_lse=True)
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lse, torch.logsumexp(scores, -1), rtol=1e-12, atol=1e-12)
    # a few rows at a time (decoding) give the same rows
    rows = selection_attention(q[:, :, 5:8], k, v, sel, positions=torch.tensor([5, 6, 7]))
    torch.testing.assert_close(rows, want[:, :, 5:8], rtol=1e-12, atol=1e-12)


def test_limits_are_the_older_layouts():
    n = 30
    q, k, v = qk(n, seed=3)
    full = attention(q, k, v, dense(), backend="reference")
    for sel in (topk(n), moba(5, 6), moba(n, 1)):
        torch.testing.assert_close(attention(q, k, v, sel), full, rtol=1e-12, atol=1e-12)
    only_self = selection_mask(q, k, moba(1, 1), torch.arange(n), scale=1.0)
    assert torch.equal(only_self[0, 0], torch.eye(n, dtype=torch.bool))


def test_float32_and_bfloat16_inputs():
    q, k, v = qk(40, seed=1, dtype=torch.float32)
    want = attention(q.double(), k.double(), v.double(), topk(8)).float()
    torch.testing.assert_close(attention(q, k, v, topk(8)), want, rtol=1e-5, atol=1e-5)
    out = attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), moba(8, 2))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


@pytest.mark.parametrize("sel", [topk(4), moba(4, 2)], ids=repr)
def test_capture_forms_under_a_selection(sel):
    n = 26
    q, k, _ = qk(n, seed=9)
    full = capture(q, k, sel, "full").probs  # [B, H, N, N]
    kept = selection_mask(q, k, sel, torch.arange(n), scale=1 / math.sqrt(q.shape[-1]))
    torch.testing.assert_close(full.sum(-1), torch.ones(2, 3, n, dtype=torch.float64))
    assert (full[~kept] == 0).all() and (full[kept] > 0).all()
    rows = capture(q, k, sel, "rows", queries=[3, 25]).probs
    torch.testing.assert_close(rows, full[:, :, [3, 25]])
    pooled = capture(q, k, sel, "pooled", block=5)
    assert torch.allclose(pooled.max[..., 0, 0], full[..., :5, :5].amax((-1, -2)))
    sparse = capture(q, k, sel, "sparse", support=parse_layout("local(l=3)"))
    torch.testing.assert_close(sparse.to_dense(), full * parse_layout("local(l=3)").dense_mask(n))
    with pytest.raises(ValueError, match="no pairs known ahead"):
        capture(q, k, sel, "sparse")


def test_specs_round_trip_and_bad_ones_say_what_is_allowed():
    for sel in SELECTIONS:
        assert parse_attention(repr(sel)) == sel
    assert parse_attention("strided(l=28)") == parse_layout("strided(l=28)")
    assert parse_attention("moba(28, 3)") == MoBA(28, 3)
    for spec, message in [
        ("topk(k=0)", "topk: k must be >= 1"),
        ("topk(k=-2)", "topk: k must be >= 1"),
        ("moba(block=0, topk=2)", "moba: block must be >= 1"),
        ("moba(block=4)", "bad arguments"),
        ("topk(k=2.5)", "must be integers"),
        ("topk(k=99999999)", "is over"),
        ("nonsense(3)", "unknown layout"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            parse_attention(spec)
