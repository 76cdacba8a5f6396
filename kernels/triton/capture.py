"""Capture forms from the fused kernels: probabilities recomputed as exp(q.k * scale - lse)
with the forward pass's log-sum-exp, never an N x N matrix (docs/DESIGN.md, "Capture without
an N x N matrix").

    triton_rows(q, k, lse, spec, queries)        exact rows              [B, H, Q, N]
    triton_pooled(q, k, lse, spec, block)        tile mean and max       [B, H, nb, nb] x 2
    triton_sparse(q, k, lse, spec, indptr, idx)  CSR values of a support [B, H, nnz]

The layout predicate is evaluated inside the kernels (``_allowed``) for both kernel families,
with the same formulas as kernels/layouts.py; kernels/capture.py is the reference these are
tested against, and the entry point that calls them.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.triton.common import (
    KernelSpec,
    _fixed_summary_offsets,
    _in_band,
    _in_own_block,
    _load_rows,
    _program,
    dot_precision,
)


@triton.jit
def _allowed(i, j, h, BAND, STEP, L, C, NUM_VERTS, FIXED: tl.constexpr, COLUMNS: tl.constexpr):
    """The layout predicate on broadcast index tensors i (queries) and j (keys) of head h.

    band (FIXED false): 0 <= i - j < BAND, or (COLUMNS) i - j a multiple of STEP.
    fixed: same l-block, or j mod L among head h's summary offsets.
    """
    if FIXED:
        lo, hi = _fixed_summary_offsets(h, L, C, NUM_VERTS)
        r = j % L
        ok = _in_own_block(i, j, L) | ((j <= i) & (r >= lo) & (r <= hi))
    else:
        ok = _in_band(i, j, 0, BAND)
        if COLUMNS:
            ok = ok | ((j <= i) & ((i - j) % STEP == 0))
    return ok


@triton.jit
def _rows_kernel(
    Q, K, LSE,
    stride_b, stride_h, stride_n,  # q, k [B, H, N, D]
    stride_lb, stride_lh,  # lse [B, H, N]
    QUERIES, OUT,
    stride_ob, stride_oh, stride_oq,  # out [B, H, Q, N]
    H, N, sm_scale, BAND, STEP, L, C, NUM_VERTS,
    FIXED: tl.constexpr, COLUMNS: tl.constexpr, HEAD_DIM: tl.constexpr, DOT: tl.constexpr,
    BLOCK_N: tl.constexpr,
):  # fmt: skip
    """Row r of OUT: the probabilities of query QUERIES[r] over all N keys, BLOCK_N at a time."""
    r, b, h, base, stats = _program(H, stride_b, stride_h, stride_lb, stride_lh)
    out = b * stride_ob + h * stride_oh + r * stride_oq
    i = tl.load(QUERIES + r)
    offs_d = tl.arange(0, HEAD_DIM)
    q = tl.load(Q + base + i * stride_n + offs_d).to(tl.float32)
    lse = tl.load(LSE + stats + i)
    for start_n in range(0, N, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        col_ok = offs_n < N
        k = _load_rows(K, base, offs_n, offs_d, stride_n, col_ok).to(tl.float32)
        s = tl.sum(k * q[None, :], 1) * sm_scale
        ok = _allowed(i, offs_n, h, BAND, STEP, L, C, NUM_VERTS, FIXED, COLUMNS) & col_ok
        p = tl.where(ok, tl.exp(s - lse), 0.0)
        tl.store(OUT + out + offs_n, p, mask=col_ok)


@triton.jit
def _pooled_kernel(
    Q, K, LSE,
    stride_b, stride_h, stride_n,  # q, k [B, H, N, D]
    stride_lb, stride_lh,  # lse [B, H, N]
    MEAN, MAX,
    stride_mb, stride_mh, stride_mr,  # mean, max [B, H, NB, NB]
    H, N, P, sm_scale, BAND, STEP, L, C, NUM_VERTS,
    FIXED: tl.constexpr, COLUMNS: tl.constexpr, HEAD_DIM: tl.constexpr, DOT: tl.constexpr,
    BLOCK: tl.constexpr,
):  # fmt: skip
    """Row ta of the P x P tiles (BLOCK >= P, padded): the mean and max of each tile's
    probabilities, the mean over the tile's real entries."""
    ta, b, h, base, stats = _program(H, stride_b, stride_h, stride_lb, stride_lh)
    offs = tl.arange(0, BLOCK)
    offs_d = tl.arange(0, HEAD_DIM)
    rows = ta * P + offs
    row_ok = (offs < P) & (rows < N)
    q = _load_rows(Q, base, rows, offs_d, stride_n, row_ok)
    lse = tl.load(LSE + stats + rows, mask=row_ok, other=0.0)
    n_rows = tl.minimum(P, N - ta * P)
    for tb in range(0, ta + 1):  # key tiles after the query tile hold nothing (causal)
        cols = tb * P + offs
        col_ok = (offs < P) & (cols < N)
        k = _load_rows(K, base, cols, offs_d, stride_n, col_ok)
        s = tl.dot(q, tl.trans(k), input_precision=DOT) * sm_scale
        ok = _allowed(rows[:, None], cols[None, :], h, BAND, STEP, L, C, NUM_VERTS, FIXED, COLUMNS)
        ok = ok & row_ok[:, None] & col_ok[None, :]
        p = tl.where(ok, tl.exp(s - lse[:, None]), 0.0)
        n_cols = tl.minimum(P, N - tb * P)
        out = b * stride_mb + h * stride_mh + ta * stride_mr + tb
        tl.store(MEAN + out, tl.sum(tl.sum(p, 1), 0) / (n_rows * n_cols))
        tl.store(MAX + out, tl.max(tl.max(p, 1), 0))


@triton.jit
def _sparse_kernel(
    Q, K, LSE,
    stride_b, stride_h, stride_n,  # q, k [B, H, N, D]
    stride_lb, stride_lh,  # lse [B, H, N]
    INDPTR, INDICES, VALUES,
    stride_vb, stride_vh,  # values [B, H, nnz]
    H, sm_scale, BAND, STEP, L, C, NUM_VERTS,
    FIXED: tl.constexpr, COLUMNS: tl.constexpr, HEAD_DIM: tl.constexpr, DOT: tl.constexpr,
    BLOCK_T: tl.constexpr,
):  # fmt: skip
    """Query i's CSR entries INDICES[INDPTR[i]:INDPTR[i+1]], BLOCK_T at a time."""
    i, b, h, base, stats = _program(H, stride_b, stride_h, stride_lb, stride_lh)
    offs_d = tl.arange(0, HEAD_DIM)
    q = tl.load(Q + base + i * stride_n + offs_d).to(tl.float32)
    lse = tl.load(LSE + stats + i)
    lo = tl.load(INDPTR + i)
    hi = tl.load(INDPTR + i + 1)
    for t in range(lo, hi, BLOCK_T):
        offs_t = t + tl.arange(0, BLOCK_T)
        t_ok = offs_t < hi
        j = tl.load(INDICES + offs_t, mask=t_ok, other=0)
        k = _load_rows(K, base, j, offs_d, stride_n, t_ok).to(tl.float32)
        s = tl.sum(k * q[None, :], 1) * sm_scale
        ok = _allowed(i, j, h, BAND, STEP, L, C, NUM_VERTS, FIXED, COLUMNS) & t_ok
        p = tl.where(ok, tl.exp(s - lse), 0.0)
        tl.store(VALUES + b * stride_vb + h * stride_vh + offs_t, p, mask=t_ok)


def _launch(
    kernel: triton.JITFunction,
    grid: tuple[int, int, int],
    q: torch.Tensor,
    k: torch.Tensor,
    lse: torch.Tensor,
    *own_args: torch.Tensor | int,
    spec: KernelSpec,
    scale: float,
    **meta: int,
) -> None:
    """Run a capture kernel: q, k, lse and their strides, the kernel's ``own_args`` (its other
    tensors and their strides, in its order), the layout, and ``meta`` (H, N, tile sizes)."""
    q, k, lse = q.contiguous(), k.contiguous(), lse.float().contiguous()
    kernel[grid](
        q, k, lse, q.stride(0), q.stride(1), q.stride(2), lse.stride(0), lse.stride(1),
        *own_args,
        sm_scale=scale, BAND=spec.band, STEP=spec.step or 1, L=spec.l, C=spec.c,
        NUM_VERTS=spec.num_verts, FIXED=spec.kind == "fixed", COLUMNS=spec.columns,
        HEAD_DIM=q.shape[-1], DOT=dot_precision(q), **meta,
    )  # fmt: skip


def triton_rows(
    q: torch.Tensor,
    k: torch.Tensor,
    lse: torch.Tensor,
    spec: KernelSpec,
    queries: torch.Tensor,
    *,
    scale: float,
) -> torch.Tensor:
    """Probabilities of the query rows ``queries`` over all keys: [B, H, Q, N] float32."""
    B, H, N, D = q.shape
    queries = queries.to(device=q.device, dtype=torch.int64).contiguous()
    out = torch.empty(B, H, len(queries), N, device=q.device, dtype=torch.float32)
    _launch(
        _rows_kernel, (len(queries), 1, B * H), q, k, lse,
        queries, out, out.stride(0), out.stride(1), out.stride(2),
        spec=spec, scale=scale, H=H, N=N, BLOCK_N=64,
    )  # fmt: skip
    return out


def triton_pooled(
    q: torch.Tensor,
    k: torch.Tensor,
    lse: torch.Tensor,
    spec: KernelSpec,
    block: int,
    *,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, max) of every block x block tile of the probabilities: [B, H, nb, nb] float32."""
    B, H, N, D = q.shape
    nb = triton.cdiv(N, block)
    mean = torch.zeros(B, H, nb, nb, device=q.device, dtype=torch.float32)
    mx = torch.zeros(B, H, nb, nb, device=q.device, dtype=torch.float32)
    _launch(
        _pooled_kernel, (nb, 1, B * H), q, k, lse,
        mean, mx, mean.stride(0), mean.stride(1), mean.stride(2),
        spec=spec, scale=scale, H=H, N=N, P=block,
        BLOCK=max(16, triton.next_power_of_2(block)),  # 16: the smallest tl.dot operand
    )  # fmt: skip
    return mean, mx


def triton_sparse(
    q: torch.Tensor,
    k: torch.Tensor,
    lse: torch.Tensor,
    spec: KernelSpec,
    indptr: torch.Tensor,
    indices: torch.Tensor,
    *,
    scale: float,
) -> torch.Tensor:
    """The probabilities of the CSR pairs (indptr [N+1], indices [nnz]): [B, H, nnz] float32."""
    B, H, N, D = q.shape
    indptr = indptr.to(device=q.device, dtype=torch.int64).contiguous()
    indices = indices.to(device=q.device, dtype=torch.int64).contiguous()
    values = torch.zeros(B, H, len(indices), device=q.device, dtype=torch.float32)
    _launch(
        _sparse_kernel, (N, 1, B * H), q, k, lse,
        indptr, indices, values, values.stride(0), values.stride(1),
        spec=spec, scale=scale, H=H, BLOCK_T=32,
    )  # fmt: skip
    return values
