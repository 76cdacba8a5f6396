"""Fused Triton forward and backward for fixed(l, c, num_verts): own block + summary keys
(``fixed_attention``; kernels.dispatch.attention is the entry point).

The summary keys of head h, the positions j with j mod l in the head's offsets [lo, lo + c)
(``_fixed_summary_offsets``, head-dependent for num_verts > 1), are read as one gathered
sequence of length ceil(N / l) * c: gathered index g is the token (g // c) * l + lo + g % c,
loaded through computed pointers (no copy). Query i attends to the summary keys of the blocks
before its own, which is the prefix g < (i // l) * c of that sequence: whole tensor-core tiles
of BLOCK_N summary keys, masked only on the last one (docs/DESIGN.md, "Composing sparse
attention from dense pieces").

* forward and dQ, a program per BLOCK_M consecutive queries: one online softmax over the own
  block (keys from the start of the first query's l-block up to the last query, masked to
  j // l == i // l and j <= i) and then the summary prefix. Both parts are indexed by the same
  query rows, so one launch merges them exactly with no second pass.
* dK and dV, two launches over disjoint pairs: a program per BLOCK_N consecutive keys for the
  own-block pairs (the queries of each key's l-block), then a program per BLOCK_N gathered
  summary keys for the pairs with later blocks (every query from the next block on, whole
  tiles), adding to the first launch's rows. Each program owns the rows it writes: no atomics.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.triton.common import (
    OWN_BLOCK,
    SUMMARY,
    FusedAttention,
    KernelFamily,
    KernelSpec,
    _dkdv_tile,
    _finish_forward,
    _fixed_summary_offsets,
    _in_own_block,
    _load_grad_rows,
    _load_rows,
    _program,
    _store_grad,
    _summary_tokens,
    _walk_keys,
    grad_buffers,
    launch,
    tile_configs,
)


@triton.autotune(configs=tile_configs(), key=["N", "HEAD_DIM", "L", "C"])
@triton.jit
def _fixed_fwd_kernel(
    Q, K, V, O, LSE,
    stride_b, stride_h, stride_n,  # q, k, v, o share one contiguous [B, H, N, D] layout
    stride_lb, stride_lh,  # lse [B, H, N]
    H, N, L, C, NUM_VERTS, sm_scale,
    HEAD_DIM: tl.constexpr, DOT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
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

    first, _ = _fixed_summary_offsets(h, L, C, NUM_VERTS)
    for part in tl.static_range(OWN_BLOCK, SUMMARY + 1):  # the own block, then the summaries
        m_i, l_i, acc = _walk_keys(
            q, q, q, q, K, V, base, offs_d, stride_n, sm_scale, start_m, 0, N, first, 0, 1, 1, L,
            C, m_i, l_i, acc, part, False, DOT, BLOCK_M, BLOCK_N,
        )  # fmt: skip

    _finish_forward(O, LSE, base, stats, offs_m, offs_d, stride_n, row_ok, m_i, l_i, acc, False)


@triton.autotune(configs=tile_configs(), key=["N", "HEAD_DIM", "L", "C"])
@triton.jit
def _fixed_bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ,
    stride_b, stride_h, stride_n,  # q, k, v, do, dq share one contiguous [B, H, N, D] layout
    stride_lb, stride_lh,  # lse, delta [B, H, N]
    H, N, L, C, NUM_VERTS, sm_scale,
    HEAD_DIM: tl.constexpr, DOT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """dQ of one query block over its own block and the summary prefix, as the forward."""
    pid_m, _, h, base, stats = _program(H, stride_b, stride_h, stride_lb, stride_lh)
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < N
    q, do, lse, delta = _load_grad_rows(
        Q, DO, LSE, DELTA, base, stats, offs_m, offs_d, stride_n, row_ok
    )
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    first, _ = _fixed_summary_offsets(h, L, C, NUM_VERTS)
    for part in tl.static_range(OWN_BLOCK, SUMMARY + 1):  # the own block, then the summaries
        dq, _, _ = _walk_keys(
            q, do, lse, delta, K, V, base, offs_d, stride_n, sm_scale, start_m, 0, N, first, 0,
            1, 1, L, C, dq, dq, dq, part, True, DOT, BLOCK_M, BLOCK_N,
        )  # fmt: skip

    _store_grad(DQ, base, offs_m, offs_d, stride_n, row_ok, dq, False)


@triton.autotune(
    configs=tile_configs(), key=["N", "HEAD_DIM", "L", "C", "SUMMARY"], restore_value=["DK", "DV"]
)
@triton.jit
def _fixed_bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV,
    stride_b, stride_h, stride_n,  # q, k, v, do, dk, dv share one contiguous [B, H, N, D] layout
    stride_lb, stride_lh,  # lse, delta [B, H, N]
    H, N, L, C, NUM_VERTS, sm_scale,
    HEAD_DIM: tl.constexpr, DOT: tl.constexpr, SUMMARY: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """dK and dV of one key tile, the mirror of the forward. Without SUMMARY: BLOCK_N
    consecutive keys and the queries of their own l-blocks at or after them (the tile's own
    rows are written). With SUMMARY: BLOCK_N gathered summary keys g and every query of a later
    l-block (i // L > g // C), added to what the first launch wrote for those rows."""
    pid_n, _, h, base, stats = _program(H, stride_b, stride_h, stride_lb, stride_lh)
    start_n = pid_n * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N)  # keys, or gathered summary indices
    offs_d = tl.arange(0, HEAD_DIM)
    if SUMMARY:
        first, _ = _fixed_summary_offsets(h, L, C, NUM_VERTS)
        # the blocks before the last one: the last block's summary keys have no later query
        col_ok = offs_n < (tl.cdiv(N, L) - 1) * C
        cols = _summary_tokens(offs_n, first, L, C)
        lo = (start_n // C + 1) * L  # the first query of a later block
        hi = N
    else:
        col_ok = offs_n < N
        cols = offs_n
        lo = start_n
        hi = tl.minimum(((start_n + BLOCK_N - 1) // L + 1) * L, N)  # the last key's block end
    k = _load_rows(K, base, cols, offs_d, stride_n, col_ok)
    v = _load_rows(V, base, cols, offs_d, stride_n, col_ok)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)

    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        row_ok = offs_m < N
        if SUMMARY:
            allowed = offs_m[None, :] // L > offs_n[:, None] // C  # [keys, queries]
        else:
            allowed = _in_own_block(offs_m[None, :], offs_n[:, None], L)
        allowed = allowed & col_ok[:, None] & row_ok[None, :]
        dk, dv = _dkdv_tile(
            Q, DO, LSE, DELTA, base, stats, offs_m, offs_d, stride_n, row_ok, k, v, dk, dv,
            allowed, sm_scale, DOT,
        )  # fmt: skip

    _store_grad(DK, base, cols, offs_d, stride_n, col_ok, dk, SUMMARY)
    _store_grad(DV, base, cols, offs_d, stride_n, col_ok, dv, SUMMARY)


KERNELS = (_fixed_fwd_kernel, _fixed_bwd_dq_kernel, _fixed_bwd_dkdv_kernel)


def _fixed_args(spec: KernelSpec) -> dict[str, int]:
    if spec.kind != "fixed":
        raise ValueError(f"the fixed kernels take a fixed spec, got {spec}")
    return dict(L=spec.l, C=spec.c, NUM_VERTS=spec.num_verts)


def _forward(q, k, v, spec: KernelSpec, scale: float):
    B, H, N, D = q.shape
    args = _fixed_args(spec)
    out = torch.empty_like(q)
    lse = torch.empty(B, H, N, device=q.device, dtype=torch.float32)
    launch(_fixed_fwd_kernel, q, k, v, out, lse, rows=N, scale=scale, **args)
    return out, lse


def _backward(q, k, v, out, lse, dout, spec: KernelSpec, scale: float):
    N = q.shape[2]
    args = _fixed_args(spec)
    delta = (dout.float() * out.float()).sum(-1)  # [B, H, N]: rowsum(dO * O)
    dq, dk, dv = grad_buffers(q)
    inputs = (q, k, v, dout, lse, delta)
    launch(_fixed_bwd_dq_kernel, *inputs, dq, rows=N, scale=scale, **args)
    launch(
        _fixed_bwd_dkdv_kernel, *inputs, dk, dv, rows=N, by_keys=True, scale=scale,
        SUMMARY=False, **args,
    )  # fmt: skip
    n_summary = (triton.cdiv(N, spec.l) - 1) * spec.c  # keys some later block attends to
    if n_summary > 0:
        launch(
            _fixed_bwd_dkdv_kernel, *inputs, dk, dv, rows=n_summary, by_keys=True, scale=scale,
            SUMMARY=True, **args,
        )  # fmt: skip
    return dq, dk, dv


FIXED = KernelFamily(_forward, _backward)


def fixed_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: KernelSpec, *, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(out [B, H, N, D], lse [B, H, N] float32) of fixed(spec.l, spec.c, spec.num_verts);
    differentiable in q, k, v."""
    return FusedAttention.apply(q, k, v, FIXED, spec, scale)
