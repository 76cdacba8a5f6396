"""Fused Triton forward and backward for the band + column family: dense, local(l), column(l),
strided(l) (``band_column_attention``; kernels.dispatch.attention is the entry point).

One kernel per pass walks a diagonal band LO <= t - s < BAND of causal attention over a strided
subsequence of the tokens, the positions r, r + S, r + 2S, ... (token = r + S * t), with
tensor-core tiles: rows are loaded through computed pointers, one contiguous D-vector each, so a
stride costs no copy. Two uses:

* the band: S = 1, LO = 0, the keys 0 <= i - j < BAND (BAND = N is dense causal, 1 the
  diagonal), a program per BLOCK_M consecutive queries;
* the column part (strided, column): viewed as an l x (N / l) grid, the keys (i - j) mod l = 0
  of query i = r + l t are j = r + l s, s <= t, a contiguous causal run of residue r's column
  (docs/DESIGN.md, "Composing sparse attention from dense pieces"). So S = l, LO = 1 (s = t is
  the band's), BAND = ceil(N / l): dense causal attention over l sequences of length
  ceil(N / l), one grid axis for r, and no work beyond the causal triangle.

Why two passes joined through the log-sum-exp rather than one fused launch: a band program's
queries are consecutive tokens and a column program's are one residue's column, so no tiling
makes both parts dense for the same program; a fused program would walk one of the parts one key
per query, a row-wise product on the CUDA cores instead of tensor-core tiles (docs/BENCHMARKS.md,
"Kernels (GPU)", has what that cost). The second pass reads (o1, lse1) of its rows and writes the
merged softmax over the union in its epilogue (``_finish_forward`` with MERGE), so the merge
costs no launch and no extra buffer. The key j = i belongs to the band only, so it counts once.

Backward: both passes run with the merged lse and delta = rowsum(dO * O), so exp(s - lse) is the
probability under the one softmax over the union; the column pass adds its dQ, dK, dV to the
band pass's (float32 buffers for fp16/bf16), each program owning the rows it writes: no atomics.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.triton.common import (
    BAND_KEYS,
    FusedAttention,
    KernelFamily,
    KernelSpec,
    _dkdv_tile,
    _finish_forward,
    _in_band,
    _load_grad_rows,
    _load_rows,
    _program,
    _store_grad,
    _walk_keys,
    grad_buffers,
    launch,
    tile_configs,
)

# the band and column passes of one call get their own tiles (LO tells them apart)
KEY = ["N", "HEAD_DIM", "LO", "STRIDE"]


@triton.jit
def _subsequence(N, STRIDE, BLOCK: tl.constexpr):
    """(residue r, its length ceil((N - r) / STRIDE), the first index of this program's tile,
    the tile's indices t) for a program of the grid (tiles, STRIDE residues, B * H)."""
    r = tl.program_id(1)
    start = tl.program_id(0) * BLOCK
    return r, tl.cdiv(N - r, STRIDE), start, start + tl.arange(0, BLOCK)


@triton.autotune(configs=tile_configs(), key=KEY, restore_value=["O", "LSE"])
@triton.jit
def _band_fwd_kernel(
    Q, K, V, O, LSE,
    stride_b, stride_h, stride_n,  # q, k, v, o share one contiguous [B, H, N, D] layout
    stride_lb, stride_lh,  # lse [B, H, N]
    H, N, STRIDE, LO, BAND, sm_scale,
    HEAD_DIM: tl.constexpr, DOT: tl.constexpr, MERGE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """Queries t of one tile of residue r attend to keys LO <= t - s < BAND of the residue."""
    _, b, h, base, stats = _program(H, stride_b, stride_h, stride_lb, stride_lh)
    r, T, start_m, offs_m = _subsequence(N, STRIDE, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < T
    rows = r + offs_m * STRIDE  # token positions
    q = _load_rows(Q, base, rows, offs_d, stride_n, row_ok)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    m_i, l_i, acc = _walk_keys(
        q, q, q, q, K, V, base, offs_d, stride_n, sm_scale, start_m, r, T, 0, LO, BAND, STRIDE,
        1, 1, m_i, l_i, acc, BAND_KEYS, False, DOT, BLOCK_M, BLOCK_N,
    )  # fmt: skip

    _finish_forward(O, LSE, base, stats, rows, offs_d, stride_n, row_ok, m_i, l_i, acc, MERGE)


@triton.autotune(configs=tile_configs(), key=KEY, restore_value=["DQ"])
@triton.jit
def _band_bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ,
    stride_b, stride_h, stride_n,  # q, k, v, do, dq share one contiguous [B, H, N, D] layout
    stride_lb, stride_lh,  # lse, delta [B, H, N]
    H, N, STRIDE, LO, BAND, sm_scale,
    HEAD_DIM: tl.constexpr, DOT: tl.constexpr, ACCUMULATE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """dQ of one query tile of residue r, walking the same keys as the forward."""
    _, b, h, base, stats = _program(H, stride_b, stride_h, stride_lb, stride_lh)
    r, T, start_m, offs_m = _subsequence(N, STRIDE, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < T
    rows = r + offs_m * STRIDE
    q, do, lse, delta = _load_grad_rows(
        Q, DO, LSE, DELTA, base, stats, rows, offs_d, stride_n, row_ok
    )
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    dq, _, _ = _walk_keys(
        q, do, lse, delta, K, V, base, offs_d, stride_n, sm_scale, start_m, r, T, 0, LO, BAND,
        STRIDE, 1, 1, dq, dq, dq, BAND_KEYS, True, DOT, BLOCK_M, BLOCK_N,
    )  # fmt: skip

    _store_grad(DQ, base, rows, offs_d, stride_n, row_ok, dq, ACCUMULATE)


@triton.autotune(configs=tile_configs(), key=KEY, restore_value=["DK", "DV"])
@triton.jit
def _band_bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV,
    stride_b, stride_h, stride_n,  # q, k, v, do, dk, dv share one contiguous [B, H, N, D] layout
    stride_lb, stride_lh,  # lse, delta [B, H, N]
    H, N, STRIDE, LO, BAND, sm_scale,
    HEAD_DIM: tl.constexpr, DOT: tl.constexpr, ACCUMULATE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """dK and dV of one key tile [s0, s0 + BLOCK_N) of residue r, the mirror of the forward:
    the queries that see key s are t in [s + LO, s + BAND), walked in tiles of BLOCK_M. Each
    program owns its rows: no atomics."""
    _, b, h, base, stats = _program(H, stride_b, stride_h, stride_lb, stride_lh)
    r, T, start_n, offs_n = _subsequence(N, STRIDE, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    col_ok = offs_n < T
    cols = r + offs_n * STRIDE
    k = _load_rows(K, base, cols, offs_d, stride_n, col_ok)
    v = _load_rows(V, base, cols, offs_d, stride_n, col_ok)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)

    hi = tl.minimum(start_n + BLOCK_N - 1 + BAND, T)
    for start_m in range(start_n + LO, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        row_ok = offs_m < T
        allowed = _in_band(offs_m[None, :], offs_n[:, None], LO, BAND)  # [keys, queries]
        allowed = allowed & col_ok[:, None] & row_ok[None, :]
        dk, dv = _dkdv_tile(
            Q, DO, LSE, DELTA, base, stats, r + offs_m * STRIDE, offs_d, stride_n, row_ok, k, v,
            dk, dv, allowed, sm_scale, DOT,
        )  # fmt: skip

    _store_grad(DK, base, cols, offs_d, stride_n, col_ok, dk, ACCUMULATE)
    _store_grad(DV, base, cols, offs_d, stride_n, col_ok, dv, ACCUMULATE)


KERNELS = (_band_fwd_kernel, _band_bwd_dq_kernel, _band_bwd_dkdv_kernel)


def _passes(spec: KernelSpec, n: int) -> list[dict[str, int]]:
    """The band pass, then the column pass when the layout has one (LO = 1: s = t is the
    band's key i itself)."""
    if spec.kind != "band":
        raise ValueError(f"the band + column kernels take a band spec, got {spec}")
    passes = [dict(STRIDE=1, LO=0, BAND=spec.band)]
    if spec.columns:
        passes.append(dict(STRIDE=spec.step, LO=1, BAND=triton.cdiv(n, spec.step)))
    return passes


def _rows(n: int, p: dict[str, int]) -> int:
    return triton.cdiv(n, p["STRIDE"])  # the longest residue's length (r = 0)


def _forward(q, k, v, spec: KernelSpec, scale: float):
    B, H, N, D = q.shape
    out = torch.empty_like(q)
    lse = torch.empty(B, H, N, device=q.device, dtype=torch.float32)
    for n_pass, p in enumerate(_passes(spec, N)):
        launch(
            _band_fwd_kernel, q, k, v, out, lse, rows=_rows(N, p), subsequences=p["STRIDE"],
            scale=scale, MERGE=n_pass > 0, **p,
        )  # fmt: skip
    return out, lse


def _backward(q, k, v, out, lse, dout, spec: KernelSpec, scale: float):
    N = q.shape[2]
    delta = (dout.float() * out.float()).sum(-1)  # [B, H, N]: rowsum(dO * O)
    dq, dk, dv = grad_buffers(q)
    inputs = (q, k, v, dout, lse, delta)
    for n_pass, p in enumerate(_passes(spec, N)):
        run = dict(rows=_rows(N, p), subsequences=p["STRIDE"], scale=scale, ACCUMULATE=n_pass > 0)
        launch(_band_bwd_dq_kernel, *inputs, dq, **run, **p)
        launch(_band_bwd_dkdv_kernel, *inputs, dk, dv, **run, **p, by_keys=True)
    return dq, dk, dv


BAND_COLUMN = KernelFamily(_forward, _backward)


def band_column_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: KernelSpec, *, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(out [B, H, N, D], lse [B, H, N] float32) of the keys 0 <= i - j < spec.band and, when
    ``spec.step`` is set, every i - j = k * step; differentiable in q, k, v."""
    return FusedAttention.apply(q, k, v, BAND_COLUMN, spec, scale)
