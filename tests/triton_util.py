"""What the Triton kernel tests share: where they run, and their two comparisons with the
reference (float64 exactness, and flash-attention's rule for fp16/bf16).

The kernels run natively on CUDA, and on the CPU under TRITON_INTERPRET=1 (scripts/test.sh sets
it); the kernel test files skip without either.
"""

from __future__ import annotations

import os

import pytest
import torch

from kernels import attention, reference_attention
from kernels.layouts import Layout

HAS_TRITON = os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.is_available()
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="needs CUDA or TRITON_INTERPRET=1")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# Triton's interpreter multiplies bfloat16 tiles wrongly in tl.dot (a 16x16 bf16 product is off
# by 1e10 there, while the same kernel is exact in fp16/fp32), so bf16 is tested on CUDA only.
LOW = [torch.float16] + ([torch.bfloat16] if torch.cuda.is_available() else [])


def assert_within_low_precision_error(
    q, k, v, dout, layout: Layout, ref_dtype, backend: str = "triton"
) -> None:
    """flash-attention's rule for fp16/bf16: the kernel's (``backend``'s) output and gradients
    are no further from a ``ref_dtype`` reference than twice the plain PyTorch reference in the
    inputs' own dtype is (plus 1e-3)."""
    out = attention(q, k, v, layout, backend=backend)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    low = reference_attention(q, k, v, layout).out
    low_grads = torch.autograd.grad(low, (q, k, v), dout)
    up = [t.to(ref_dtype) for t in (q, k, v)]
    ref = reference_attention(*up, layout).out
    ref_grads = torch.autograd.grad(ref, up, dout.to(ref_dtype))
    for got, pt, want in zip((out, *grads), (low, *low_grads), (ref, *ref_grads), strict=True):
        err = (got.to(ref_dtype) - want).abs().max()
        budget = 2 * (pt.to(ref_dtype) - want).abs().max() + 1e-3
        assert err <= budget, (float(err), float(budget))


def assert_triton_equals_float64_reference(q, k, v, layout: Layout, dout=None) -> None:
    """attention(backend="triton") on float32 q, k, v (requiring grad) against the float64
    reference: the output, and the gradients of ``dout`` (default: of out.sum())."""
    out = attention(q, k, v, layout, backend="triton")
    ref = reference_attention(q.double(), k.double(), v.double(), layout).out
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    if dout is None:
        grads = torch.autograd.grad(out.sum(), (q, k, v))
        ref_grads = torch.autograd.grad(ref.sum(), (q, k, v))
    else:
        grads = torch.autograd.grad(out, (q, k, v), dout)
        ref_grads = torch.autograd.grad(ref, (q, k, v), dout.double())
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got.double(), want.double(), rtol=1e-4, atol=1e-5)


def assert_real_size_matches_reference(layout: Layout, dtype, d: int) -> None:
    """Outputs and gradients of q, k, v against the float64 reference at N = 4,089 (not a
    multiple of any tile or of l), B = 1, H = 4 on CUDA: float32 to 1e-5, fp16 and bf16 within
    twice the error of the reference run in their own precision."""
    n = 4096 - 7
    g = torch.Generator(device="cuda").manual_seed(d)
    q, k, v = (
        torch.randn(1, 4, n, d, device="cuda", generator=g).to(dtype).requires_grad_()
        for _ in range(3)
    )
    dout = torch.randn(1, 4, n, d, device="cuda", generator=g).to(dtype)
    if dtype == torch.float32:
        assert_triton_equals_float64_reference(q, k, v, layout, dout)
    else:
        assert_within_low_precision_error(q, k, v, dout, layout, torch.float64)


def assert_larger_head_dim_matches_reference(layout: Layout, d: int) -> None:
    """float32 q, k, v [1, 1, 21, d] against the float64 reference."""
    g = torch.Generator().manual_seed(d)
    q, k, v = (torch.randn(1, 1, 21, d, generator=g).to(DEVICE).requires_grad_() for _ in range(3))
    assert_triton_equals_float64_reference(q, k, v, layout)
