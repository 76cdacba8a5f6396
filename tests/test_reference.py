"""The reference attention is exact, and every dispatch backend agrees with it."""

from __future__ import annotations

import math

import pytest
import torch

import kernels
from kernels import layouts as L

LAYOUTS = [
    L.dense(),
    L.local(5),
    L.column(5),
    L.strided(6),
    L.fixed(6, 2),
    L.fixed(8, 2, num_verts=2),
    L.multihead(L.local(4), L.column(4)),
]


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


@pytest.mark.parametrize("layout", LAYOUTS, ids=repr)
def test_sdpa_backend_equals_reference_with_gradients(layout):
    q, k, v = (t.requires_grad_() for t in rand_qkv())
    ref = kernels.attention(q, k, v, layout, backend="reference")
    grads_ref = torch.autograd.grad(ref.square().sum(), (q, k, v))
    out = kernels.attention(q, k, v, layout, backend="sdpa")
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for g, gr in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, gr, rtol=1e-4, atol=1e-5)


def test_backend_can_be_forced(monkeypatch):
    cpu = torch.device("cpu")
    assert kernels.resolve_backend("auto", cpu) == "sdpa"
    with kernels.use_backend("reference"):
        assert kernels.resolve_backend("auto", cpu) == "reference"
        assert kernels.resolve_backend("sdpa", cpu) == "sdpa"  # an explicit choice wins
    monkeypatch.setenv("SPARSE_ATTENTION_BACKEND", "reference")
    assert kernels.resolve_backend("auto", cpu) == "reference"
    monkeypatch.setenv("SPARSE_ATTENTION_BACKEND", "bogus")
    with pytest.raises(ValueError, match="unknown attention backend 'bogus'"):
        kernels.resolve_backend("auto", cpu)


def test_attention_checks_shapes_and_heads():
    q, k, v = rand_qkv(H=3)
    with pytest.raises(ValueError, match=r"\[B, H, N, D\]"):
        kernels.attention(q, k[:, :, :5], v, L.dense())
    with pytest.raises(ValueError, match="multiple of 2"):
        kernels.attention(q, k, v, L.fixed(8, 2, num_verts=2))
