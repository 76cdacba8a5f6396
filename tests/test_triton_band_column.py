"""The fused band + column kernels (kernels/triton/band_column.py: dense, local, column,
strided) against the reference.

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

from kernels.triton import band_column as family  # noqa: E402
from kernels.triton.band_column import band_column_attention  # noqa: E402
from kernels.triton.common import kernel_spec  # noqa: E402

KINDS = {"strided": L.strided, "local": L.local, "column": L.column, "dense": lambda l: L.dense()}


@pytest.mark.parametrize(("n", "l", "d"), [(50, 7, 16), (37, 5, 32), (64, 16, 16), (33, 40, 16)])
@pytest.mark.parametrize("kind", list(KINDS))
def test_forward_matches_reference(n, l, d, kind):
    g = torch.Generator().manual_seed(n * 1000 + l)
    q, k, v = (torch.randn(2, 2, n, d, generator=g).to(DEVICE) for _ in range(3))
    layout = KINDS[kind](l)
    out, lse = band_column_attention(q, k, v, kernel_spec(layout, n), scale=d**-0.5)
    ref = reference_attention(q.double(), k.double(), v.double(), layout, return_lse=True)
    torch.testing.assert_close(out.double(), ref.out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse.double(), ref.lse.double(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("n", "l"), [(45, 7), (32, 16), (29, 3)])
@pytest.mark.parametrize("kind", list(KINDS))
def test_gradients_match_reference(n, l, kind):
    g = torch.Generator().manual_seed(n + l)
    q, k, v = (torch.randn(2, 2, n, 16, generator=g).to(DEVICE).requires_grad_() for _ in range(3))
    layout = KINDS[kind](l)
    dout = torch.randn(2, 2, n, 16, generator=g).to(DEVICE)
    out, _ = band_column_attention(q, k, v, kernel_spec(layout, n), scale=0.25)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    ref = reference_attention(q.double(), k.double(), v.double(), layout, scale=0.25).out
    ref_grads = torch.autograd.grad(ref, (q, k, v), dout.double())
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got.double(), want.double(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("n", "l"), [(70, 3), (83, 20), (40, 1), (61, 16)])
@pytest.mark.parametrize("kind", ["strided", "column"])
def test_column_pass_over_the_transposed_sequence(n, l, kind):
    """The column part as causal attention over l residues of unequal lengths (N not a multiple
    of l or of a tile), joined to the band through the lse; B = 2, H = 3; out, lse and the
    gradients against float64."""
    g = torch.Generator().manual_seed(n * l)
    q, k, v = (torch.randn(2, 3, n, 16, generator=g).to(DEVICE).requires_grad_() for _ in range(3))
    layout = KINDS[kind](l)
    out, lse = band_column_attention(q, k, v, kernel_spec(layout, n), scale=0.3)
    ref = reference_attention(
        q.double(), k.double(), v.double(), layout, scale=0.3, return_lse=True
    )
    torch.testing.assert_close(lse.double(), ref.lse, rtol=1e-5, atol=1e-5)
    dout = torch.randn(2, 3, n, 16, generator=g).to(DEVICE)
    torch.testing.assert_close(out.double(), ref.out, rtol=1e-5, atol=1e-5)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    ref_grads = torch.autograd.grad(ref.out, (q, k, v), dout.double())
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got.double(), want.double(), rtol=1e-4, atol=1e-5)


def test_the_band_kernels_refuse_a_fixed_spec():
    q = torch.randn(1, 1, 8, 16, device=DEVICE)
    with pytest.raises(ValueError, match="band spec"):
        band_column_attention(q, q, q, kernel_spec(L.fixed(4, 1), 8), scale=1.0)


@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize(
    "layout", [L.strided(7), L.column(5), L.strided(20), L.local(7), L.dense()], ids=repr
)
def test_low_precision_within_the_references_own_error(dtype, layout):
    """flash-attention's rule: |out - ref| <= 2 |out_pt - ref| + atol, where ref is float64 and
    out_pt is the plain PyTorch reference run in the same low precision."""
    g = torch.Generator().manual_seed(7)
    q, k, v = (
        torch.randn(1, 2, 45, 32, generator=g).to(DEVICE, dtype).requires_grad_() for _ in range(3)
    )
    dout = torch.randn(1, 2, 45, 32, generator=g).to(DEVICE, dtype)
    assert_within_low_precision_error(q, k, v, dout, layout, torch.float64)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="real sizes need a CUDA GPU")
@pytest.mark.parametrize(
    "layout", [L.strided(64), L.strided(96), L.column(64), L.local(64), L.dense()], ids=repr
)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("d", [32, 64, 128])
def test_real_sizes_on_gpu(layout, dtype, d):
    """Outputs and gradients of q, k, v against the float64 reference at N = 4,089 (not a
    multiple of any tile or of l), B = 1, H = 4: float32 to 1e-5, fp16 and bf16 within twice the
    error of the reference run in their own precision."""
    assert_real_size_matches_reference(layout, dtype, d)


@pytest.mark.parametrize("d", [64, 128])
def test_larger_head_dims(d):
    assert_larger_head_dim_matches_reference(L.strided(5), d)


@pytest.mark.parametrize("blocks", [(32, 16), (16, 32)], ids=lambda b: f"{b[0]}x{b[1]}")
@pytest.mark.parametrize("layout", [L.strided(7), L.dense()], ids=repr)
def test_unequal_tiles(blocks, layout, monkeypatch):
    """BLOCK_M != BLOCK_N, as on the GPU (64 x 32): the dK/dV kernel walks query tiles of
    BLOCK_M from key blocks of BLOCK_N, and tile edges fall inside rows."""
    g = torch.Generator().manual_seed(sum(blocks))
    q, k, v = (torch.randn(1, 2, 83, 16, generator=g).to(DEVICE).requires_grad_() for _ in range(3))
    dout = torch.randn(1, 2, 83, 16, generator=g).to(DEVICE)
    pin_tiles(monkeypatch, family.KERNELS, *blocks)
    assert_triton_equals_float64_reference(q, k, v, layout, dout)
    for kernel in family.KERNELS:  # and ran on those tiles
        assert kernel.best_config.kwargs == {"BLOCK_M": blocks[0], "BLOCK_N": blocks[1]}
