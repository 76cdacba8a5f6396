"""Capture forms from the fused kernels: probabilities recomputed as exp(q.k * scale - lse)
with the forward pass's log-sum-exp, never an N x N matrix (docs/DESIGN.md, "Capture without
an N x N matrix").

    triton_rows(q, k, lse, spec, queries)            exact rows              [B, H, Q, N]
    triton_pooled(q, k, lse, spec, block)            tile mean and max       [B, H, nb, nb] x 2
                                                     (kernels.capture.attention_pooled with the
                                                     forward, from the lse it just computed)
    triton_support(support, n, device)               CSR pattern of a support (indptr, indices)
    triton_sparse(q, k, lse, spec, support, indptr)  CSR values of a support [B, H, nnz]

The layout predicate is evaluated inside the kernels (``_allowed``) for both kernel families,
with the same formulas as kernels/layouts.py. The sparse and pooled forms walk only the pairs
they need (the support's, the layout's) in tensor-core tiles, with the forward's own key walk
(``_walk_kernel`` over kernels/triton/common.py's ``_key_range`` and ``_key_tile``): about a
forward's cost without its P V product, rather than scoring all N^2 / 2 causal pairs. The
sparse form never leaves the device: its pattern comes from closed-form row counts (cumsum) and
a kernel that writes each row's keys. kernels/capture.py is the reference these are tested
against, and the entry point that calls them.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from kernels.layouts import Layout
from kernels.triton.common import (
    BAND_KEYS,
    KernelSpec,
    _fixed_summary_offsets,
    _in_band,
    _in_own_block,
    _key_range,
    _key_tile,
    _load_rows,
    _summary_tokens,
    dot_precision,
    kernel_spec,
)

# the capture kernels' tile (both sides): a tensor-core tile on a GPU, the smallest tl.dot
# operand under the interpreter, where the CPU runs it fastest
CAPTURE_TILE = 16 if os.environ.get("TRITON_INTERPRET") == "1" else 64

# how _walk_kernel walks a support (its PASS), the way the forward walks a layout
FIXED_WALK = tl.constexpr(0)  # a fixed support: the own block, then the summary prefix
BAND_WALK = tl.constexpr(1)  # a band support's band
# the band, pooled, P a multiple of the tile: key tiles start on multiples of BLOCK, so each lies
# in one P x P cell (one atomic per tile)
CELL_WALK = tl.constexpr(2)
COLUMN_WALK = tl.constexpr(3)  # the column part on the transposed sequence, a residue a row
# the column part, pooled, P dividing the step: a program takes the residues r0 .. r0 + P - 1,
# whose pairs (r + S t, r + S s) share the cell of (r0 + S t, r0 + S s), sums their tiles in
# registers and adds them with one atomic per (t, s)
GROUP_WALK = tl.constexpr(4)


@triton.jit
def _head_program(H, N, HEAD_DIM: tl.constexpr, PER_HEAD):
    """(axis-0 program id, head, offset of this (batch, head) in q/k, in lse, in an output of
    PER_HEAD elements per head) for the grid (., ., B * H) over contiguous tensors; 64-bit, as
    common._head_offsets says why."""
    bh = tl.program_id(2).to(tl.int64)
    return tl.program_id(0), bh % H, bh * N * HEAD_DIM, bh * N, bh * PER_HEAD


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
    Q, K, LSE, QUERIES, OUT,  # q, k [B, H, N, D], lse [B, H, N], out [B, H, Q, N], contiguous
    H, N, sm_scale, BAND, STEP, L, C, NUM_VERTS,
    FIXED: tl.constexpr, COLUMNS: tl.constexpr, HEAD_DIM: tl.constexpr, DOT: tl.constexpr,
    BLOCK_N: tl.constexpr,
):  # fmt: skip
    """Row r of OUT: the probabilities of query QUERIES[r] over all N keys, BLOCK_N at a time."""
    r, h, base, stats, out = _head_program(H, N, HEAD_DIM, tl.num_programs(0).to(tl.int64) * N)
    out += r.to(tl.int64) * N
    i = tl.load(QUERIES + r)
    offs_d = tl.arange(0, HEAD_DIM)
    q = tl.load(Q + base + i * HEAD_DIM + offs_d).to(tl.float32)
    lse = tl.load(LSE + stats + i)
    for start_n in range(0, N, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        col_ok = offs_n < N
        k = _load_rows(K, base, offs_n, offs_d, HEAD_DIM, col_ok).to(tl.float32)
        s = tl.sum(k * q[None, :], 1) * sm_scale
        ok = _allowed(i, offs_n, h, BAND, STEP, L, C, NUM_VERTS, FIXED, COLUMNS) & col_ok
        p = tl.where(ok, tl.exp(s - lse), 0.0)
        tl.store(OUT + out + offs_n, p, mask=col_ok)


# --- the sparse (CSR) form: the support's pattern built on the device, its values walked in the
# support's own tiles. A row's keys are sorted: for a band support its column keys
# j = i mod S, i mod S + S, ... (those below the band) then its band [max(0, i - B + 1), i]; for
# a fixed support the summary keys of earlier blocks then its own block up to i. Both ways round
# (rank -> key for the pattern, key -> rank for the values) are closed forms.


@triton.jit
def _support_key(i, p, BAND, STEP, L, C, FIXED: tl.constexpr, COLUMNS: tl.constexpr):
    """Key j of the p-th entry of row i of a support (a fixed one is head 0's: support_spec)."""
    if FIXED:
        n_summary = (i // L) * C
        first, _ = _fixed_summary_offsets(0, L, C, 1)
        return tl.where(
            p < n_summary, _summary_tokens(p, first, L, C), (i // L) * L + p - n_summary
        )
    else:
        n_cols = i * 0
        if COLUMNS:
            n_cols = i // STEP
        band_start = tl.maximum(i - BAND + 1, 0)
        return tl.where(p < n_cols, i % STEP + p * STEP, band_start + p - n_cols)


@triton.jit
def _support_rank(i, j, BAND, STEP, L, C, FIXED: tl.constexpr, COLUMNS: tl.constexpr):
    """Where the pair (i, j) of a support sits in row i: the inverse of _support_key."""
    if FIXED:
        own = (i // L) * L
        first, _ = _fixed_summary_offsets(0, L, C, 1)
        return tl.where(j >= own, (i // L) * C + j - own, (j // L) * C + j % L - first)
    else:
        n_cols = i * 0
        if COLUMNS:
            n_cols = i // STEP
        band_start = tl.maximum(i - BAND + 1, 0)
        return tl.where(j >= band_start, n_cols + j - band_start, j // STEP)


@triton.jit
def _support_indices_kernel(
    INDPTR, INDICES, BAND, STEP, L, C,
    FIXED: tl.constexpr, COLUMNS: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """Row i's sorted keys into INDICES[INDPTR[i]:INDPTR[i + 1]], BLOCK at a time."""
    i = tl.program_id(0).to(tl.int64)
    start = tl.load(INDPTR + i)
    count = tl.load(INDPTR + i + 1) - start
    for p0 in range(0, count, BLOCK):
        p = p0 + tl.arange(0, BLOCK)
        j = _support_key(i, p, BAND, STEP, L, C, FIXED, COLUMNS)
        tl.store(INDICES + start + p, j, mask=p < count)


@triton.jit
def _tile_probs(
    q, K, base, stats, LSE, rows, cols, row_ok, col_ok, pair, h, offs_d, sm_scale,
    BAND, STEP, L, C, NUM_VERTS, FIXED: tl.constexpr, COLUMNS: tl.constexpr,
    HEAD_DIM: tl.constexpr, DOT: tl.constexpr,
):  # fmt: skip
    """(probabilities under the layout of the pairs ``pair`` of query rows ``rows`` and keys
    ``cols``, 0 elsewhere; the pairs that are real) for a tensor-core tile."""
    k = _load_rows(K, base, cols, offs_d, HEAD_DIM, col_ok)
    s = tl.dot(q, tl.trans(k), input_precision=DOT) * sm_scale
    lse = tl.load(LSE + stats + rows, mask=row_ok, other=0.0)
    pair = pair & row_ok[:, None] & col_ok[None, :]
    ok = _allowed(rows[:, None], cols[None, :], h, BAND, STEP, L, C, NUM_VERTS, FIXED, COLUMNS)
    return tl.where(ok & pair, tl.exp(s - lse[:, None]), 0.0), pair


@triton.jit
def _emit_tile(
    p, pair, rows, cols, row_ok, OUT, OUT2, out, NB, P, S_BAND, S_STEP, S_L, S_C,
    S_FIXED: tl.constexpr, S_COLUMNS: tl.constexpr, POOLED: tl.constexpr, ONE_CELL: tl.constexpr,
):  # fmt: skip
    """Store the probabilities p of one tile's pairs: at their CSR places in OUT2 (OUT the
    indptr), or with POOLED added into OUT (mean) and maxed into OUT2 (max) at their P x P cells
    with atomics (a cell's pairs come from many programs): one atomic per tile where the whole
    tile lies in one cell (ONE_CELL), else one per pair; a row of the pooled map holds NB."""
    i, j = rows[:, None], cols[None, :]
    if POOLED:
        if ONE_CELL:
            cell = out + (tl.min(rows, 0) // P) * NB + tl.min(cols, 0) // P
            tl.atomic_add(OUT + cell, tl.sum(tl.sum(p, 1), 0))
            tl.atomic_max(OUT2 + cell, tl.max(tl.max(p, 1), 0))  # p >= 0; cells start at 0
        else:
            cell = out + (i // P) * NB + j // P
            tl.atomic_add(OUT + cell, p, mask=pair)
            tl.atomic_max(OUT2 + cell, p, mask=pair)
    else:
        start = tl.load(OUT + rows, mask=row_ok, other=0)
        rank = _support_rank(i, j, S_BAND, S_STEP, S_L, S_C, S_FIXED, S_COLUMNS)
        tl.store(OUT2 + out + start[:, None] + rank, p, mask=pair)


@triton.jit
def _walk_kernel(
    Q, K, LSE,  # q, k [B, H, N, D], lse [B, H, N], contiguous
    OUT, OUT2, PER_HEAD,  # (indptr [N + 1], values [B, H, PER_HEAD]), or (mean, max) [B, H, NB, NB]
    H, N, P, sm_scale,
    BAND, STEP, L, C, NUM_VERTS,  # the layout whose probabilities are written (KernelSpec)
    S_BAND, S_STEP, S_L, S_C,  # the support walked: its pairs are the ones written
    FIXED: tl.constexpr, COLUMNS: tl.constexpr, S_COLUMNS: tl.constexpr, POOLED: tl.constexpr,
    PASS: tl.constexpr, HEAD_DIM: tl.constexpr, DOT: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """One query tile's pairs of a support, walked as the forward walks a layout
    (common._key_range, _key_tile): a fixed support over the own block and then the gathered
    summary prefix, a band support in passes over strided runs (token = r + stride t; the band,
    then the column part on the transposed sequence). Each pair's probability is written once
    to its CSR place (a zero where the layout does not allow it), or with POOLED (the support is
    then the layout itself) summed and maxed into its P x P cell. PASS says which walk (the
    *_WALK constants); two of them spend fewer atomics than pairs."""
    pid_m, h, base, stats, out = _head_program(H, N, HEAD_DIM, PER_HEAD)
    offs_d = tl.arange(0, HEAD_DIM)
    start_m = pid_m * BLOCK
    offs_m = start_m + tl.arange(0, BLOCK)
    NB = tl.cdiv(N, P)
    if PASS == GROUP_WALK:
        r0 = tl.program_id(1) * P
        T0 = tl.cdiv(N - r0, S_STEP)  # the group's longest residue
        lo, hi = _key_range(start_m, T0, 1, tl.cdiv(N, S_STEP), 1, 1, BAND_KEYS, BLOCK)
        for start_n in range(lo, hi, BLOCK):
            offs_n = start_n + tl.arange(0, BLOCK)
            walked = _in_band(offs_m[:, None], offs_n[None, :], 1, tl.cdiv(N, S_STEP))
            total = tl.zeros([BLOCK, BLOCK], dtype=tl.float32)
            most = tl.zeros([BLOCK, BLOCK], dtype=tl.float32)
            for r in range(r0, r0 + P):
                T = tl.cdiv(N - r, S_STEP)
                row_ok = offs_m < T
                rows = r + offs_m * S_STEP
                q = _load_rows(Q, base, rows, offs_d, HEAD_DIM, row_ok)
                p, _ = _tile_probs(
                    q, K, base, stats, LSE, rows, r + offs_n * S_STEP, row_ok, offs_n < T,
                    walked, h, offs_d, sm_scale, BAND, STEP, L, C, NUM_VERTS, FIXED, COLUMNS,
                    HEAD_DIM, DOT,
                )  # fmt: skip
                total += p
                most = tl.maximum(most, p)
            cell = out + ((r0 + offs_m * S_STEP) // P)[:, None] * NB
            cell += ((r0 + offs_n * S_STEP) // P)[None, :]
            real = walked & (offs_m < T0)[:, None] & (offs_n < T0)[None, :]
            tl.atomic_add(OUT + cell, total, mask=real)
            tl.atomic_max(OUT2 + cell, most, mask=real)
    else:
        r = tl.program_id(1)  # the residue of a column pass; 0 otherwise
        if PASS == COLUMN_WALK:
            stride, lo_d, width = S_STEP, 1, tl.cdiv(N, S_STEP)  # s = t is the band's
        else:
            stride, lo_d, width = 1, 0, S_BAND
        T = tl.cdiv(N - r, stride)
        row_ok = offs_m < T
        rows = r + offs_m * stride
        q = _load_rows(Q, base, rows, offs_d, HEAD_DIM, row_ok)
        first, _ = _fixed_summary_offsets(0, S_L, S_C, 1)  # support_spec: head 0's offsets
        for part in tl.static_range(3):  # a fixed support's OWN_BLOCK, SUMMARY; else BAND_KEYS
            if (part == BAND_KEYS) != (PASS == FIXED_WALK):
                lo, hi = _key_range(start_m, T, lo_d, width, S_L, S_C, part, BLOCK)
                if PASS == CELL_WALK:
                    lo = (lo // BLOCK) * BLOCK  # tiles on multiples of BLOCK: each in one cell
                for start_n in range(lo, hi, BLOCK):
                    cols, col_ok, pair = _key_tile(
                        start_n, offs_m, hi, r, T, first, lo_d, width, stride, S_L, S_C, part,
                        BLOCK,
                    )  # fmt: skip
                    p, pair = _tile_probs(
                        q, K, base, stats, LSE, rows, cols, row_ok, col_ok, pair, h, offs_d,
                        sm_scale, BAND, STEP, L, C, NUM_VERTS, FIXED, COLUMNS, HEAD_DIM, DOT,
                    )  # fmt: skip
                    _emit_tile(
                        p, pair, rows, cols, row_ok, OUT, OUT2, out, NB, P, S_BAND, S_STEP, S_L,
                        S_C, PASS == FIXED_WALK, S_COLUMNS, POOLED, PASS == CELL_WALK,
                    )  # fmt: skip


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
    """Run a capture kernel: q, k, lse (made contiguous: the kernels compute their offsets from
    the shape), the kernel's ``own_args`` (its other arguments, in its order, on contiguous
    tensors), the layout, and ``meta`` (H, N, tile sizes)."""
    q, k, lse = q.contiguous(), k.contiguous(), lse.float().contiguous()
    kernel[grid](
        q, k, lse, *own_args,
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
        queries, out, spec=spec, scale=scale, H=H, N=N, BLOCK_N=64,
    )  # fmt: skip
    return out


def support_spec(support: Layout, n: int, n_heads: int) -> KernelSpec | None:
    """The spec of the union over ``n_heads`` heads of the support's pairs, or None when no
    kernel walks it (the caller builds the pattern on the host). fixed(l, c, k) over H heads
    uses the summary offsets of heads 0 .. min(H, k) - 1, together [l - min(H, k) c, l): the
    pattern of fixed(l, min(H, k) c)."""
    try:
        return union_over_heads(kernel_spec(support, n), n_heads)
    except ValueError:
        return None


def union_over_heads(spec: KernelSpec, n_heads: int) -> KernelSpec:
    """The spec whose pairs are the union of ``spec``'s over heads 0 .. n_heads - 1: itself,
    but for fixed(l, c, k > 1), whose heads' summary offsets together are [l - min(H, k) c, l)."""
    if spec.kind == "fixed" and spec.num_verts > 1:
        return KernelSpec("fixed", l=spec.l, c=spec.c * min(n_heads, spec.num_verts))
    return spec


def row_counts(spec: KernelSpec, n: int, device: torch.device | str) -> torch.Tensor:
    """Keys per row of a support spec in closed form, [N] int64 on ``device``:
    min(i + 1, band) + floor(i / step) for a band, (i mod l) + 1 + floor(i / l) c for fixed
    (docs/DESIGN.md, "Layouts": "Exact sizes without a mask")."""
    i = torch.arange(n, device=device)
    if spec.kind == "fixed":
        return i % spec.l + 1 + (i // spec.l) * spec.c
    counts = torch.clamp(i + 1, max=spec.band)
    return counts + i // spec.step if spec.columns else counts


@functools.lru_cache(maxsize=16)
def triton_support(
    spec: KernelSpec, n: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """CSR (indptr [N + 1], indices [nnz]) of a support spec, built on ``device``: indptr the
    cumulative sum of the closed-form row counts, indices written by a kernel. No host pass and
    no pattern anywhere but its output; cached per (spec, n, device), as every layer and image
    of a model shares it."""
    indptr = torch.zeros(n + 1, dtype=torch.int64, device=device)
    indptr[1:] = row_counts(spec, n, device).cumsum(0)
    nnz = int(indptr[-1])  # the one host sync: the size of the output
    indices = torch.empty(nnz, dtype=torch.int64, device=device)
    _support_indices_kernel[(n,)](
        indptr, indices, spec.band, spec.step or 1, spec.l, spec.c,
        FIXED=spec.kind == "fixed", COLUMNS=spec.columns, BLOCK=128,
    )  # fmt: skip
    return indptr, indices


def _walk(
    q: torch.Tensor,
    k: torch.Tensor,
    lse: torch.Tensor,
    spec: KernelSpec,
    support: KernelSpec,
    *outputs: torch.Tensor,
    pooled: int = 0,
    scale: float,
) -> None:
    """Launch _walk_kernel over the support's passes; ``outputs`` are (indptr, values) for the
    sparse form, (mean, max) for the pooled one (with ``pooled`` = P)."""
    B, H, N, D = q.shape
    per_head = outputs[1][0, 0].numel()  # values of a head, or cells of a pooled map
    if support.kind == "fixed":
        passes = [(FIXED_WALK, 1)]  # the own block, then the summaries: one walk
    else:
        # the band, with tiles in one cell when P is a multiple of the tile
        cells = bool(pooled) and pooled % CAPTURE_TILE == 0
        passes = [(CELL_WALK if cells else BAND_WALK, 1)]
        if support.columns:  # the columns, P residues per program when P divides the step
            grouped = bool(pooled) and support.step % pooled == 0
            passes.append((GROUP_WALK if grouped else COLUMN_WALK, support.step))
    for walk, stride in passes:
        programs = stride // pooled if walk == GROUP_WALK else stride
        grid = (triton.cdiv(triton.cdiv(N, stride), CAPTURE_TILE), programs, B * H)
        _launch(
            _walk_kernel, grid, q, k, lse, *outputs, per_head, spec=spec, scale=scale, H=H, N=N,
            P=max(pooled, 1), S_BAND=support.band, S_STEP=support.step or 1, S_L=support.l,
            S_C=support.c, S_COLUMNS=support.columns, POOLED=bool(pooled), PASS=walk.value,
            BLOCK=CAPTURE_TILE,
        )  # fmt: skip


def triton_sparse(
    q: torch.Tensor,
    k: torch.Tensor,
    lse: torch.Tensor,
    spec: KernelSpec,
    support: KernelSpec,
    indptr: torch.Tensor,
    nnz: int,
    *,
    scale: float,
) -> torch.Tensor:
    """The probabilities (under ``spec``) of the pairs of ``support``, in the CSR order of
    triton_support's pattern (indptr [N + 1]): [B, H, nnz] float32. Tensor-core tiles over the
    support's pairs only, as the forward walks a layout: about a forward without its P V product.
    """
    B, H, N, D = q.shape
    values = torch.empty(B, H, nnz, device=q.device, dtype=torch.float32)
    _walk(q, k, lse, spec, support, indptr, values, scale=scale)
    return values


def triton_pooled(
    q: torch.Tensor,
    k: torch.Tensor,
    lse: torch.Tensor,
    spec: KernelSpec,
    block: int,
    *,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, max) of every block x block tile of the probabilities, [B, H, nb, nb] float32,
    the mean over the tile's real entries: the layout's own pairs walked in tensor-core tiles
    (what the forward computes, without its P V product), each summed and maxed into its tile;
    tiles no pair reaches stay 0 (``support_spec`` gives the layout's union over heads)."""
    B, H, N, D = q.shape
    nb = triton.cdiv(N, block)
    mean = torch.zeros(B, H, nb, nb, device=q.device, dtype=torch.float32)
    mx = torch.zeros(B, H, nb, nb, device=q.device, dtype=torch.float32)
    _walk(q, k, lse, spec, union_over_heads(spec, H), mean, mx, pooled=block, scale=scale)
    sizes = torch.full((nb,), block, device=q.device, dtype=torch.float32)
    sizes[-1] = N - (nb - 1) * block  # the last row and column of tiles may be partial
    return mean / (sizes[:, None] * sizes[None, :]), mx
