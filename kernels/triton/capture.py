"""Capture forms from the fused kernels: probabilities recomputed as exp(q.k * scale - lse)
with the forward pass's log-sum-exp, never an N x N matrix (DESIGN.md §5).

    triton_rows(q, k, lse, layout, queries)        exact rows              [B, H, Q, N]
    triton_pooled(q, k, lse, layout, block)        tile mean and max       [B, H, nb, nb] x 2
    triton_sparse(q, k, lse, layout, indptr, idx)  CSR values of a support [B, H, nnz]

The layout predicate is evaluated inside the kernels for the kernel family (band/column and
fixed), with the same formulas as kernels/layouts.py; kernels/capture.py is the reference these
are tested against.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.layouts import Layout
from kernels.sparse import kernel_params
from kernels.triton.band_column import dot_precision


@triton.jit
def _allowed(i, j, h, KIND: tl.constexpr, A, B, C, COLUMNS: tl.constexpr):
    """The layout predicate on broadcast index tensors i (queries) and j (keys).

    KIND 0 (band/column): 0 <= i - j < A, or (COLUMNS) i - j a multiple of B.
    KIND 1 (fixed): A = l, B = c, C = num_verts; same block, or j mod l in head h's summary set.
    """
    d = i - j
    causal = d >= 0
    if KIND == 0:
        ok = causal & (d < A)
        if COLUMNS:
            ok = ok | (causal & (d % B == 0))
    else:
        v = h % C
        r = j % A
        ok = causal & ((i // A == j // A) | ((r >= A - (v + 1) * B) & (r <= A - v * B - 1)))
    return ok


@triton.jit
def _rows_kernel(
    Q,
    K,
    LSE,
    QUERIES,
    OUT,
    stride_b,
    stride_h,
    stride_n,
    stride_lb,
    stride_lh,
    stride_ob,
    stride_oh,
    stride_oq,
    H,
    N,
    sm_scale,
    A,
    B,
    C,
    KIND: tl.constexpr,
    COLUMNS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    DOT: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    r = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    base = b * stride_b + h * stride_h
    i = tl.load(QUERIES + r)
    offs_d = tl.arange(0, HEAD_DIM)
    q = tl.load(Q + base + i * stride_n + offs_d).to(tl.float32)
    lse = tl.load(LSE + b * stride_lb + h * stride_lh + i)
    for start_n in range(0, N, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        col_ok = offs_n < N
        k = tl.load(
            K + base + offs_n[:, None] * stride_n + offs_d[None, :], mask=col_ok[:, None], other=0.0
        ).to(tl.float32)
        s = tl.sum(k * q[None, :], 1) * sm_scale
        ok = _allowed(i, offs_n, h, KIND, A, B, C, COLUMNS) & col_ok
        p = tl.where(ok, tl.exp(s - lse), 0.0)
        tl.store(OUT + b * stride_ob + h * stride_oh + r * stride_oq + offs_n, p, mask=col_ok)


@triton.jit
def _pooled_kernel(
    Q,
    K,
    LSE,
    MEAN,
    MAX,
    stride_b,
    stride_h,
    stride_n,
    stride_lb,
    stride_lh,
    stride_mb,
    stride_mh,
    stride_mr,
    H,
    N,
    NB,
    P,
    sm_scale,
    A,
    B,
    C,
    KIND: tl.constexpr,
    COLUMNS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    DOT: tl.constexpr,
    BLOCK: tl.constexpr,
):
    ta = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    base = b * stride_b + h * stride_h
    offs = tl.arange(0, BLOCK)
    offs_d = tl.arange(0, HEAD_DIM)
    rows = ta * P + offs
    row_ok = (offs < P) & (rows < N)
    q = tl.load(
        Q + base + rows[:, None] * stride_n + offs_d[None, :], mask=row_ok[:, None], other=0.0
    )
    lse = tl.load(LSE + b * stride_lb + h * stride_lh + rows, mask=row_ok, other=0.0)
    n_rows = tl.minimum(P, N - ta * P)
    for tb in range(0, ta + 1):  # key tiles after the query tile hold nothing (causal)
        cols = tb * P + offs
        col_ok = (offs < P) & (cols < N)
        k = tl.load(
            K + base + cols[:, None] * stride_n + offs_d[None, :], mask=col_ok[:, None], other=0.0
        )
        s = tl.dot(q, tl.trans(k), input_precision=DOT) * sm_scale
        ok = _allowed(rows[:, None], cols[None, :], h, KIND, A, B, C, COLUMNS)
        ok = ok & row_ok[:, None] & col_ok[None, :]
        p = tl.where(ok, tl.exp(s - lse[:, None]), 0.0)
        n_cols = tl.minimum(P, N - tb * P)
        out = b * stride_mb + h * stride_mh + ta * stride_mr + tb
        tl.store(MEAN + out, tl.sum(tl.sum(p, 1), 0) / (n_rows * n_cols))
        tl.store(MAX + out, tl.max(tl.max(p, 1), 0))


@triton.jit
def _sparse_kernel(
    Q,
    K,
    LSE,
    INDPTR,
    INDICES,
    VALUES,
    stride_b,
    stride_h,
    stride_n,
    stride_lb,
    stride_lh,
    stride_vb,
    stride_vh,
    H,
    sm_scale,
    A,
    B,
    C,
    KIND: tl.constexpr,
    COLUMNS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    DOT: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    i = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    base = b * stride_b + h * stride_h
    offs_d = tl.arange(0, HEAD_DIM)
    q = tl.load(Q + base + i * stride_n + offs_d).to(tl.float32)
    lse = tl.load(LSE + b * stride_lb + h * stride_lh + i)
    lo = tl.load(INDPTR + i)
    hi = tl.load(INDPTR + i + 1)
    for t in range(lo, hi, BLOCK_T):
        offs_t = t + tl.arange(0, BLOCK_T)
        t_ok = offs_t < hi
        j = tl.load(INDICES + offs_t, mask=t_ok, other=0)
        k = tl.load(
            K + base + j[:, None] * stride_n + offs_d[None, :], mask=t_ok[:, None], other=0.0
        ).to(tl.float32)
        s = tl.sum(k * q[None, :], 1) * sm_scale
        ok = _allowed(i, j, h, KIND, A, B, C, COLUMNS) & t_ok
        p = tl.where(ok, tl.exp(s - lse), 0.0)
        tl.store(VALUES + b * stride_vb + h * stride_vh + offs_t, p, mask=t_ok)


def _common(q, k, lse, layout):
    B, H, N, D = q.shape
    kind, a, b_, c, columns = kernel_params(layout, N)
    q, k = q.contiguous(), k.contiguous()
    lse = lse.float().contiguous()
    return q, k, lse, (kind, a, b_, c, columns)


def triton_rows(q, k, lse, layout: Layout, queries: torch.Tensor, scale: float) -> torch.Tensor:
    B, H, N, D = q.shape
    q, k, lse, (kind, a, b_, c, columns) = _common(q, k, lse, layout)
    queries = queries.to(device=q.device, dtype=torch.int64).contiguous()
    out = torch.empty(B, H, len(queries), N, device=q.device, dtype=torch.float32)
    _rows_kernel[(len(queries), B * H)](
        q,
        k,
        lse,
        queries,
        out,
        q.stride(0),
        q.stride(1),
        q.stride(2),
        lse.stride(0),
        lse.stride(1),
        out.stride(0),
        out.stride(1),
        out.stride(2),
        H,
        N,
        scale,
        a,
        b_,
        c,
        KIND=kind,
        COLUMNS=bool(columns),
        HEAD_DIM=D,
        DOT=dot_precision(q),
        BLOCK_N=64,
    )
    return out


def triton_pooled(q, k, lse, layout: Layout, block: int, scale: float):
    B, H, N, D = q.shape
    q, k, lse, (kind, a, b_, c, columns) = _common(q, k, lse, layout)
    nb = triton.cdiv(N, block)
    mean = torch.zeros(B, H, nb, nb, device=q.device, dtype=torch.float32)
    mx = torch.zeros(B, H, nb, nb, device=q.device, dtype=torch.float32)
    _pooled_kernel[(nb, B * H)](
        q,
        k,
        lse,
        mean,
        mx,
        q.stride(0),
        q.stride(1),
        q.stride(2),
        lse.stride(0),
        lse.stride(1),
        mean.stride(0),
        mean.stride(1),
        mean.stride(2),
        H,
        N,
        nb,
        block,
        scale,
        a,
        b_,
        c,
        KIND=kind,
        COLUMNS=bool(columns),
        HEAD_DIM=D,
        DOT=dot_precision(q),
        BLOCK=max(16, triton.next_power_of_2(block)),
    )
    return mean, mx


def triton_sparse(q, k, lse, layout: Layout, indptr, indices, scale: float) -> torch.Tensor:
    B, H, N, D = q.shape
    q, k, lse, (kind, a, b_, c, columns) = _common(q, k, lse, layout)
    indptr = indptr.to(device=q.device, dtype=torch.int64).contiguous()
    indices = indices.to(device=q.device, dtype=torch.int64).contiguous()
    values = torch.zeros(B, H, len(indices), device=q.device, dtype=torch.float32)
    _sparse_kernel[(N, B * H)](
        q,
        k,
        lse,
        indptr,
        indices,
        values,
        q.stride(0),
        q.stride(1),
        q.stride(2),
        lse.stride(0),
        lse.stride(1),
        values.stride(0),
        values.stride(1),
        H,
        scale,
        a,
        b_,
        c,
        KIND=kind,
        COLUMNS=bool(columns),
        HEAD_DIM=D,
        DOT=dot_precision(q),
        BLOCK_T=32,
    )
    return values
