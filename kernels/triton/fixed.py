"""Fused Triton forward and backward for fixed(l, c, num_verts): own block + summary keys
(``fixed_attention``; kernels.dispatch.attention is the entry point).

One program owns BLOCK_M consecutive queries of one (batch, head) and runs one online softmax
over both parts:

* the block part: keys from the start of the first query's l-block up to the last query,
  masked to j // l == i // l and j <= i (tensor-core tiles of BLOCK_N);
* the summary part: for every earlier block b, the c summary keys of the head
  (``_fixed_summary_offsets``), one padded tile of C_PAD keys per block, masked to blocks
  strictly before the query's own (its own summary keys are in the block part).
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
    _fixed_summary_offsets,
    _in_own_block,
    _load_grad_rows,
    _load_rows,
    _program,
    _store_rows,
)


@triton.jit
def _fixed_fwd_kernel(
    Q, K, V, O, LSE,
    stride_b, stride_h, stride_n,  # q, k, v, o share one contiguous [B, H, N, D] layout
    stride_lb, stride_lh,  # lse [B, H, N]
    H, N, L, C, NUM_VERTS, sm_scale,
    HEAD_DIM: tl.constexpr, DOT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    C_PAD: tl.constexpr,
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
    q_block = offs_m // L

    # own block: [start of the first query's block, last query]
    lo = (start_m // L) * L
    hi = tl.minimum(start_m + BLOCK_M, N)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        col_ok = offs_n < N
        allowed = _in_own_block(offs_m[:, None], offs_n[None, :], L) & col_ok[None, :]
        m_i, l_i, acc = _attend_tile(
            q, K, V, base, offs_n, offs_d, stride_n, col_ok, allowed, m_i, l_i, acc, sm_scale, DOT
        )

    # the head's summary keys of every earlier block
    first, _ = _fixed_summary_offsets(h, L, C, NUM_VERTS)
    offs_c = tl.arange(0, C_PAD)
    last_block = (tl.minimum(start_m + BLOCK_M, N) - 1) // L
    for blk in range(0, last_block):
        offs_n = blk * L + first + offs_c
        col_ok = offs_c < C
        allowed = col_ok[None, :] & (q_block[:, None] > blk)
        m_i, l_i, acc = _attend_tile(
            q, K, V, base, offs_n, offs_d, stride_n, col_ok, allowed, m_i, l_i, acc, sm_scale, DOT
        )

    _finish_forward(O, LSE, base, stats, offs_m, offs_d, stride_n, row_ok, m_i, l_i, acc)


@triton.jit
def _fixed_bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ,
    stride_b, stride_h, stride_n,  # q, k, v, do, dq share one contiguous [B, H, N, D] layout
    stride_lb, stride_lh,  # lse, delta [B, H, N]
    H, N, L, C, NUM_VERTS, sm_scale,
    HEAD_DIM: tl.constexpr, DOT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    C_PAD: tl.constexpr,
):  # fmt: skip
    """dQ of one query block over its own block and the earlier blocks' summary keys."""
    pid_m, _, h, base, stats = _program(H, stride_b, stride_h, stride_lb, stride_lh)
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < N
    q, do, lse, delta = _load_grad_rows(
        Q, DO, LSE, DELTA, base, stats, offs_m, offs_d, stride_n, row_ok
    )
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    q_block = offs_m // L

    lo = (start_m // L) * L
    hi = tl.minimum(start_m + BLOCK_M, N)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        col_ok = offs_n < N
        allowed = _in_own_block(offs_m[:, None], offs_n[None, :], L)
        allowed = allowed & col_ok[None, :] & row_ok[:, None]
        dq = _dq_tile(
            q, do, lse, delta, K, V, base, offs_n, offs_d, stride_n, col_ok, allowed, dq,
            sm_scale, DOT,
        )  # fmt: skip

    first, _ = _fixed_summary_offsets(h, L, C, NUM_VERTS)
    offs_c = tl.arange(0, C_PAD)
    last_block = (tl.minimum(start_m + BLOCK_M, N) - 1) // L
    for blk in range(0, last_block):
        offs_n = blk * L + first + offs_c
        col_ok = offs_c < C
        allowed = col_ok[None, :] & (q_block[:, None] > blk) & row_ok[:, None]
        dq = _dq_tile(
            q, do, lse, delta, K, V, base, offs_n, offs_d, stride_n, col_ok, allowed, dq,
            sm_scale, DOT,
        )  # fmt: skip

    _store_rows(DQ, base, offs_m, offs_d, stride_n, row_ok, dq)


@triton.jit
def _fixed_bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV,
    stride_b, stride_h, stride_n,  # q, k, v, do, dk, dv share one contiguous [B, H, N, D] layout
    stride_lb, stride_lh,  # lse, delta [B, H, N]
    H, N, L, C, NUM_VERTS, sm_scale,
    HEAD_DIM: tl.constexpr, DOT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    C_PAD: tl.constexpr,
):  # fmt: skip
    """dK and dV of one key block [n0, n0 + BLOCK_N), the mirror of the forward: the queries of
    each key's own l-block at or after it, and, for the keys in this head's summary set, every
    query of a later l-block (a key block without summary keys stops at its own l-blocks).
    Each program owns its rows: no atomics."""
    pid_n, _, h, base, stats = _program(H, stride_b, stride_h, stride_lb, stride_lh)
    start_n = pid_n * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    col_ok = offs_n < N
    k = _load_rows(K, base, offs_n, offs_d, stride_n, col_ok)
    v = _load_rows(V, base, offs_n, offs_d, stride_n, col_ok)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    k_block = offs_n // L
    lo, hi = _fixed_summary_offsets(h, L, C, NUM_VERTS)
    summary = (offs_n % L >= lo) & (offs_n % L <= hi) & col_ok

    # the queries of each key's own l-block at or after it, and, when the block holds summary
    # keys, every query of a later l-block: one walk from the first key to the end of the last
    # key's l-block, or to N
    own_end = tl.minimum(((start_n + BLOCK_N - 1) // L + 1) * L, N)
    end = tl.where(tl.max(summary.to(tl.int32), 0) > 0, N, own_end)
    for start_m in range(start_n, end, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        row_ok = offs_m < N
        own = _in_own_block(offs_m[None, :], offs_n[:, None], L)  # [keys, queries]
        later = summary[:, None] & (offs_m[None, :] // L > k_block[:, None])
        allowed = (own | later) & col_ok[:, None] & row_ok[None, :]
        dk, dv = _dkdv_tile(
            Q, DO, LSE, DELTA, base, stats, offs_m, offs_d, stride_n, row_ok, k, v, dk, dv,
            allowed, sm_scale, DOT,
        )  # fmt: skip

    _store_rows(DK, base, offs_n, offs_d, stride_n, col_ok, dk)
    _store_rows(DV, base, offs_n, offs_d, stride_n, col_ok, dv)


def _fixed_args(spec: KernelSpec) -> dict[str, int]:
    if spec.kind != "fixed":
        raise ValueError(f"the fixed kernels take a fixed spec, got {spec}")
    return dict(
        L=spec.l,
        C=spec.c,
        NUM_VERTS=spec.num_verts,
        C_PAD=max(16, triton.next_power_of_2(spec.c)),  # 16: the smallest tl.dot operand
    )


FIXED = KernelFamily(_fixed_fwd_kernel, _fixed_bwd_dq_kernel, _fixed_bwd_dkdv_kernel, _fixed_args)


def fixed_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: KernelSpec, *, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(out [B, H, N, D], lse [B, H, N] float32) of fixed(spec.l, spec.c, spec.num_verts);
    differentiable in q, k, v."""
    return FusedAttention.apply(q, k, v, FIXED, spec, scale)
