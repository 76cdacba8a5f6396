"""Fused Triton forward and backward for the band + column family: dense, local(l), column(l),
strided(l) (``BandColumnAttention``; kernels.sparse.sparse_attention is the entry point).

One program owns BLOCK_M consecutive queries [m0, m0 + BLOCK_M) of one (batch, head) and runs a
single online softmax over both parts of the layout, so the merge is exact and costs no extra
pass:

* the band (0 <= i - j < L = band): the keys [m0 - L + 1, m0 + BLOCK_M) in tiles of BLOCK_N, with
  tensor-core dots; L = N gives dense causal attention, L = 1 leaves only the diagonal;
* the columns (i - j = k * STEP for k >= 1, strided and column only): for each k the keys of
  the whole query block are the rows [m0 - k*STEP, m0 - k*STEP + BLOCK_M), one key per query,
  so they are loaded as one tile and scored with a row-wise product: exactly the useful work,
  N / L such steps.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

# (BLOCK_M, BLOCK_N) per pass on a GPU, picked by `tools.bench_kernels --blocks 64x64 128x64 64x32
# 32x32` on an H100 (docs/BENCHMARKS.md): 64x32 was the fastest or within 10 % of it for both
# kernels, both passes, N = 16384 and 65536. Under the interpreter every pass uses 16 x 16, the
# smallest tile the dot product takes: the CPU runs it fastest.
GPU_BLOCKS: dict[str, tuple[int, int]] = {"forward": (64, 32), "backward": (64, 32)}
INTERPRETER_BLOCKS = (16, 16)


def block_sizes(q: torch.Tensor, kind: str) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_N) for a pass ("forward" or "backward") over q's device."""
    return GPU_BLOCKS[kind] if q.is_cuda else INTERPRETER_BLOCKS


def dot_precision(q: torch.Tensor) -> str:
    """float32 inputs get exact float32 products ("ieee"), as the reference computes them;
    Triton's default for a float32 dot is tf32 (about 1e-3 relative error). bf16 and fp16 dots
    are exact products accumulated in float32 whatever this says."""
    return "ieee" if q.dtype == torch.float32 else "tf32"


@triton.jit
def _online_update(m_i, l_i, acc, s, v, DOT: tl.constexpr):
    """One step of the online softmax with a tile of scores s [M, T] and values v [T, D]."""
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.exp(s - m_safe[:, None])
    alpha = tl.exp(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT)
    return m_new, l_i, acc


@triton.jit
def _dkdv_tile(
    Q,
    DO,
    LSE,
    DELTA,
    base,
    stats,
    stride_n,
    offs_m,
    offs_d,
    row_ok,
    k,
    v,
    dk,
    dv,
    allowed,
    sm_scale,
    DOT: tl.constexpr,
):
    """Add one query tile's share to (dk, dv) [BLOCK_N, D]; allowed is [BLOCK_N, BLOCK_M]."""
    rows = base + offs_m[:, None] * stride_n + offs_d[None, :]
    q = tl.load(Q + rows, mask=row_ok[:, None], other=0.0)
    do = tl.load(DO + rows, mask=row_ok[:, None], other=0.0)
    lse = tl.load(LSE + stats + offs_m, mask=row_ok, other=0.0)
    delta = tl.load(DELTA + stats + offs_m, mask=row_ok, other=0.0)
    s_t = tl.dot(k, tl.trans(q), input_precision=DOT) * sm_scale  # [BLOCK_N, BLOCK_M]
    p_t = tl.where(allowed, tl.exp(s_t - lse[None, :]), 0.0)
    dv += tl.dot(p_t.to(do.dtype), do, input_precision=DOT).to(tl.float32)
    dp_t = tl.dot(v, tl.trans(do), input_precision=DOT).to(tl.float32)
    ds_t = p_t * (dp_t - delta[None, :])
    dk += tl.dot(ds_t.to(q.dtype), q, input_precision=DOT).to(tl.float32) * sm_scale
    return dk, dv


@triton.jit
def _band_column_fwd_kernel(
    Q,
    K,
    V,
    O,
    LSE,
    stride_b,
    stride_h,
    stride_n,  # q, k, v, o share one contiguous [B, H, N, D] layout
    stride_lb,
    stride_lh,
    H,
    N,
    L,
    STEP,
    sm_scale,
    HEAD_DIM: tl.constexpr,
    DOT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    COLUMNS: tl.constexpr,
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

    # the band: keys [start_m - L + 1, start_m + BLOCK_M), tile by tile
    lo = tl.maximum(start_m - L + 1, 0)
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
        dist = offs_m[:, None] - offs_n[None, :]
        allowed = (dist >= 0) & (dist < L) & col_ok[None, :]
        s = tl.where(allowed, s, float("-inf"))
        m_i, l_i, acc = _online_update(m_i, l_i, acc, s, v, DOT)

    if COLUMNS:
        # i - j = kk * STEP for kk >= 1 (outside the band as STEP >= L): one key per query,
        # contiguous over the block
        n_col = (start_m + BLOCK_M - 1) // STEP
        for kk in range(1, n_col + 1):
            offs_j = offs_m - kk * STEP
            ok = (offs_j >= 0) & row_ok
            kj = tl.load(
                K + base + offs_j[:, None] * stride_n + offs_d[None, :], mask=ok[:, None], other=0.0
            )
            vj = tl.load(
                V + base + offs_j[:, None] * stride_n + offs_d[None, :], mask=ok[:, None], other=0.0
            )
            s = tl.sum(q.to(tl.float32) * kj.to(tl.float32), 1) * sm_scale
            s = tl.where(ok, s, float("-inf"))
            m_new = tl.maximum(m_i, s)
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.exp(s - m_safe)
            alpha = tl.exp(m_i - m_safe)
            l_i = l_i * alpha + p
            acc = acc * alpha[:, None] + p[:, None] * vj.to(tl.float32)
            m_i = m_new

    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_safe[:, None]
    tl.store(
        O + base + offs_m[:, None] * stride_n + offs_d[None, :],
        out.to(O.dtype.element_ty),
        mask=row_ok[:, None],
    )
    tl.store(LSE + b * stride_lb + h * stride_lh + offs_m, m_i + tl.log(l_safe), mask=row_ok)


@triton.jit
def _band_column_bwd_dq_kernel(
    Q,
    K,
    V,
    DO,
    LSE,
    DELTA,
    DQ,
    stride_b,
    stride_h,
    stride_n,  # q, k, v, do, dq share one contiguous [B, H, N, D] layout
    stride_lb,
    stride_lh,
    H,
    N,
    L,
    STEP,
    sm_scale,
    HEAD_DIM: tl.constexpr,
    DOT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    COLUMNS: tl.constexpr,
):
    """dQ of one query block, walking the same keys as the forward; each program owns its rows,
    so nothing is shared between programs."""
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

    lo = tl.maximum(start_m - L + 1, 0)
    hi = tl.minimum(start_m + BLOCK_M, N)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        col_ok = offs_n < N
        keys = base + offs_n[:, None] * stride_n + offs_d[None, :]
        k = tl.load(K + keys, mask=col_ok[:, None], other=0.0)
        v = tl.load(V + keys, mask=col_ok[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT) * sm_scale
        dist = offs_m[:, None] - offs_n[None, :]
        allowed = (dist >= 0) & (dist < L) & col_ok[None, :] & row_ok[:, None]
        p = tl.where(allowed, tl.exp(s - lse[:, None]), 0.0)  # [BLOCK_M, BLOCK_N]
        dp = tl.dot(do, tl.trans(v), input_precision=DOT).to(tl.float32)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT).to(tl.float32) * sm_scale

    if COLUMNS:
        n_col = (start_m + BLOCK_M - 1) // STEP
        for kk in range(1, n_col + 1):
            offs_j = offs_m - kk * STEP
            ok = (offs_j >= 0) & row_ok
            keys = base + offs_j[:, None] * stride_n + offs_d[None, :]
            kj = tl.load(K + keys, mask=ok[:, None], other=0.0).to(tl.float32)
            vj = tl.load(V + keys, mask=ok[:, None], other=0.0).to(tl.float32)
            s = tl.sum(q.to(tl.float32) * kj, 1) * sm_scale
            p = tl.where(ok, tl.exp(s - lse), 0.0)  # [BLOCK_M]
            dp = tl.sum(do.to(tl.float32) * vj, 1)
            dq += (p * (dp - delta))[:, None] * kj * sm_scale

    tl.store(DQ + rows, dq.to(DQ.dtype.element_ty), mask=row_ok[:, None])


@triton.jit
def _band_column_bwd_dkdv_kernel(
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
    stride_n,  # q, k, v, do, dk, dv share one contiguous [B, H, N, D] layout
    stride_lb,
    stride_lh,
    H,
    N,
    L,
    STEP,
    sm_scale,
    HEAD_DIM: tl.constexpr,
    DOT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    COLUMNS: tl.constexpr,
):
    """dK and dV of one key block [n0, n0 + BLOCK_N): the mirror of the forward. The queries
    that see key j are the band i in [j, j + L) (tensor-core tiles of BLOCK_M) and the column
    i = j + kk * STEP, kk >= 1 (for the whole block the rows [n0 + kk*STEP, ...), one query
    per key, a row-wise product). Each program owns its rows: no atomics."""
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

    hi = tl.minimum(start_n + BLOCK_N - 1 + L, N)
    for start_m in range(start_n, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        row_ok = offs_m < N
        dist = offs_m[None, :] - offs_n[:, None]
        allowed = (dist >= 0) & (dist < L) & col_ok[:, None] & row_ok[None, :]
        dk, dv = _dkdv_tile(
            Q, DO, LSE, DELTA, base, stats, stride_n, offs_m, offs_d, row_ok, k, v, dk, dv,
            allowed, sm_scale, DOT,
        )  # fmt: skip

    if COLUMNS:
        kf = k.to(tl.float32)
        vf = v.to(tl.float32)
        n_col = (N - 1 - start_n) // STEP
        for kk in range(1, n_col + 1):
            offs_i = offs_n + kk * STEP
            ok = (offs_i < N) & col_ok
            rows = base + offs_i[:, None] * stride_n + offs_d[None, :]
            qi = tl.load(Q + rows, mask=ok[:, None], other=0.0).to(tl.float32)
            doi = tl.load(DO + rows, mask=ok[:, None], other=0.0).to(tl.float32)
            lse = tl.load(LSE + stats + offs_i, mask=ok, other=0.0)
            delta = tl.load(DELTA + stats + offs_i, mask=ok, other=0.0)
            s = tl.sum(qi * kf, 1) * sm_scale
            p = tl.where(ok, tl.exp(s - lse), 0.0)  # [BLOCK_N]
            dv += p[:, None] * doi
            ds = p * (tl.sum(doi * vf, 1) - delta)
            dk += ds[:, None] * qi * sm_scale

    tl.store(DK + keys, dk.to(DK.dtype.element_ty), mask=col_ok[:, None])
    tl.store(DV + keys, dv.to(DV.dtype.element_ty), mask=col_ok[:, None])


def band_column_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    band: int,
    step: int | None,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(out [B, H, N, D], lse [B, H, N] float32) of the keys 0 <= i - j < band, and, when
    ``step`` is given (step >= band), every i - j = k * step."""
    B, H, N, D = q.shape
    q, k, v = (t.contiguous() for t in (q, k, v))
    out = torch.empty_like(q)
    lse = torch.empty(B, H, N, device=q.device, dtype=torch.float32)
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    block_m, block_n = block_sizes(q, "forward")
    grid = (triton.cdiv(N, block_m), B * H)
    _band_column_fwd_kernel[grid](
        q,
        k,
        v,
        out,
        lse,
        q.stride(0),
        q.stride(1),
        q.stride(2),
        lse.stride(0),
        lse.stride(1),
        H,
        N,
        band,
        step or 1,
        scale,
        HEAD_DIM=D,
        DOT=dot_precision(q),
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        COLUMNS=step is not None,
    )
    return out, lse


def band_column_backward(
    q,
    k,
    v,
    out,
    lse,
    dout,
    band: int,
    step: int | None,
    scale: float,
):
    """(dq, dk, dv) for band_column_forward's output gradient ``dout``: one kernel for dQ by
    query blocks, one for dK and dV by key blocks."""
    B, H, N, D = q.shape
    q, k, v, out, dout = (t.contiguous() for t in (q, k, v, out, dout))
    delta = (dout.float() * out.float()).sum(-1)  # [B, H, N]: rowsum(dO * O)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    block_m, block_n = block_sizes(q, "backward")
    strides = (q.stride(0), q.stride(1), q.stride(2), lse.stride(0), lse.stride(1))
    meta = dict(
        HEAD_DIM=D,
        DOT=dot_precision(q),
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        COLUMNS=step is not None,
    )
    params = (H, N, band, step or 1, scale)
    _band_column_bwd_dq_kernel[(triton.cdiv(N, block_m), B * H)](
        q, k, v, dout, lse, delta, dq, *strides, *params, **meta
    )
    _band_column_bwd_dkdv_kernel[(triton.cdiv(N, block_n), B * H)](
        q, k, v, dout, lse, delta, dk, dv, *strides, *params, **meta
    )
    return dq, dk, dv


class BandColumnAttention(torch.autograd.Function):
    """Exact attention over the band + column family, differentiable; returns (out, lse)."""

    @staticmethod
    def forward(ctx, q, k, v, band: int, step: int | None, scale: float):
        out, lse = band_column_forward(q, k, v, band, step, scale)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.band, ctx.step, ctx.scale = band, step, scale
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = band_column_backward(q, k, v, out, lse, dout, ctx.band, ctx.step, ctx.scale)
        return dq, dk, dv, None, None, None
