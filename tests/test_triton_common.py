"""What the kernels share (kernels/triton/common.py): the kernel spec of each layout, and the
@triton.jit twin of the fixed layout's summary rule, equal to kernels.layouts' plain one.

Runs under TRITON_INTERPRET=1 on the CPU (scripts/test.sh sets it) and natively on CUDA.
"""

import itertools

import pytest
import torch
from triton_util import DEVICE, HAS_TRITON

from kernels import layouts as L
from kernels.layouts import fixed_summary_offsets

if not HAS_TRITON:
    pytest.skip("needs CUDA or TRITON_INTERPRET=1", allow_module_level=True)

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from kernels.triton.common import KernelSpec, _fixed_summary_offsets, kernel_spec  # noqa: E402


@triton.jit
def _summary_offsets_kernel(HEAD, LL, CC, NV, LO, HI, COUNT, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < COUNT
    h = tl.load(HEAD + offs, mask=ok, other=0)
    l = tl.load(LL + offs, mask=ok, other=1)
    c = tl.load(CC + offs, mask=ok, other=1)
    nv = tl.load(NV + offs, mask=ok, other=1)
    lo, hi = _fixed_summary_offsets(h, l, c, nv)
    tl.store(LO + offs, lo, mask=ok)
    tl.store(HI + offs, hi, mask=ok)


def test_the_jit_summary_rule_equals_the_plain_one():
    # every fixed(l, c, num_verts) with l <= 40 (c * num_verts <= l), heads 0 .. 2 * num_verts
    cases = [
        (h, l, c, nv)
        for l, c, nv in itertools.product(range(1, 41), range(1, 41), range(1, 9))
        if c * nv <= l
        for h in range(2 * nv)
    ]
    h, l, c, nv = torch.tensor(cases, dtype=torch.int32, device=DEVICE).T.contiguous()
    lo, hi = torch.empty_like(h), torch.empty_like(h)
    block = 1024
    _summary_offsets_kernel[(triton.cdiv(len(cases), block),)](
        h, l, c, nv, lo, hi, len(cases), BLOCK=block
    )
    want_lo, want_hi = fixed_summary_offsets(h, l, c, nv)  # the plain rule, on tensors
    assert len(cases) > 2000
    assert torch.equal(lo, want_lo) and torch.equal(hi, want_hi)
    for row in (0, len(cases) // 2, len(cases) - 1):  # and on ints
        assert fixed_summary_offsets(*cases[row]) == (int(lo[row]), int(hi[row]))


def test_kernel_spec_of_every_layout_with_a_kernel():
    assert kernel_spec(L.dense(), 50) == KernelSpec("band", band=50)
    assert kernel_spec(L.local(7), 50) == KernelSpec("band", band=7)
    assert kernel_spec(L.local(70), 50) == KernelSpec("band", band=50)  # cut to the sequence
    assert kernel_spec(L.column(7), 50) == KernelSpec("band", band=1, step=7)
    assert kernel_spec(L.strided(7), 50) == KernelSpec("band", band=7, step=7)
    assert kernel_spec(L.fixed(8, 2, 3), 50) == KernelSpec("fixed", l=8, c=2, num_verts=3)
    assert kernel_spec(L.strided(7), 50).columns and not kernel_spec(L.local(7), 50).columns
    with pytest.raises(ValueError, match="no Triton kernel for multihead"):
        kernel_spec(L.multihead(L.local(2), L.column(2)), 50)
