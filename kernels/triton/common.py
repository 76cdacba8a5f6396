"""What the fused kernels share: the layout as they take it (``KernelSpec``), the tile sizes
autotune picks from, dot precision, the @triton.jit pieces every kernel file calls (program ids
and 64-bit offsets, row loads and stores, the online-softmax step, the merge of two partial
softmaxes, the dQ and dK/dV tiles, the fixed layout's summary rule), and the Python side: one
launcher and one autograd Function (``FusedAttention``) over a family's forward and backward.

band_column.py, fixed.py and capture.py import from here and never from each other;
kernels.dispatch.attention is the entry point that checks the inputs and calls them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import triton
import triton.language as tl

from kernels.layouts import Column, Dense, Fixed, Layout, Local, Strided

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
HEAD_DIMS = (16, 32, 64, 128)  # powers of two (tl.arange) >= 16 (the smallest tl.dot operand)
# CUDA's limit on grid axes 1 and 2, which hold the column part's residues and B * H
MAX_GRID_AXIS = 65_535


TILES_ENV = "SPARSE_ATTENTION_TILES"


def tile_configs() -> list[triton.Config]:
    """The (BLOCK_M, BLOCK_N) tiles @triton.autotune picks from, per kernel and per (N, D,
    dtype): on a GPU a short list around 64 x 32, the tile an H100 measured fastest or near it
    (docs/BENCHMARKS.md); under the interpreter one 16 x 16 config, the smallest tile tl.dot
    takes, which the CPU runs fastest (one config: no benchmarking).
    SPARSE_ATTENTION_TILES=64x32 (read at import) pins one GPU config: correctness runs over
    many sizes and dtypes then compile one kernel each instead of benchmarking five."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=1, num_stages=1)]
    if os.environ.get(TILES_ENV):  # e.g. "64x32": one config, nothing to tune (quick checks)
        bm, bn = (int(x) for x in os.environ[TILES_ENV].lower().split("x"))
        return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=4, num_stages=2)]
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
        for bm, bn, w, s in [
            (64, 32, 4, 3),
            (64, 64, 4, 3),
            (128, 64, 8, 3),
            (128, 32, 4, 3),
            (32, 32, 4, 2),
        ]
    ]


def _describe(config: triton.Config) -> str:
    kw = config.kwargs
    return f"{kw['BLOCK_M']}x{kw['BLOCK_N']} w{config.num_warps} s{config.num_stages}"


def tuned_configs(*kernels) -> dict[str, str]:
    """{"kernel (its autotune key)": the config autotune picked} for every key each of
    ``kernels`` (@triton.autotune functions) has been tuned for, or the config of its last launch
    where there was nothing to choose (one config, as under the interpreter)."""
    picked = {}
    for kernel in kernels:
        name = kernel.base_fn.__name__
        for key, config in getattr(kernel, "cache", {}).items():
            shown = ", ".join(f"{k}={v}" for k, v in zip(kernel.keys, key, strict=False))
            picked[f"{name} ({shown})"] = _describe(config)
        config = getattr(kernel, "best_config", None)
        if not getattr(kernel, "cache", None) and config is not None:
            picked[name] = _describe(config)
    return picked


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
        """Whether the layout has a column part (strided, column)."""
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


def dot_precision(q: torch.Tensor) -> str:
    """float32 inputs get exact float32 products ("ieee"), as the reference computes them;
    Triton's default for a float32 dot is tf32 (about 1e-3 relative error). bf16 and fp16 dots
    are exact products accumulated in float32 whatever this says."""
    return "ieee" if q.dtype == torch.float32 else "tf32"


@triton.jit
def _fixed_summary_offsets(h, L, C, NUM_VERTS):
    """kernels.layouts.fixed_summary_offsets for the kernels (its docstring states the rule and
    this pair; tests/test_triton_common.py checks they agree). Every kernel takes a fixed
    layout's summary keys from here."""
    v = h % NUM_VERTS
    return L - (v + 1) * C, L - v * C - 1


@triton.jit
def _summary_tokens(g, first, L, C):
    """The token of gathered summary index g, for a head whose summary offsets start at
    ``first``: the summary keys of fixed(L, C) read as one sequence of C keys per block."""
    return (g // C) * L + first + g % C


# the parts of the layouts on broadcast query indices i and key indices j, as in
# kernels/layouts.py (its parts() say the same with plain operators)


@triton.jit
def _in_band(i, j, LO, BAND):
    """LO <= i - j < BAND: local(BAND) with LO = 0 (dense when BAND >= N, the diagonal when
    BAND = 1); with LO = 1 the strictly earlier keys, as the column part takes them."""
    d = i - j
    return (d >= LO) & (d < BAND)


@triton.jit
def _in_own_block(i, j, L):
    """j <= i in the same l-block: the block part of fixed(L, ...)."""
    return (j <= i) & (i // L == j // L)


@triton.jit
def _head_offsets(pid_bh, H, stride_b, stride_h, stride_lb, stride_lh):
    """(batch, head, offset of this (batch, head) in q/k/v/o, its offset in lse/delta).

    The offsets are 64-bit: b * stride_b passes 2**31 once B * H * N * D does (B = 8, H = 16,
    N = 65,536, D = 256 in one tensor), and a 32-bit product would wrap to a wrong address.
    """
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    return b, h, b * stride_b + h * stride_h, b * stride_lb + h * stride_lh


@triton.jit
def _program(H, stride_b, stride_h, stride_lb, stride_lh):
    """(tile index, batch, head, q/k/v/o offset, lse/delta offset) for the grid
    (tiles, subsequences, B * H) every kernel here launches (axis 1 is read by the kernels that
    use it)."""
    b, h, base, stats = _head_offsets(tl.program_id(2), H, stride_b, stride_h, stride_lb, stride_lh)
    return tl.program_id(0), b, h, base, stats


@triton.jit
def _load_rows(X, base, offs, offs_d, stride_n, ok):
    """Rows ``offs`` (token positions, any order or stride) of one head's [N, D] matrix, zero
    where not ``ok``: [len(offs), D]."""
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


# --- the key walk: which keys a query tile visits, shared by every kernel that walks keys ------
# A query tile [start_m, start_m + BLOCK_M) of a run of T tokens (token = r + STRIDE t) walks one
# part of a layout in key tiles of BLOCK_N:
BAND_KEYS = tl.constexpr(0)  # LO <= t - s < WIDTH: a band (STRIDE 1) or the columns (STRIDE l)
OWN_BLOCK = tl.constexpr(1)  # fixed: j <= i in i's l-block (r = 0, STRIDE 1)
SUMMARY = tl.constexpr(2)  # fixed: the gathered summary prefix g < (i // L) C of earlier blocks


@triton.jit
def _key_range(start_m, T, LO, WIDTH, L, C, PART: tl.constexpr, BLOCK_M: tl.constexpr):
    """[lo, hi) of the walk indices of PART's keys that some query of the tile may see."""
    if PART == BAND_KEYS:
        lo = tl.maximum(start_m - WIDTH + 1, 0)
        hi = tl.minimum(start_m + BLOCK_M - LO, T)
    elif PART == OWN_BLOCK:
        lo = (start_m // L) * L  # the first query's block start, up to the last query
        hi = tl.minimum(start_m + BLOCK_M, T)
    else:
        lo = 0  # the summary keys of the blocks before the last query's
        hi = ((tl.minimum(start_m + BLOCK_M, T) - 1) // L) * C
    return lo, hi


@triton.jit
def _key_tile(
    start_n, offs_m, hi, r, T, first, LO, WIDTH, STRIDE, L, C,
    PART: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """(tokens [BLOCK_N], real keys [BLOCK_N], the pairs PART allows [BLOCK_M, BLOCK_N], not
    yet masked to real rows and keys) of the key tile at walk index start_n; ``hi`` is
    _key_range's, ``first`` the head's first summary offset (_fixed_summary_offsets)."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    if PART == BAND_KEYS:
        pairs = _in_band(offs_m[:, None], offs_n[None, :], LO, WIDTH)
        return r + offs_n * STRIDE, offs_n < T, pairs
    elif PART == OWN_BLOCK:
        return offs_n, offs_n < T, _in_own_block(offs_m[:, None], offs_n[None, :], L)
    else:
        pairs = offs_n[None, :] < (offs_m[:, None] // L) * C
        return _summary_tokens(offs_n, first, L, C), offs_n < hi, pairs


@triton.jit
def _walk_keys(
    q, do, lse, delta, K, V, base, offs_d, stride_n, sm_scale,
    start_m, r, T, first, LO, WIDTH, STRIDE, L, C, s0, s1, s2,
    PART: tl.constexpr, GRAD: tl.constexpr, DOT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """Walk PART's keys for the query tile at start_m (rows r + STRIDE t of a run of T) and
    return the running state: the forward's online softmax (s0, s1, s2) = (m, l, acc), or with
    GRAD its dQ (s0 = dq; s1, s2 pass through; do, lse, delta are read only then)."""
    offs_m = start_m + tl.arange(0, BLOCK_M)
    lo, hi = _key_range(start_m, T, LO, WIDTH, L, C, PART, BLOCK_M)
    for start_n in range(lo, hi, BLOCK_N):
        cols, col_ok, pairs = _key_tile(
            start_n, offs_m, hi, r, T, first, LO, WIDTH, STRIDE, L, C, PART, BLOCK_N
        )
        allowed = pairs & col_ok[None, :]
        if GRAD:
            allowed = allowed & (offs_m < T)[:, None]
            s0 = _dq_tile(
                q, do, lse, delta, K, V, base, cols, offs_d, stride_n, col_ok, allowed, s0,
                sm_scale, DOT,
            )  # fmt: skip
        else:
            s0, s1, s2 = _attend_tile(
                q, K, V, base, cols, offs_d, stride_n, col_ok, allowed, s0, s1, s2, sm_scale, DOT
            )
    return s0, s1, s2


@triton.jit
def _finish_forward(
    O, LSE, base, stats, offs_m, offs_d, stride_n, row_ok, m_i, l_i, acc, MERGE: tl.constexpr
):
    """Store out = acc / l and lse = m + log(l) of the query rows ``offs_m``; a row with no key
    in this pass gets out = 0 and lse = -inf.

    With MERGE, O and LSE already hold another pass's (o1, lse1) over a disjoint key set, and
    the rows get the softmax over the union (docs/DESIGN.md, "Composing sparse attention from
    dense pieces"): with m = max(lse1, lse2), o = (o1 e^(lse1 - m) + o2 e^(lse2 - m)) / (e^(lse1
    - m) + e^(lse2 - m)) and lse = m + log(e^(lse1 - m) + e^(lse2 - m)). o1 is read back in the
    output dtype; the merge is a convex combination, so that rounding costs at most half an ulp.
    """
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)  # rows without keys (and padding) have l = 0
    out = acc / l_safe[:, None]
    lse = tl.where(l_i == 0.0, float("-inf"), m_i + tl.log(l_safe))
    if MERGE:
        # the first pass gave every real row a key (its own), so lse1 is finite there
        lse1 = tl.load(LSE + stats + offs_m, mask=row_ok, other=0.0)
        o1 = _load_rows(O, base, offs_m, offs_d, stride_n, row_ok).to(tl.float32)
        m = tl.maximum(lse1, lse)
        w1 = tl.exp(lse1 - m)
        w2 = tl.exp(lse - m)  # 0 for a row without keys here
        out = (o1 * w1[:, None] + out * w2[:, None]) / (w1 + w2)[:, None]
        lse = m + tl.log(w1 + w2)
    _store_rows(O, base, offs_m, offs_d, stride_n, row_ok, out)
    tl.store(LSE + stats + offs_m, lse, mask=row_ok)


@triton.jit
def _store_grad(X, base, offs, offs_d, stride_n, ok, x, ACCUMULATE: tl.constexpr):
    """Store a gradient tile, or with ACCUMULATE add it to what an earlier pass over another
    part of the layout stored there (the same rows, owned by this program: no atomics)."""
    if ACCUMULATE:
        x += _load_rows(X, base, offs, offs_d, stride_n, ok).to(tl.float32)
    _store_rows(X, base, offs, offs_d, stride_n, ok, x)


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
    """Add the keys ``offs_n``'s share to dq [BLOCK_M, D]; allowed is [BLOCK_M, BLOCK_N].

    lse is the log-sum-exp of the whole layout (every part merged), so exp(s - lse) is the
    probability under the one softmax even when this pass walks only one part of it."""
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


# --- the Python side: launch a kernel, and one autograd Function over a family ----------------


def launch(
    kernel,
    *tensors: torch.Tensor,
    rows: int,
    subsequences: int = 1,
    by_keys: bool = False,
    scale: float,
    **args: int | bool | str,
) -> None:
    """Run one kernel on ``tensors`` (q, k, v, o or do, lse, ...: every kernel starts so, and
    its [B, H, N, D] tensors share q's strides, its [B, H, N] ones lse's) over the grid
    (tiles of ``rows``, ``subsequences``, B * H): a program per BLOCK_M query rows, or per
    BLOCK_N keys for dK/dV (``by_keys``), of each subsequence (the column part's residues) of
    each (batch, head). The tile sizes come from autotune."""
    q, lse = tensors[0], tensors[4]
    B, H, N, D = q.shape

    def grid(meta):
        return (triton.cdiv(rows, meta["BLOCK_N" if by_keys else "BLOCK_M"]), subsequences, B * H)

    kernel[grid](
        *tensors, q.stride(0), q.stride(1), q.stride(2), lse.stride(0), lse.stride(1), H, N,
        sm_scale=scale, HEAD_DIM=D, DOT=dot_precision(q), **args,
    )  # fmt: skip


def grad_buffers(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dq, dk, dv to accumulate into: float32 where the inputs are fp16/bf16, so that a sum over
    two passes rounds once (the caller casts back)."""
    dtype = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    return tuple(torch.empty(q.shape, device=q.device, dtype=dtype) for _ in range(3))


@dataclass(frozen=True)
class KernelFamily:
    """One layout family's Python side (band_column.py, fixed.py): ``forward(q, k, v, spec,
    scale) -> (out, lse)`` and ``backward(q, k, v, out, lse, dout, spec, scale) -> (dq, dk,
    dv)``, on contiguous tensors."""

    forward: Callable
    backward: Callable


class FusedAttention(torch.autograd.Function):
    """Exact attention on one family's kernels, differentiable; returns (out, lse), lse not
    differentiable. ``FusedAttention.apply(q, k, v, family, spec, scale)``."""

    @staticmethod
    def forward(ctx, q, k, v, family: KernelFamily, spec: KernelSpec, scale: float):
        q, k, v = (t.contiguous() for t in (q, k, v))
        out, lse = family.forward(q, k, v, spec, scale)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.family, ctx.spec, ctx.scale = family, spec, scale
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse = ctx.saved_tensors
        dout = dout.contiguous()
        grads = ctx.family.backward(q, k, v, out, lse, dout, ctx.spec, ctx.scale)
        return *(g.to(q.dtype) for g in grads), None, None, None
