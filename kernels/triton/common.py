"""What the fused kernels share: the layout as they take it (``KernelSpec``), tile sizes, dot
precision, the @triton.jit pieces every kernel file calls (program ids, row loads and stores, the
online-softmax step, the dQ and dK/dV tiles, the fixed layout's summary rule), and the Python
side of a kernel family: its launches and one autograd Function (``FusedAttention``).

band_column.py, fixed.py and capture.py import from here and never from each other;
kernels.dispatch.attention is the entry point that checks the inputs and calls them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import triton
import triton.language as tl

from kernels.layouts import Column, Dense, Fixed, Layout, Local, Strided

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
HEAD_DIMS = (16, 32, 64, 128)  # powers of two (tl.arange) >= 16 (the smallest tl.dot operand)

# (BLOCK_M, BLOCK_N) per pass on a GPU, picked by `tools.bench_kernels --blocks 64x64 128x64 64x32
# 32x32` on an H100 (docs/BENCHMARKS.md): 64x32 was the fastest or within 10 % of it for both
# kernels, both passes, N = 16384 and 65536. Under the interpreter every pass uses 16 x 16, the
# smallest tile the dot product takes: the CPU runs it fastest.
GPU_BLOCKS: dict[str, tuple[int, int]] = {"forward": (64, 32), "backward": (64, 32)}
INTERPRETER_BLOCKS = (16, 16)


@dataclass(frozen=True)
class KernelSpec:
    """A layout as the fused kernels take it; ``kernel_spec`` builds it.

    kind "band" (dense, local, column, strided): the keys 0 <= i - j < band, plus, when ``step``
    is set, every i - j = k * step for k >= 1 (step >= band, so the two parts never overlap).
    kind "fixed": fixed(l, c, num_verts), own l-block plus the summary keys of earlier blocks.
    """

    kind: Literal["band", "fixed"]
    band: int = 1
    step: int | None = None
    l: int = 1
    c: int = 1
    num_verts: int = 1

    @property
    def columns(self) -> bool:
        """Whether the band kernels also walk the column part."""
        return self.step is not None


def kernel_spec(layout: Layout, n: int) -> KernelSpec:
    """The spec of ``layout`` over n tokens; ValueError for a layout no kernel takes.

    A band wider than the sequence is cut to n: dense is band = n, and so is local(l >= n).
    """
    if isinstance(layout, Fixed):
        return KernelSpec("fixed", l=layout.l, c=layout.c, num_verts=layout.num_verts)
    if isinstance(layout, Dense):
        return KernelSpec("band", band=n)
    if isinstance(layout, Local):
        return KernelSpec("band", band=min(layout.l, n))
    if isinstance(layout, Column):
        return KernelSpec("band", band=1, step=layout.l)
    if isinstance(layout, Strided):
        return KernelSpec("band", band=min(layout.l, n), step=layout.l)
    raise ValueError(
        f"no Triton kernel for {layout!r} (the kernels take dense, local, column, strided and "
        "fixed); use backend='sdpa' or 'reference'"
    )


def block_sizes(q: torch.Tensor, phase: Literal["forward", "backward"]) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_N) for a pass over q's device."""
    return GPU_BLOCKS[phase] if q.is_cuda else INTERPRETER_BLOCKS


def dot_precision(q: torch.Tensor) -> str:
    """float32 inputs get exact float32 products ("ieee"), as the reference computes them;
    Triton's default for a float32 dot is tf32 (about 1e-3 relative error). bf16 and fp16 dots
    are exact products accumulated in float32 whatever this says."""
    return "ieee" if q.dtype == torch.float32 else "tf32"


@triton.jit
def _fixed_summary_offsets(h, L, C, NUM_VERTS):
    """Inclusive [lo, hi] of head h's summary offsets (j mod L) in fixed(L, C, NUM_VERTS): the
    twin of kernels.layouts.fixed_summary_offsets, which states the rule (tested equal)."""
    v = h % NUM_VERTS
    return L - (v + 1) * C, L - v * C - 1


# the parts of the layouts on broadcast query indices i and key indices j, as in
# kernels/layouts.py (its parts() say the same with plain operators)


@triton.jit
def _in_band(i, j, BAND):
    """0 <= i - j < BAND: local(BAND), dense when BAND >= N, the diagonal when BAND = 1."""
    d = i - j
    return (d >= 0) & (d < BAND)


@triton.jit
def _in_own_block(i, j, L):
    """j <= i in the same l-block: the block part of fixed(L, ...)."""
    return (j <= i) & (i // L == j // L)


@triton.jit
def _program(H, stride_b, stride_h, stride_lb, stride_lh):
    """(tile index, batch, head, offset of this (batch, head) in q/k/v/o, its offset in
    lse/delta) for the grid (tiles, B * H) every kernel here launches."""
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    return tl.program_id(0), b, h, b * stride_b + h * stride_h, b * stride_lb + h * stride_lh


@triton.jit
def _load_rows(X, base, offs, offs_d, stride_n, ok):
    """Rows ``offs`` of one head's [N, D] matrix, zero where not ``ok``: [len(offs), D]."""
    return tl.load(
        X + base + offs[:, None] * stride_n + offs_d[None, :], mask=ok[:, None], other=0.0
    )


@triton.jit
def _store_rows(X, base, offs, offs_d, stride_n, ok, x):
    """Store x [len(offs), D] (cast to X's dtype) into the rows ``offs`` where ``ok``."""
    tl.store(
        X + base + offs[:, None] * stride_n + offs_d[None, :],
        x.to(X.dtype.element_ty),
        mask=ok[:, None],
    )


@triton.jit
def _online_update(m_i, l_i, acc, s, v, DOT: tl.constexpr):
    """One step of the online softmax with a tile of scores s [M, T] and values v [T, D]."""
    m_new = tl.maximum(m_i, tl.max(s, 1))
    # a row with no allowed key yet has m = -inf: subtract 0 instead, so exp gives 0, not nan
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.exp(s - m_safe[:, None])
    alpha = tl.exp(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT)
    return m_new, l_i, acc


@triton.jit
def _attend_tile(
    q, K, V, base, offs_n, offs_d, stride_n, col_ok, allowed, m_i, l_i, acc, sm_scale,
    DOT: tl.constexpr,
):  # fmt: skip
    """Load the keys and values ``offs_n`` (where col_ok) and fold the ``allowed`` scores of the
    query tile q into the running softmax (m_i, l_i, acc)."""
    k = _load_rows(K, base, offs_n, offs_d, stride_n, col_ok)
    v = _load_rows(V, base, offs_n, offs_d, stride_n, col_ok)
    s = tl.dot(q, tl.trans(k), input_precision=DOT) * sm_scale
    s = tl.where(allowed, s, float("-inf"))
    return _online_update(m_i, l_i, acc, s, v, DOT)


@triton.jit
def _finish_forward(O, LSE, base, stats, offs_m, offs_d, stride_n, row_ok, m_i, l_i, acc):
    """Store out = acc / l and lse = m + log(l) of the query rows ``offs_m``."""
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)  # padding rows (row_ok False) have l = 0
    _store_rows(O, base, offs_m, offs_d, stride_n, row_ok, acc / l_safe[:, None])
    tl.store(LSE + stats + offs_m, m_i + tl.log(l_safe), mask=row_ok)


@triton.jit
def _load_grad_rows(Q, DO, LSE, DELTA, base, stats, offs_m, offs_d, stride_n, row_ok):
    """(q, do, lse, delta) of the query rows ``offs_m``: what every backward tile reads."""
    q = _load_rows(Q, base, offs_m, offs_d, stride_n, row_ok)
    do = _load_rows(DO, base, offs_m, offs_d, stride_n, row_ok)
    lse = tl.load(LSE + stats + offs_m, mask=row_ok, other=0.0)
    delta = tl.load(DELTA + stats + offs_m, mask=row_ok, other=0.0)
    return q, do, lse, delta


@triton.jit
def _dq_tile(
    q, do, lse, delta, K, V, base, offs_n, offs_d, stride_n, col_ok, allowed, dq, sm_scale,
    DOT: tl.constexpr,
):  # fmt: skip
    """Add the keys ``offs_n``'s share to dq [BLOCK_M, D]; allowed is [BLOCK_M, BLOCK_N]."""
    k = _load_rows(K, base, offs_n, offs_d, stride_n, col_ok)
    v = _load_rows(V, base, offs_n, offs_d, stride_n, col_ok)
    s = tl.dot(q, tl.trans(k), input_precision=DOT) * sm_scale
    p = tl.where(allowed, tl.exp(s - lse[:, None]), 0.0)  # the forward's probabilities
    dp = tl.dot(do, tl.trans(v), input_precision=DOT).to(tl.float32)
    ds = p * (dp - delta[:, None])
    return dq + tl.dot(ds.to(k.dtype), k, input_precision=DOT).to(tl.float32) * sm_scale


@triton.jit
def _dkdv_tile(
    Q, DO, LSE, DELTA, base, stats, offs_m, offs_d, stride_n, row_ok, k, v, dk, dv, allowed,
    sm_scale, DOT: tl.constexpr,
):  # fmt: skip
    """Add the query rows ``offs_m``'s share to (dk, dv) [BLOCK_N, D] of the key tile (k, v);
    allowed is [BLOCK_N, BLOCK_M] (transposed: one key per row)."""
    q, do, lse, delta = _load_grad_rows(
        Q, DO, LSE, DELTA, base, stats, offs_m, offs_d, stride_n, row_ok
    )
    s_t = tl.dot(k, tl.trans(q), input_precision=DOT) * sm_scale  # [BLOCK_N, BLOCK_M]
    p_t = tl.where(allowed, tl.exp(s_t - lse[None, :]), 0.0)
    dv += tl.dot(p_t.to(do.dtype), do, input_precision=DOT).to(tl.float32)
    dp_t = tl.dot(v, tl.trans(do), input_precision=DOT).to(tl.float32)
    ds_t = p_t * (dp_t - delta[None, :])
    dk += tl.dot(ds_t.to(q.dtype), q, input_precision=DOT).to(tl.float32) * sm_scale
    return dk, dv


# --- the Python side of one kernel family: launch its three kernels, differentiably ------------


@dataclass(frozen=True)
class KernelFamily:
    """The forward, dQ and dK/dV kernels of one layout family (band_column.py, fixed.py) and
    the layout arguments they take from a spec (a ValueError for a spec of another family).

    All three take (tensors..., stride_b, stride_h, stride_n, stride_lb, stride_lh, H, N) then
    by name sm_scale, HEAD_DIM, DOT, BLOCK_M, BLOCK_N and their layout arguments.
    """

    forward: triton.JITFunction
    backward_dq: triton.JITFunction
    backward_dkdv: triton.JITFunction
    layout_args: Callable[[KernelSpec], dict[str, int | bool]]


def _launch(
    family: KernelFamily,
    kernel: triton.JITFunction,
    *tensors: torch.Tensor,
    spec: KernelSpec,
    scale: float,
    phase: Literal["forward", "backward"],
    by_keys: bool = False,
) -> None:
    """Run one of the family's kernels on ``tensors`` (q, k, v, o or do, lse, ...: every kernel
    starts so, and its [B, H, N, D] tensors share q's strides, its [B, H, N] ones lse's)."""
    q, lse = tensors[0], tensors[4]
    B, H, N, D = q.shape
    block_m, block_n = block_sizes(q, phase)
    # a program per query block, or per key block for dK/dV, and per (batch, head)
    grid = (triton.cdiv(N, block_n if by_keys else block_m), B * H)
    kernel[grid](
        *tensors, q.stride(0), q.stride(1), q.stride(2), lse.stride(0), lse.stride(1), H, N,
        sm_scale=scale, HEAD_DIM=D, DOT=dot_precision(q), BLOCK_M=block_m, BLOCK_N=block_n,
        **family.layout_args(spec),
    )  # fmt: skip


def fused_forward(
    family: KernelFamily,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    spec: KernelSpec,
    *,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(out [B, H, N, D], lse [B, H, N] float32) of the family's forward kernel. The inputs are
    checked by kernels.dispatch, the one entry point."""
    B, H, N, D = q.shape
    q, k, v = (t.contiguous() for t in (q, k, v))
    out = torch.empty_like(q)
    lse = torch.empty(B, H, N, device=q.device, dtype=torch.float32)
    _launch(family, family.forward, q, k, v, out, lse, spec=spec, scale=scale, phase="forward")
    return out, lse


def fused_backward(
    family: KernelFamily,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    dout: torch.Tensor,
    spec: KernelSpec,
    *,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) for fused_forward's output gradient ``dout``: one kernel for dQ by query
    blocks, one for dK and dV by key blocks, so that every program owns the rows it writes."""
    q, k, v, out, dout = (t.contiguous() for t in (q, k, v, out, dout))
    delta = (dout.float() * out.float()).sum(-1)  # [B, H, N]: rowsum(dO * O)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    inputs = (q, k, v, dout, lse, delta)
    run = dict(spec=spec, scale=scale, phase="backward")
    _launch(family, family.backward_dq, *inputs, dq, **run)
    _launch(family, family.backward_dkdv, *inputs, dk, dv, **run, by_keys=True)
    return dq, dk, dv


class FusedAttention(torch.autograd.Function):
    """Exact attention on one family's kernels, differentiable; returns (out, lse), lse not
    differentiable. ``FusedAttention.apply(q, k, v, family, spec, scale)``."""

    @staticmethod
    def forward(ctx, q, k, v, family: KernelFamily, spec: KernelSpec, scale: float):
        out, lse = fused_forward(family, q, k, v, spec, scale=scale)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.family, ctx.spec, ctx.scale = family, spec, scale
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse = ctx.saved_tensors
        grads = fused_backward(ctx.family, q, k, v, out, lse, dout, ctx.spec, scale=ctx.scale)
        return *grads, None, None, None
