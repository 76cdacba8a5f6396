"""The capture kernels (kernels/triton/capture.py) give the same forms as the reference walk of
kernels/capture.py.

Runs under TRITON_INTERPRET=1 on the CPU (scripts/test.sh sets it) and natively on CUDA.
"""

import pytest
import torch
from triton_util import DEVICE, HAS_TRITON

from kernels import capture as C
from kernels import layouts as L

if not HAS_TRITON:
    pytest.skip("needs CUDA or TRITON_INTERPRET=1", allow_module_level=True)


@pytest.mark.parametrize(
    "layout", [L.strided(7), L.local(5), L.fixed(7, 2), L.fixed(8, 2, 2), L.dense()], ids=repr
)
def test_capture_forms_from_the_kernels_equal_the_reference(layout):
    g = torch.Generator().manual_seed(3)
    q, k = (torch.randn(1, 2, 45, 32, generator=g).to(DEVICE) for _ in range(2))
    close = dict(rtol=1e-5, atol=1e-6)
    for backend_out, ref_out in [
        (
            C.capture_rows(q, k, layout, [0, 7, 44], backend="triton"),
            C.capture_rows(q, k, layout, [0, 7, 44], backend="reference"),
        ),
    ]:
        torch.testing.assert_close(backend_out.probs, ref_out.probs, **close)
    for block in (7, 16):
        got = C.capture_pooled(q, k, layout, block, backend="triton")
        want = C.capture_pooled(q, k, layout, block, backend="reference")
        torch.testing.assert_close(got.mean, want.mean, **close)
        torch.testing.assert_close(got.max, want.max, **close)
    for support in (None, L.strided(9)):
        got = C.capture_sparse(q, k, layout, support, backend="triton")
        want = C.capture_sparse(q, k, layout, support, backend="reference")
        torch.testing.assert_close(got.values, want.values, **close)
    full = C.capture_full(q, k, layout, backend="triton").probs
    torch.testing.assert_close(
        full, C.capture_full(q, k, layout, backend="reference").probs, **close
    )


SUPPORTS = [L.strided(7), L.column(5), L.local(5), L.dense(), L.fixed(7, 2), L.fixed(8, 2, 2)]


@pytest.mark.parametrize("support", [*SUPPORTS, L.fixed(9, 3, 3)], ids=repr)
@pytest.mark.parametrize("heads", [1, 2, 3, 4])
def test_the_support_pattern_built_on_the_device_is_the_hosts(support, heads):
    """indptr from the closed-form row counts and the indices the kernel writes equal the mask
    walk of kernels/capture.py, for the union over heads (fixed(l, c, k) over H heads)."""
    from kernels.triton.capture import support_spec, triton_support

    n = 45  # not a multiple of any l here
    if heads % support.period:
        pytest.skip("the layout needs a multiple of its period in heads")
    indptr, indices = triton_support(support_spec(support, n, heads), n, torch.device(DEVICE))
    want_indptr, want_indices = C.support_pattern(support, n, heads)
    assert torch.equal(indptr.cpu(), want_indptr) and torch.equal(indices.cpu(), want_indices)


@pytest.mark.parametrize("layout", [L.strided(7), L.fixed(8, 2, 2), L.column(6)], ids=repr)
@pytest.mark.parametrize(
    "support", [*SUPPORTS, L.fixed(8, 1, 2), L.multihead(L.local(2), L.column(3))], ids=repr
)
def test_sparse_values_on_any_support(layout, support):
    """The tile walk over a support's pairs gives the reference's values in the same CSR order,
    zeros where the layout allows no weight; a support no kernel walks (multihead) takes the
    host pattern and the reference walk."""
    g = torch.Generator().manual_seed(5)
    q, k = (torch.randn(2, 2, 45, 16, generator=g).to(DEVICE) for _ in range(2))
    got = C.capture_sparse(q, k, layout, support, backend="triton")
    want = C.capture_sparse(q, k, layout, support, backend="reference")
    assert torch.equal(got.indptr.cpu(), want.indptr) and torch.equal(
        got.indices.cpu(), want.indices
    )
    torch.testing.assert_close(got.values, want.values, rtol=1e-5, atol=1e-6)


def test_a_layout_without_a_kernel_cannot_be_captured_on_triton():
    q = torch.randn(1, 2, 10, 16, device=DEVICE)
    with pytest.raises(ValueError, match="no Triton kernel"):
        C.capture_rows(q, q, L.multihead(L.local(2), L.column(2)), [3], backend="triton")


@pytest.mark.parametrize(
    "layout", [L.strided(7), L.strided(32), L.column(8), L.fixed(8, 2, 2), L.dense()], ids=repr
)
@pytest.mark.parametrize("block", [1, 4, 5, 16, 64])
def test_the_forward_gives_the_pooled_maps(layout, block):
    """attention_pooled(..., P) on the kernels: the same output and lse as without the flag, and
    the reference's pooled mean and max: P = 1, P not dividing N, P > N, band tiles in one cell
    (P a multiple of the interpreter's 16-wide tiles), residues grouped per cell (P dividing l:
    strided(32) with 4 and 16, column(8) with 4)."""
    from kernels import attention

    g = torch.Generator().manual_seed(block)
    q, k, v = (torch.randn(2, 2, 45, 16, generator=g).to(DEVICE) for _ in range(3))
    out, lse, pooled = C.attention_pooled(q, k, v, layout, block, backend="triton", return_lse=True)
    want_out, want_lse = attention(q, k, v, layout, backend="triton", return_lse=True)
    assert torch.equal(out, want_out) and torch.equal(lse, want_lse)
    want = C.capture_pooled(q, k, layout, block, backend="reference")
    assert (pooled.block, pooled.n) == (block, 45)
    torch.testing.assert_close(pooled.mean, want.mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pooled.max, want.max, rtol=1e-5, atol=1e-6)
    out2, pooled2 = C.attention_pooled(q, k, v, layout, block, backend="triton")
    assert torch.equal(out2, out) and torch.equal(pooled2.max, pooled.max)
