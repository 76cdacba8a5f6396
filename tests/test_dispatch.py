"""kernels.attention (kernels/dispatch.py): every backend agrees with the reference, "auto" and
the forcing mechanisms pick what they say, and bad input is explained whatever the backend."""

from __future__ import annotations

import pytest
import torch
from model_util import LAYOUTS
from triton_util import DEVICE, needs_triton

import kernels
from kernels import layouts as L


def rand_qkv(B=2, H=4, N=37, D=8, dtype=torch.float32, seed=None):
    g = torch.Generator().manual_seed(seed if seed is not None else torch.seed() % 2**31)
    return [torch.randn(B, H, N, D, generator=g).to(dtype) for _ in range(3)]


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


@needs_triton
@pytest.mark.parametrize(
    "layout",
    [L.dense(), L.local(6), L.column(6), L.strided(6), L.fixed(6, 2), L.fixed(8, 2, 2)],
    ids=repr,
)
def test_triton_backend_equals_reference(layout):
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 41, 32, generator=g).to(DEVICE) for _ in range(3))
    out, lse = kernels.attention(q, k, v, layout, return_lse=True, backend="triton")
    ref, ref_lse = kernels.attention(q, k, v, layout, return_lse=True, backend="reference")
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse, ref_lse, rtol=1e-5, atol=1e-5)


def test_backend_can_be_forced(monkeypatch):
    q, _, _ = rand_qkv()
    dense = L.dense()
    assert kernels.resolve_backend(q, dense, "auto") == "sdpa"
    with kernels.use_backend("reference"):
        assert kernels.resolve_backend(q, dense, "auto") == "reference"
        assert kernels.resolve_backend(q, dense, "sdpa") == "sdpa"  # an explicit choice wins
    monkeypatch.setenv("SPARSE_ATTENTION_BACKEND", "reference")
    assert kernels.resolve_backend(q, dense, "auto") == "reference"
    monkeypatch.setenv("SPARSE_ATTENTION_BACKEND", "bogus")
    with pytest.raises(ValueError, match="unknown attention backend 'bogus'"):
        kernels.resolve_backend(q, dense, "auto")


def test_auto_asked_for_the_lse_on_the_cpu_takes_the_reference():
    q, k, v = rand_qkv()
    layout = L.strided(6)
    assert kernels.resolve_backend(q, layout, "auto") == "sdpa"
    assert kernels.resolve_backend(q, layout, "auto", return_lse=True) == "reference"
    out, lse = kernels.attention(q, k, v, layout, return_lse=True)
    ref = kernels.reference_attention(q, k, v, layout, return_lse=True)
    torch.testing.assert_close(out, ref.out)
    torch.testing.assert_close(lse, ref.lse)


def test_sdpa_cannot_return_the_lse():
    q, k, v = rand_qkv()
    with pytest.raises(ValueError, match="'sdpa' cannot return the log-sum-exp"):
        kernels.attention(q, k, v, L.strided(6), backend="sdpa", return_lse=True)
    with kernels.use_backend("sdpa"), pytest.raises(ValueError, match="log-sum-exp"):
        kernels.attention(q, k, v, L.strided(6), return_lse=True)


def test_attention_checks_shapes_and_heads():
    q, k, v = rand_qkv(H=3)
    with pytest.raises(ValueError, match=r"\[B, H, N, D\]"):
        kernels.attention(q, k[:, :, :5], v, L.dense())
    with pytest.raises(ValueError, match="multiple of 2"):
        kernels.attention(q, k, v, L.fixed(8, 2, num_verts=2))


@pytest.mark.parametrize("backend", ["reference", "sdpa", "auto"])
def test_every_backend_checks_its_input_the_same_way(backend):
    q, k, v = rand_qkv(H=2)
    with pytest.raises(TypeError, match="layout must be a kernels.layouts.Layout"):
        kernels.attention(q, k, v, "strided(l=6)", backend=backend)
    with pytest.raises(TypeError, match="k must be a torch.Tensor"):
        kernels.attention(q, k.numpy(), v, L.dense(), backend=backend)
    with pytest.raises(ValueError, match=r"v must be \[B, H, N, D\]"):
        kernels.attention(q, k, v[0], L.dense(), backend=backend)
    with pytest.raises(ValueError, match="share a dtype"):
        kernels.attention(q, k.double(), v, L.dense(), backend=backend)
    with pytest.raises(ValueError, match="N = 0"):
        kernels.attention(q[:, :, :0], k[:, :, :0], v[:, :, :0], L.dense(), backend=backend)


def test_attention_explains_bad_input(monkeypatch):
    q = torch.randn(1, 2, 10, 32, device=DEVICE)
    with pytest.raises(ValueError, match="same shape"):
        kernels.attention(q, q[:, :, :5], q, L.dense())
    with pytest.raises(ValueError, match="backend must be"):
        kernels.attention(q, q, q, L.dense(), backend="cuda")
    with pytest.raises(ValueError, match="multiple of 2"):
        kernels.attention(q[:, :1], q[:, :1], q[:, :1], L.fixed(4, 1, 2))
    if not torch.cuda.is_available():  # the kernels' own checks, also on a CPU-only machine
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(ValueError, match="head dims"):
        kernels.attention(q[..., :24], q[..., :24], q[..., :24], L.dense(), backend="triton")
    with pytest.raises(ValueError, match="no Triton kernel"):
        kernels.attention(q, q, q, L.multihead(L.local(2), L.column(2)), backend="triton")
    with pytest.raises(ValueError, match="float32, float16 or bfloat16"):
        kernels.attention(q.double(), q.double(), q.double(), L.dense(), backend="triton")
    many = q[:1, :1].expand(256, 257, 10, 32)  # B * H past a CUDA grid axis, no memory
    with pytest.raises(ValueError, match=r"B \* H <= 65535, got 65792"):
        kernels.attention(many, many, many, L.dense(), backend="triton")
    with pytest.raises(ValueError, match="l <= 65535 for the column part"):
        kernels.attention(q, q, q, L.strided(70_000), backend="triton")
    if not torch.cuda.is_available():
        monkeypatch.delenv("TRITON_INTERPRET")
        with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
            kernels.attention(q, q, q, L.dense(), backend="triton")


@needs_triton
@pytest.mark.parametrize("layout", ["strided(l=7)", "fixed(l=7, c=2)", "dense()"])
def test_model_through_the_triton_backend(layout):
    from models import ModelConfig, SparseTransformer

    torch.manual_seed(0)
    config = ModelConfig(height=5, width=7, n_layer=2, n_head=2, n_embd=32, layout=layout)
    model = SparseTransformer(config).to(DEVICE)
    x = torch.randint(0, 256, (2, 35), device=DEVICE)
    with kernels.use_backend("triton"):
        loss = model.loss(x)
        grads = torch.autograd.grad(loss, list(model.parameters()))
    with kernels.use_backend("reference"):
        ref_loss = model.loss(x)
        ref_grads = torch.autograd.grad(ref_loss, list(model.parameters()))
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", ["reference", "sdpa"])
def test_pool_returns_the_pooled_maps_last(backend):
    """attention_pooled appends the capture's pooled map: (out, pooled), or (out, lse, pooled)."""
    from kernels import capture as C

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 20, 8, generator=g) for _ in range(3))
    out, pooled = C.attention_pooled(q, k, v, L.strided(4), 6, backend=backend)
    assert torch.equal(out, kernels.attention(q, k, v, L.strided(4), backend=backend))
    want = C.capture_pooled(q, k, L.strided(4), 6, backend="reference")
    assert torch.equal(pooled.mean, want.mean) and torch.equal(pooled.max, want.max)
    if backend == "reference":
        out, lse, pooled = C.attention_pooled(
            q, k, v, L.strided(4), 6, backend=backend, return_lse=True
        )
        assert lse.shape == (1, 2, 20) and pooled.mean.shape == (1, 2, 4, 4)
    with pytest.raises(ValueError, match="pool must be a tile size"):
        C.attention_pooled(q, k, v, L.strided(4), 0, backend=backend)
