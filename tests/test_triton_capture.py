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


def test_a_layout_without_a_kernel_cannot_be_captured_on_triton():
    q = torch.randn(1, 2, 10, 16, device=DEVICE)
    with pytest.raises(ValueError, match="no Triton kernel"):
        C.capture_rows(q, q, L.multihead(L.local(2), L.column(2)), [3], backend="triton")
