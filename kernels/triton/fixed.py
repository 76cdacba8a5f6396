"""Fused Triton forward and backward for fixed(l, c, num_verts): own block + summary keys.

One program owns BLOCK_M consecutive queries of one (batch, head) and runs one online softmax
over both parts:

* the block part: keys from the start of the first query's l-block up to the last query,
  masked to j // l == i // l and j <= i (tensor-core tiles of BLOCK_N);
* the summary part: for every earlier block b, its c summary keys at offsets
  [l - (v+1)c, l - vc - 1] with v = head mod num_verts, one padded tile of C_PAD keys per block,
  masked to blocks strictly before the query's own (its own summary keys are in the block part).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from kernels.triton.band_column import _dkdv_tile, _online_update, block_sizes, dot_precision


@triton.jit
def _fixed_fwd_kernel(
    Q,
    K,
    V,
    O,
    LSE,
    stride_b,
    stride_h,
    stride_n,
    stride_lb,
    stride_lh,
    H,
    N,
    L,
    C,
    NUM_VERTS,
    sm_scale,
    HEAD_DIM: tl.constexpr,
    DOT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    C_PAD: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    base = b * stride_b + h * stride_h
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < N
    q = tl.load(
        Q + base + offs_m[:, None] * stride_n + offs_d[None, :], mask=row_ok[:, None], other=0.0
    )
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    q_block = offs_m // L

    # own block: [start of the first query's block, last query]
    lo = (start_m // L) * L
    hi = tl.minimum(start_m + BLOCK_M, N)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        col_ok = offs_n < N
        k = tl.load(
            K + base + offs_n[:, None] * stride_n + offs_d[None, :], mask=col_ok[:, None], other=0.0
        )
        v = tl.load(
            V + base + offs_n[:, None] * stride_n + offs_d[None, :], mask=col_ok[:, None], other=0.0
        )
        s = tl.dot(q, tl.trans(k), input_precision=DOT) * sm_scale
        allowed = (offs_n[None, :] <= offs_m[:, None]) & (offs_n[None, :] // L == q_block[:, None])
        s = tl.where(allowed & col_ok[None, :], s, float("-inf"))
        m_i, l_i, acc = _online_update(m_i, l_i, acc, s, v, DOT)

    # summary keys of every earlier block
    first = L - ((h % NUM_VERTS) + 1) * C  # offset of this head's first summary key
    offs_c = tl.arange(0, C_PAD)
    last_block = (tl.minimum(start_m + BLOCK_M, N) - 1) // L
    for blk in range(0, last_block):
        offs_n = blk * L + first + offs_c
        col_ok = offs_c < C
        k = tl.load(
            K + base + offs_n[:, None] * stride_n + offs_d[None, :], mask=col_ok[:, None], other=0.0
        )
        v = tl.load(
            V + base + offs_n[:, None] * stride_n + offs_d[None, :], mask=col_ok[:, None], other=0.0
        )
        s = tl.dot(q, tl.trans(k), input_precision=DOT) * sm_scale
        allowed = col_ok[None, :] & (q_block[:, None] > blk)
        s = tl.where(allowed, s, float("-inf"))
        m_i, l_i, acc = _online_update(m_i, l_i, acc, s, v, DOT)

    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    tl.store(
        O + base + offs_m[:, None] * stride_n + offs_d[None, :],
        (acc / l_safe[:, None]).to(O.dtype.element_ty),
        mask=row_ok[:, None],
    )
    tl.store(LSE + b * stride_lb + h * stride_lh + offs_m, m_i + tl.log(l_safe), mask=row_ok)


@triton.jit
def _grad_tile(q, do, lse, delta, k, v, allowed, sm_scale, DOT: tl.constexpr):
    """(p, ds) of one tile: probabilities and score gradients, zero where not allowed."""
    s = tl.dot(q, tl.trans(k), input_precision=DOT) * sm_scale
    p = tl.where(allowed, tl.exp(s - lse[:, None]), 0.0)
    dp = tl.dot(do, tl.trans(v), input_precision=DOT).to(tl.float32)
    return p, p * (dp - delta[:, None])


@triton.jit
def _fixed_bwd_dq_kernel(
    Q,
    K,
    V,
    DO,
    LSE,
    DELTA,
    DQ,
    stride_b,
    stride_h,
    stride_n,
    stride_lb,
    stride_lh,
    H,
    N,
    L,
    C,
    NUM_VERTS,
    sm_scale,
    HEAD_DIM: tl.constexpr,
    DOT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    C_PAD: tl.constexpr,
):
    """dQ of one query block over its own block and the earlier blocks' summary keys."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    base = b * stride_b + h * stride_h
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < N
    rows = base + offs_m[:, None] * stride_n + offs_d[None, :]
    q = tl.load(Q + rows, mask=row_ok[:, None], other=0.0)
    do = tl.load(DO + rows, mask=row_ok[:, None], other=0.0)
    lse = tl.load(LSE + b * stride_lb + h * stride_lh + offs_m, mask=row_ok, other=0.0)
    delta = tl.load(DELTA + b * stride_lb + h * stride_lh + offs_m, mask=row_ok, other=0.0)
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    q_block = offs_m // L

    lo = (start_m // L) * L
    hi = tl.minimum(start_m + BLOCK_M, N)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        col_ok = offs_n < N
        keys = base + offs_n[:, None] * stride_n + offs_d[None, :]
        k = tl.load(K + keys, mask=col_ok[:, None], other=0.0)
        v = tl.load(V + keys, mask=col_ok[:, None], other=0.0)
        allowed = (offs_n[None, :] <= offs_m[:, None]) & (offs_n[None, :] // L == q_block[:, None])
        allowed = allowed & col_ok[None, :] & row_ok[:, None]
        _, ds = _grad_tile(q, do, lse, delta, k, v, allowed, sm_scale, DOT)
        dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT).to(tl.float32) * sm_scale

    first = L - ((h % NUM_VERTS) + 1) * C
    offs_c = tl.arange(0, C_PAD)
    last_block = (tl.minimum(start_m + BLOCK_M, N) - 1) // L
    for blk in range(0, last_block):
        offs_n = blk * L + first + offs_c
        col_ok = offs_c < C
        keys = base + offs_n[:, None] * stride_n + offs_d[None, :]
        k = tl.load(K + keys, mask=col_ok[:, None], other=0.0)
        v = tl.load(V + keys, mask=col_ok[:, None], other=0.0)
        allowed = col_ok[None, :] & (q_block[:, None] > blk) & row_ok[:, None]
        _, ds = _grad_tile(q, do, lse, delta, k, v, allowed, sm_scale, DOT)
        dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT).to(tl.float32) * sm_scale

    tl.store(DQ + rows, dq.to(DQ.dtype.element_ty), mask=row_ok[:, None])


@triton.jit
def _fixed_bwd_dkdv_kernel(
    Q,
    K,
    V,
    DO,
    LSE,
    DELTA,
    DK,
    DV,
    stride_b,
    stride_h,
    stride_n,
    stride_lb,
    stride_lh,
    H,
    N,
    L,
    C,
    NUM_VERTS,
    sm_scale,
    HEAD_DIM: tl.constexpr,
    DOT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    C_PAD: tl.constexpr,
):
    """dK and dV of one key block [n0, n0 + BLOCK_N), the mirror of the forward: the queries of
    each key's own l-block at or after it, and, for the keys in this head's summary set, every
    query of a later l-block (a key block without summary keys stops at its own l-blocks).
    Each program owns its rows: no atomics."""
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    base = b * stride_b + h * stride_h
    stats = b * stride_lb + h * stride_lh
    start_n = pid_n * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    col_ok = offs_n < N
    keys = base + offs_n[:, None] * stride_n + offs_d[None, :]
    k = tl.load(K + keys, mask=col_ok[:, None], other=0.0)
    v = tl.load(V + keys, mask=col_ok[:, None], other=0.0)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    k_block = offs_n // L
    first = L - ((h % NUM_VERTS) + 1) * C  # offset of this head's first summary key
    summary = (offs_n % L >= first) & (offs_n % L < first + C) & col_ok

    # the queries of each key's own l-block at or after it, and, when the block holds summary
    # keys, every query of a later l-block: one walk from the first key to the end of the last
    # key's l-block, or to N
    own_end = tl.minimum(((start_n + BLOCK_N - 1) // L + 1) * L, N)
    end = tl.where(tl.max(summary.to(tl.int32), 0) > 0, N, own_end)
    for start_m in range(start_n, end, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        row_ok = offs_m < N
        q_block = offs_m[None, :] // L
        own = (offs_m[None, :] >= offs_n[:, None]) & (q_block == k_block[:, None])
        later = summary[:, None] & (q_block > k_block[:, None])
        allowed = (own | later) & col_ok[:, None] & row_ok[None, :]
        dk, dv = _dkdv_tile(
            Q, DO, LSE, DELTA, base, stats, stride_n, offs_m, offs_d, row_ok, k, v, dk, dv,
            allowed, sm_scale, DOT,
        )  # fmt: skip

    tl.store(DK + keys, dk.to(DK.dtype.element_ty), mask=col_ok[:, None])
    tl.store(DV + keys, dv.to(DV.dtype.element_ty), mask=col_ok[:, None])


def _launch(kernel, q, args, l, c, num_verts, scale, kind, by_keys=False):
    B, H, N, D = q.shape
    block_m, block_n = block_sizes(q, kind)
    grid = (triton.cdiv(N, block_n if by_keys else block_m), B * H)
    kernel[grid](
        *args,
        H,
        N,
        l,
        c,
        num_verts,
        scale,
        HEAD_DIM=D,
        DOT=dot_precision(q),
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        C_PAD=max(16, triton.next_power_of_2(c)),
    )


def fixed_forward(
    q,
    k,
    v,
    l: int,
    c: int,
    num_verts: int = 1,
    scale: float | None = None,
):
    """(out [B, H, N, D], lse [B, H, N] float32) of fixed(l, c, num_verts)."""
    B, H, N, D = q.shape
    q, k, v = (t.contiguous() for t in (q, k, v))
    out = torch.empty_like(q)
    lse = torch.empty(B, H, N, device=q.device, dtype=torch.float32)
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    args = (q, k, v, out, lse, q.stride(0), q.stride(1), q.stride(2), lse.stride(0), lse.stride(1))
    _launch(_fixed_fwd_kernel, q, args, l, c, num_verts, scale, "forward")
    return out, lse


def fixed_backward(
    q,
    k,
    v,
    out,
    lse,
    dout,
    l: int,
    c: int,
    num_verts: int,
    scale: float,
):
    q, k, v, out, dout = (t.contiguous() for t in (q, k, v, out, dout))
    delta = (dout.float() * out.float()).sum(-1)  # [B, H, N]
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    strides = (q.stride(0), q.stride(1), q.stride(2), lse.stride(0), lse.stride(1))
    stats = (q, k, v, dout, lse, delta)
    _launch(_fixed_bwd_dq_kernel, q, (*stats, dq, *strides), l, c, num_verts, scale, "backward")
    _launch(
        _fixed_bwd_dkdv_kernel,
        q,
        (*stats, dk, dv, *strides),
        l,
        c,
        num_verts,
        scale,
        "backward",
        by_keys=True,
    )
    return dq, dk, dv


class FixedAttention(torch.autograd.Function):
    """Exact fixed(l, c, num_verts) attention, differentiable; returns (out, lse)."""

    @staticmethod
    def forward(ctx, q, k, v, l: int, c: int, num_verts: int, scale: float):
        out, lse = fixed_forward(q, k, v, l, c, num_verts, scale)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.params = (l, c, num_verts, scale)
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = fixed_backward(q, k, v, out, lse, dout, *ctx.params)
        return dq, dk, dv, None, None, None, None
