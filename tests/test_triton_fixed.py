"""The fused fixed(l, c, num_verts) kernels (kernels/triton_fixed.py) against the reference.

Runs under TRITON_INTERPRET=1 on the CPU (scripts/test.sh sets it) and natively on CUDA.
"""

import os

import pytest
import torch

from kernels import layouts as L
from kernels import reference_attention

if not (os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.is_available()):
    pytest.skip("needs CUDA or TRITON_INTERPRET=1", allow_module_level=True)

from kernels.triton.fixed import FixedAttention  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CASES = [(50, 7, 2, 1), (45, 8, 2, 2), (37, 16, 4, 4), (29, 5, 5, 1), (64, 16, 3, 2)]


@pytest.mark.parametrize(("n", "l", "c", "verts"), CASES)
def test_forward_and_gradients_match_reference(n, l, c, verts):
    g = torch.Generator().manual_seed(n * 100 + l)
    H = 2 * verts
    q, k, v = (torch.randn(2, H, n, 16, generator=g).to(DEVICE).requires_grad_() for _ in range(3))
    layout = L.fixed(l, c, verts)
    out, lse = FixedAttention.apply(q, k, v, l, c, verts, 0.3)
    ref = reference_attention(
        q.double(), k.double(), v.double(), layout, scale=0.3, return_lse=True
    )
    torch.testing.assert_close(out.double(), ref.out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse.double(), ref.lse, rtol=1e-5, atol=1e-5)
    dout = torch.randn(2, H, n, 16, generator=g).to(DEVICE)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    ref_grads = torch.autograd.grad(ref.out, (q, k, v), dout.double())
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got.double(), want.double(), rtol=1e-4, atol=1e-5)
