"""The reference attention (kernels/reference.py) is exact: it equals attention computed one
query row at a time over the explicitly listed keys."""

from __future__ import annotations

import math

import pytest
import torch
from model_util import LAYOUTS

import kernels
from kernels import layouts as L


def loop_attention(q, k, v, layout, scale):
    """Attention one query row at a time over the explicitly listed allowed keys (float64)."""
    B, H, N, D = q.shape
    mask = layout.dense_mask(N, H)
    out = torch.zeros(B, H, N, D, dtype=torch.float64)
    lse = torch.zeros(B, H, N, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            for i in range(N):
                keys = mask[h, i].nonzero().flatten()
                s = (k[b, h, keys].double() @ q[b, h, i].double()) * scale
                lse[b, h, i] = torch.logsumexp(s, 0)
                out[b, h, i] = torch.softmax(s, 0) @ v[b, h, keys].double()
    return out, lse


def rand_qkv(B=2, H=4, N=37, D=8, dtype=torch.float32, seed=None):
    g = torch.Generator().manual_seed(seed if seed is not None else torch.seed() % 2**31)
    return [torch.randn(B, H, N, D, generator=g).to(dtype) for _ in range(3)]


@pytest.mark.parametrize("layout", LAYOUTS, ids=repr)
def test_reference_matches_row_by_row_attention(layout):
    q, k, v = rand_qkv()
    scale = 1 / math.sqrt(q.shape[-1])
    res = kernels.reference_attention(q, k, v, layout, return_lse=True, return_probs=True)
    out, lse = loop_attention(q, k, v, layout, scale)
    torch.testing.assert_close(res.out.double(), out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(res.lse.double(), lse, rtol=1e-5, atol=1e-5)
    mask = layout.dense_mask(q.shape[2], q.shape[1])
    assert torch.all(res.probs[:, ~mask] == 0), "no probability outside the layout"
    torch.testing.assert_close(res.probs.sum(-1), torch.ones_like(res.lse))


def test_reference_custom_scale_and_low_precision():
    q, k, v = rand_qkv(dtype=torch.bfloat16)
    layout = L.strided(5)
    res = kernels.reference_attention(q, k, v, layout, scale=0.3)
    out, _ = loop_attention(q, k, v, layout, 0.3)
    assert res.out.dtype == torch.bfloat16
    torch.testing.assert_close(res.out.double(), out, rtol=0.05, atol=0.05)
    up = kernels.reference_attention(q, k, v, layout, scale=0.3, upcast=True)
    # the upcast reference is closer to the truth than the bf16 one
    assert (up.out.double() - out).abs().max() <= (res.out.double() - out).abs().max()
