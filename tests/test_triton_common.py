"""What the kernels share (kernels/triton/common.py): the kernel spec of each layout, the
@triton.jit twin of the fixed layout's summary rule, equal to kernels.layouts' plain one, and
the 64-bit offsets of a (batch, head) that keep tensors past 2**31 elements addressable.

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

from kernels.triton.common import (  # noqa: E402
    KernelSpec,
    _fixed_summary_offsets,
    _head_offsets,
    _summary_tokens,
    kernel_spec,
    tuned_configs,
)


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


@triton.jit
def _offsets_kernel(H, stride_b, stride_h, stride_lb, stride_lh, OUT):
    pid = tl.program_id(0)
    b, h, base, stats = _head_offsets(pid, H, stride_b, stride_h, stride_lb, stride_lh)
    tl.store(OUT + 4 * pid, b)
    tl.store(OUT + 4 * pid + 1, h)
    tl.store(OUT + 4 * pid + 2, base)
    tl.store(OUT + 4 * pid + 3, stats)


def test_head_offsets_do_not_wrap_past_two_to_the_31():
    """Strides that fit 32 bits whose products with the batch index do not: B = 17, H = 16,
    N = 65,536, D = 128 has stride_b = 2**27 and its last batch starts at 16 * 2**27 = 2**31;
    in 32 bits that address wraps negative."""
    B, H, N, D = 17, 16, 65_536, 128
    stride_b, stride_h, stride_lb = H * N * D, N * D, H * N
    out = torch.zeros(B * H, 4, dtype=torch.int64, device=DEVICE)
    _offsets_kernel[(B * H,)](H, stride_b, stride_h, stride_lb, N, out)
    b, h = torch.arange(B * H).div(H, rounding_mode="floor"), torch.arange(B * H) % H
    want = torch.stack([b, h, b * stride_b + h * stride_h, b * stride_lb + h * N], 1)
    assert int(want[:, 2].max()) > 2**31  # the case is real
    assert torch.equal(out.cpu(), want)


@pytest.mark.gpu
@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="a tensor past 2**31 elements needs a GPU"
)
def test_a_tensor_past_two_to_the_31_elements_on_gpu():
    """The last head of a [17, 16, 65536, 128] bf16 tensor (2.3e9 elements, 4.6 GB each of q, k,
    v, out) gets what the same kernel gives that head alone."""
    from kernels import attention

    B, H, N, D = 17, 16, 65_536, 128
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (
        torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3)
    )
    assert q.numel() > 2**31
    for layout in (L.strided(256), L.fixed(256, 32)):
        out = attention(q, k, v, layout, backend="triton")
        last = [t[-1:, -1:].contiguous() for t in (q, k, v)]
        alone = attention(*last, layout, backend="triton")
        torch.testing.assert_close(out[-1:, -1:], alone, rtol=0, atol=0)
        del out


def test_tuned_configs_name_the_tiles_each_kernel_ran_with():
    from kernels import attention
    from kernels.triton import band_column

    q = torch.randn(1, 2, 20, 16, device=DEVICE)
    attention(q, q, q, L.strided(4), backend="triton")
    picked = tuned_configs(*band_column.KERNELS)
    assert any(name.startswith("_band_fwd_kernel") for name in picked)
    assert all("x" in config and " w" in config for config in picked.values())


def test_tuned_configs_list_every_key_autotune_tuned():
    """On a GPU autotune keeps one pick per key (N, HEAD_DIM, ... then the dtypes)."""
    from types import SimpleNamespace

    def fwd():
        pass

    picks = {
        (65536, 64, 0, 1, "torch.bfloat16"): triton.Config(
            {"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=8, num_stages=3
        ),
        (65536, 64, 1, 256, "torch.bfloat16"): triton.Config(
            {"BLOCK_M": 64, "BLOCK_N": 32}, num_warps=4, num_stages=3
        ),
    }
    kernel = SimpleNamespace(
        base_fn=fwd, keys=["N", "HEAD_DIM", "LO", "STRIDE"], cache=picks, best_config=None
    )
    assert tuned_configs(kernel) == {
        "fwd (N=65536, HEAD_DIM=64, LO=0, STRIDE=1)": "128x64 w8 s3",
        "fwd (N=65536, HEAD_DIM=64, LO=1, STRIDE=256)": "64x32 w4 s3",
    }


@triton.jit
def _summary_tokens_kernel(OUT, H, LL, CC, NV, COUNT, BLOCK: tl.constexpr):
    g = tl.arange(0, BLOCK)
    first, _ = _fixed_summary_offsets(H, LL, CC, NV)
    tl.store(OUT + g, _summary_tokens(g, first, LL, CC), mask=g < COUNT)


@pytest.mark.parametrize("l, c, nv", [(8, 2, 1), (8, 2, 3), (7, 3, 2), (5, 5, 1)])
def test_the_gathered_summary_tokens_are_the_layouts_summary_keys(l, c, nv):
    """_summary_tokens over g < blocks * c is every key of fixed(l, c, nv)'s summary part for
    head h, in order: the kernels' gathered sequence is the layout's rule."""
    n = 6 * l
    layout = L.fixed(l, c, nv)
    for h in range(nv):
        want = [j for j in range(n) if bool(layout.parts()["summary"](0, h, n - 1 + l, j))]
        got = torch.empty(len(want), dtype=torch.int32, device=DEVICE)
        _summary_tokens_kernel[(1,)](got, h, l, c, nv, len(want), BLOCK=64)
        assert got.tolist() == want
