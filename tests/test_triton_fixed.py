"""The fused fixed(l, c, num_verts) kernels (kernels/triton/fixed.py) against the reference.

Runs under TRITON_INTERPRET=1 on the CPU (scripts/test.sh sets it) and natively on CUDA.
"""

import pytest
import torch
from triton_tiles import pin_tiles
from triton_util import (
    DEVICE,
    HAS_TRITON,
    LOW,
    assert_larger_head_dim_matches_reference,
    assert_real_size_matches_reference,
    assert_triton_equals_float64_reference,
    assert_within_low_precision_error,
)

from kernels import layouts as L
from kernels import reference_attention

if not HAS_TRITON:
    pytest.skip("needs CUDA or TRITON_INTERPRET=1", allow_module_level=True)

from kernels.triton import fixed as family  # noqa: E402
from kernels.triton.common import kernel_spec  # noqa: E402
from kernels.triton.fixed import fixed_attention  # noqa: E402

CASES = [(50, 7, 2, 1), (45, 8, 2, 2), (37, 16, 4, 4), (29, 5, 5, 1), (64, 16, 3, 2)]


@pytest.mark.parametrize(("n", "l", "c", "verts"), CASES)
def test_forward_and_gradients_match_reference(n, l, c, verts):
    g = torch.Generator().manual_seed(n * 100 + l)
    H = 2 * verts
    q, k, v = (torch.randn(2, H, n, 16, generator=g).to(DEVICE).requires_grad_() for _ in range(3))
    layout = L.fixed(l, c, verts)
    out, lse = fixed_attention(q, k, v, kernel_spec(layout, n), scale=0.3)
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


def test_the_fixed_kernels_refuse_a_band_spec():
    q = torch.randn(1, 1, 8, 16, device=DEVICE)
    with pytest.raises(ValueError, match="fixed spec"):
        fixed_attention(q, q, q, kernel_spec(L.strided(4), 8), scale=1.0)


@pytest.mark.parametrize("dtype", LOW, ids=str)
def test_low_precision_within_the_references_own_error(dtype):
    """flash-attention's rule: |out - ref| <= 2 |out_pt - ref| + atol, where ref is float64 and
    out_pt is the plain PyTorch reference run in the same low precision."""
    g = torch.Generator().manual_seed(7)
    q, k, v = (
        torch.randn(1, 2, 45, 32, generator=g).to(DEVICE, dtype).requires_grad_() for _ in range(3)
    )
    dout = torch.randn(1, 2, 45, 32, generator=g).to(DEVICE, dtype)
    assert_within_low_precision_error(q, k, v, dout, L.fixed(7, 2), torch.float64)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="real sizes need a CUDA GPU")
@pytest.mark.parametrize("layout", [L.fixed(64, 8), L.fixed(96, 4, 2)], ids=repr)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("d", [32, 64, 128])
def test_real_sizes_on_gpu(layout, dtype, d):
    """Outputs and gradients of q, k, v against the float64 reference at N = 4,089 (not a
    multiple of any tile or of l), B = 1, H = 4: float32 to 1e-5, fp16 and bf16 within twice the
    error of the reference run in their own precision."""
    assert_real_size_matches_reference(layout, dtype, d)


@pytest.mark.parametrize("d", [64, 128])
def test_larger_head_dims(d):
    assert_larger_head_dim_matches_reference(L.fixed(5, 2), d)


@pytest.mark.parametrize("blocks", [(32, 16), (16, 32)], ids=lambda b: f"{b[0]}x{b[1]}")
@pytest.mark.parametrize("layout", [L.fixed(5, 2), L.fixed(6, 1, 2)], ids=repr)
def test_unequal_tiles(blocks, layout, monkeypatch):
    """BLOCK_M != BLOCK_N, as on the GPU (64 x 32): the dK/dV kernel walks query tiles of
    BLOCK_M from key blocks of BLOCK_N, and tile edges fall inside l-blocks."""
    g = torch.Generator().manual_seed(sum(blocks))
    q, k, v = (torch.randn(1, 2, 83, 16, generator=g).to(DEVICE).requires_grad_() for _ in range(3))
    dout = torch.randn(1, 2, 83, 16, generator=g).to(DEVICE)
    pin_tiles(monkeypatch, family.KERNELS, *blocks)
    assert_triton_equals_float64_reference(q, k, v, layout, dout)
    for kernel in family.KERNELS:  # and ran on those tiles
        assert kernel.best_config.kwargs == {"BLOCK_M": blocks[0], "BLOCK_N": blocks[1]}
