"""Fused Triton forward and backward for the band + column family: dense, local(l), column(l),
strided(l) (``band_column_attention``; kernels.dispatch.attention is the entry point).

One program owns BLOCK_M consecutive queries [m0, m0 + BLOCK_M) of one (batch, head) and runs a
single online softmax over both parts of the layout, so the merge is exact and costs no extra
pass:

* the band (0 <= i - j < BAND): the keys [m0 - BAND + 1, m0 + BLOCK_M) in tiles of BLOCK_N, with
  tensor-core dots; BAND = N gives dense causal attention, BAND = 1 leaves only the diagonal;
* the columns (i - j = k * STEP for k >= 1, strided and column only): for each k the keys of
  the whole query block are the rows [m0 - k*STEP, m0 - k*STEP + BLOCK_M), one key per query,
  so they are loaded as one tile and scored with a row-wise product: exactly the useful work,
  N / STEP such steps.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.triton.common import (
    FusedAttention,
    KernelFamily,
    KernelSpec,
    _attend_tile,
    _dkdv_tile,
    _dq_tile,
    _finish_forward,
    _in_band,
    _load_grad_rows,
    _load_rows,
    _program,
    _store_rows,
)


@triton.jit
def _band_column_fwd_kernel(
    Q, K, V, O, LSE,
    stride_b, stride_h, stride_n,  # q, k, v, o share one contiguous [B, H, N, D] layout
    stride_lb, stride_lh,  # lse [B, H, N]
    H, N, BAND, STEP, sm_scale,
    HEAD_DIM: tl.constexpr, DOT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    COLUMNS: tl.constexpr,
):  # fmt: skip
    pid_m, _, h, base, stats = _program(H, stride_b, stride_h, stride_lb, stride_lh)
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < N
    q = _load_rows(Q, base, offs_m, offs_d, stride_n, row_ok)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    # the band: keys [start_m - BAND + 1, start_m + BLOCK_M), tile by tile
    lo = tl.maximum(start_m - BAND + 1, 0)
    hi = tl.minimum(start_m + BLOCK_M, N)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        col_ok = offs_n < N
        allowed = _in_band(offs_m[:, None], offs_n[None, :], BAND) & col_ok[None, :]
        m_i, l_i, acc = _attend_tile(
            q, K, V, base, offs_n, offs_d, stride_n, col_ok, allowed, m_i, l_i, acc, sm_scale, DOT
        )

    if COLUMNS:
        # i - j = kk * STEP for kk >= 1 (outside the band as STEP >= BAND): one key per query,
        # contiguous over the block, so a row-wise product instead of a dot
        n_col = (start_m + BLOCK_M - 1) // STEP
        for kk in range(1, n_col + 1):
            offs_j = offs_m - kk * STEP
            ok = (offs_j >= 0) & row_ok
            kj = _load_rows(K, base, offs_j, offs_d, stride_n, ok)
            vj = _load_rows(V, base, offs_j, offs_d, stride_n, ok)
            s = tl.sum(q.to(tl.float32) * kj.to(tl.float32), 1) * sm_scale
            s = tl.where(ok, s, float("-inf"))
            # _online_update with one key per row
            m_new = tl.maximum(m_i, s)
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.exp(s - m_safe)
            alpha = tl.exp(m_i - m_safe)
            l_i = l_i * alpha + p
            acc = acc * alpha[:, None] + p[:, None] * vj.to(tl.float32)
            m_i = m_new

    _finish_forward(O, LSE, base, stats, offs_m, offs_d, stride_n, row_ok, m_i, l_i, acc)


@triton.jit
def _band_column_bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ,
    stride_b, stride_h, stride_n,  # q, k, v, do, dq share one contiguous [B, H, N, D] layout
    stride_lb, stride_lh,  # lse, delta [B, H, N]
    H, N, BAND, STEP, sm_scale,
    HEAD_DIM: tl.constexpr, DOT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    COLUMNS: tl.constexpr,
):  # fmt: skip
    """dQ of one query block, walking the same keys as the forward; each program owns its rows,
    so nothing is shared between programs."""
    pid_m, _, h, base, stats = _program(H, stride_b, stride_h, stride_lb, stride_lh)
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < N
    q, do, lse, delta = _load_grad_rows(
        Q, DO, LSE, DELTA, base, stats, offs_m, offs_d, stride_n, row_ok
    )
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    lo = tl.maximum(start_m - BAND + 1, 0)
    hi = tl.minimum(start_m + BLOCK_M, N)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        col_ok = offs_n < N
        allowed = _in_band(offs_m[:, None], offs_n[None, :], BAND)
        allowed = allowed & col_ok[None, :] & row_ok[:, None]
        dq = _dq_tile(
            q, do, lse, delta, K, V, base, offs_n, offs_d, stride_n, col_ok, allowed, dq,
            sm_scale, DOT,
        )  # fmt: skip

    if COLUMNS:
        n_col = (start_m + BLOCK_M - 1) // STEP
        for kk in range(1, n_col + 1):
            offs_j = offs_m - kk * STEP
            ok = (offs_j >= 0) & row_ok
            kj = _load_rows(K, base, offs_j, offs_d, stride_n, ok).to(tl.float32)
            vj = _load_rows(V, base, offs_j, offs_d, stride_n, ok).to(tl.float32)
            s = tl.sum(q.to(tl.float32) * kj, 1) * sm_scale
            p = tl.where(ok, tl.exp(s - lse), 0.0)  # [BLOCK_M]
            dp = tl.sum(do.to(tl.float32) * vj, 1)
            dq += (p * (dp - delta))[:, None] * kj * sm_scale

    _store_rows(DQ, base, offs_m, offs_d, stride_n, row_ok, dq)


@triton.jit
def _band_column_bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV,
    stride_b, stride_h, stride_n,  # q, k, v, do, dk, dv share one contiguous [B, H, N, D] layout
    stride_lb, stride_lh,  # lse, delta [B, H, N]
    H, N, BAND, STEP, sm_scale,
    HEAD_DIM: tl.constexpr, DOT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    COLUMNS: tl.constexpr,
):  # fmt: skip
    """dK and dV of one key block [n0, n0 + BLOCK_N): the mirror of the forward. The queries
    that see key j are the band i in [j, j + BAND) (tensor-core tiles of BLOCK_M) and the
    column i = j + kk * STEP, kk >= 1 (for the whole block the rows [n0 + kk*STEP, ...), one
    query per key, a row-wise product). Each program owns its rows: no atomics."""
    pid_n, _, h, base, stats = _program(H, stride_b, stride_h, stride_lb, stride_lh)
    start_n = pid_n * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    col_ok = offs_n < N
    k = _load_rows(K, base, offs_n, offs_d, stride_n, col_ok)
    v = _load_rows(V, base, offs_n, offs_d, stride_n, col_ok)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)

    hi = tl.minimum(start_n + BLOCK_N - 1 + BAND, N)
    for start_m in range(start_n, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        row_ok = offs_m < N
        allowed = _in_band(offs_m[None, :], offs_n[:, None], BAND)  # [keys, queries]
        allowed = allowed & col_ok[:, None] & row_ok[None, :]
        dk, dv = _dkdv_tile(
            Q, DO, LSE, DELTA, base, stats, offs_m, offs_d, stride_n, row_ok, k, v, dk, dv,
            allowed, sm_scale, DOT,
        )  # fmt: skip

    if COLUMNS:
        kf = k.to(tl.float32)
        vf = v.to(tl.float32)
        n_col = (N - 1 - start_n) // STEP
        for kk in range(1, n_col + 1):
            offs_i = offs_n + kk * STEP
            ok = (offs_i < N) & col_ok
            qi, doi, lse, delta = _load_grad_rows(
                Q, DO, LSE, DELTA, base, stats, offs_i, offs_d, stride_n, ok
            )
            qi, doi = qi.to(tl.float32), doi.to(tl.float32)
            s = tl.sum(qi * kf, 1) * sm_scale
            p = tl.where(ok, tl.exp(s - lse), 0.0)  # [BLOCK_N]
            dv += p[:, None] * doi
            ds = p * (tl.sum(doi * vf, 1) - delta)
            dk += ds[:, None] * qi * sm_scale

    _store_rows(DK, base, offs_n, offs_d, stride_n, col_ok, dk)
    _store_rows(DV, base, offs_n, offs_d, stride_n, col_ok, dv)


def _band_args(spec: KernelSpec) -> dict[str, int | bool]:
    if spec.kind != "band":
        raise ValueError(f"the band + column kernels take a band spec, got {spec}")
    return dict(BAND=spec.band, STEP=spec.step or 1, COLUMNS=spec.columns)


BAND_COLUMN = KernelFamily(
    _band_column_fwd_kernel,
    _band_column_bwd_dq_kernel,
    _band_column_bwd_dkdv_kernel,
    _band_args,
)


def band_column_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: KernelSpec, *, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(out [B, H, N, D], lse [B, H, N] float32) of the keys 0 <= i - j < spec.band and, when
    ``spec.step`` is set, every i - j = k * step; differentiable in q, k, v."""
    return FusedAttention.apply(q, k, v, BAND_COLUMN, spec, scale)
