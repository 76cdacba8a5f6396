"""Sparse attention composed from fused dense attention: O(N·√N) work on any machine.

The plan of docs/DESIGN.md, "Composing sparse attention from dense pieces", in plain PyTorch.
Each layout is split into pieces over disjoint key sets, each piece is ordinary dense attention
on some view of the sequence (torch's fused CPU kernel, which returns the log-sum-exp and has a
backward), and the pieces are merged exactly through their log-sum-exps:

    dense        one causal piece
    local(l)     block 0 against itself, causal; every later block of l queries against the
                 window of the block before and its own (2l keys, an overlapping view), query
                 a seeing window key e iff a < e <= a + l (i - j < l, causal)
    column(l)    the transposed sequence ([N/l, l] read as [l, N/l], a view): l residue
                 classes, each a causal run of length N/l (the key j = i included)
    strided(l)   local(l) + column with the key j = i left out (it is the band's)
    fixed(l, c)  own block, causal + summary: block b's queries against the summary keys of
                 blocks < b, gathered into one sequence (b * c keys; per head for num_verts > 1)
    axial(W)     the row so far (fixed's own block of W tokens, causal) + the column above (the
                 transposed view, the key j = i left out: it is the row's)
    dilated(w, r) column(r) where w * r >= N (every key of the residue class is within reach),
                 local(w) where r = 1; otherwise not composed (see composed_misfit)

Work: strided computes N·(2l + N/l) pairs (half the window masked), 3·N·√N at l = √N, instead
of dense's N²/2; fixed about its nnz (~ N² c / 2l). A tail shorter than l is padded with zeros
at the end: by causality a padded key is seen only by padded queries, which are dropped.

Backward: the gradients of a softmax over a union of key sets are the sums of each piece's
flash-attention backward run with the *merged* output and log-sum-exp (delta = rowsum(dO * O)
and exp(s - lse) are then the union's), so each piece's backward is the fused kernel's own.
The log-sum-exp returned is not differentiable (as for the Triton kernels).

``piece`` runs torch's fused CPU kernel on CPU tensors and an exact float32 matmul elsewhere
(CUDA tensors, where "auto" takes the Triton kernels anyway; ``_fused`` says which).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from kernels.layouts import (
    Axial,
    BigBird,
    BlockSparse,
    Column,
    Dense,
    Dilated,
    Fixed,
    Layout,
    Local,
    MultiHead,
    Neighborhood,
    Sinks,
    Strided,
    fixed_summary_offsets,
)

# "auto" takes this backend on the CPU from these sequence lengths on (below, torch's SDPA with
# the layout's mask is faster), per layout kind: data that `python -m tools.bench_kernels
# --device cpu --crossover` measures and writes (docs/BENCHMARKS.md, "Composed attention on the
# CPU"); dilated runs column's or local's pieces, so it takes strided's length
CROSSOVER_FILE = Path(__file__).with_name("crossover.json")
CROSSOVER_N: dict[str, int] = json.loads(CROSSOVER_FILE.read_text())

_FLASH_CPU = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_FLASH_CPU_BACKWARD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


def _fused(q: Tensor) -> bool:
    """Whether torch's fused CPU kernel runs a piece of q: CPU tensors of its dtypes (it has no
    float64); the rest get the exact float32 (or float64) matmul pieces."""
    return q.device.type == "cpu" and q.dtype != torch.float64


_COMPOSES = (
    "backend='composed' composes dense, local, column, strided, fixed and axial layouts, and "
    "dilated(w, r) where w * r >= N (column(r)) or r = 1 (local(w))"
)
# why each other static family stays on the masked path (SDPA with its mask on the CPU)
_NOT_COMPOSED = {
    Sinks: "its sink keys and its window overlap for the first s + w - 1 queries and the "
    "sinks are a few keys every query reads (a tiny piece per query): not built here",
    Neighborhood: "its 2-D window is clipped at the image's left and right edges, so no "
    "strided view of the sequence holds one query's keys as a dense run",
    BlockSparse: "its vertical-stride blocks differ from one query block to the next: a block "
    "mask (a block-sparse kernel's job), no dense view",
    BigBird: "its random blocks differ for every query block: a block mask (a block-sparse "
    "kernel's job), no dense view",
}


def composed_misfit(layout: Layout, n: int | None = None) -> str | None:
    """Why ``composed_attention`` cannot take ``layout`` (at length ``n`` where it depends on
    it: dilated), or None when it can. With ``n`` None, dilated fits only where it does at
    every length (w = 1 or r = 1)."""
    if isinstance(layout, (Dense, Local, Column, Strided, Fixed, Axial)):
        return None
    if isinstance(layout, Dilated):
        w, r = layout.w, layout.r
        if w == 1 or r == 1 or (n is not None and w * r >= n):
            return None
        at = "" if n is None else f" (N = {n})"
        return (
            f"{_COMPOSES}; {layout!r} has w * r = {w * r} < N{at}: a band of w keys on each "
            f"residue class mod r, which is not composed here (use backend='sdpa' or 'reference')"
        )
    if isinstance(layout, MultiHead):
        return (
            f"{_COMPOSES}; {layout!r} mixes patterns across heads "
            f"(use backend='sdpa' or 'reference')"
        )
    why = _NOT_COMPOSED.get(type(layout), "it is no layout the composed plan knows")
    return f"{_COMPOSES}; not {layout!r}: {why} (use backend='sdpa' or 'reference')"


def crossover(layout: Layout) -> int:
    """The sequence length from which "auto" prefers ``composed`` to the masked SDPA."""
    return CROSSOVER_N[type(layout).__name__.lower()]


# --- one piece: dense attention with its log-sum-exp, and its backward -------------------------


def _math_allowed(lq: int, lk: int, causal: bool, bias: Tensor | None, device) -> Tensor | None:
    if bias is not None:
        return (bias == 0).to(device)
    if causal:
        return torch.ones(lq, lk, dtype=torch.bool, device=device).tril()
    return None


def piece(
    q: Tensor, k: Tensor, v: Tensor, *, causal: bool, bias: Tensor | None, scale: float
) -> tuple[Tensor, Tensor]:
    """Dense attention of q [B, H', Lq, D] over k, v [B, H', Lk, D]: causal (query a sees keys
    c <= a), under an additive ``bias`` [Lq, Lk], or full. -> (out [B, H', Lq, D] in q's dtype,
    lse [B, H', Lq] float32). A row without keys (a bias row of -inf) gets out 0 and a
    meaningless lse: the caller knows those rows and sets their lse to -inf."""
    if _fused(q):
        out, lse = _FLASH_CPU(q, k, v, 0.0, causal, attn_mask=_cast(bias, q), scale=scale)
        return out, lse
    acc = torch.promote_types(q.dtype, torch.float32)
    s = torch.matmul(q.to(acc), k.to(acc).transpose(-2, -1)) * scale  # [B, H', Lq, Lk]
    allowed = _math_allowed(q.shape[2], k.shape[2], causal, bias, q.device)
    if allowed is not None:
        s = s.masked_fill(~allowed, -math.inf)
    lse = torch.logsumexp(s, dim=-1)  # [B, H', Lq]
    p = torch.exp(s - lse.masked_fill(lse == -math.inf, 0)[..., None])
    return torch.matmul(p, v.to(acc)).to(q.dtype), lse


def piece_backward(
    dout: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Tensor,
    *,
    causal: bool,
    bias: Tensor | None,
    scale: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """The flash-attention backward of ``piece`` run with the given (merged) out and lse:
    (dq, dk, dv) of this piece's keys' share of the union softmax. A row with lse = +inf takes
    no part (its probabilities are 0)."""
    if _fused(q):
        return _FLASH_CPU_BACKWARD(
            dout, q, k, v, out, lse, 0.0, causal, attn_mask=_cast(bias, q), scale=scale
        )
    acc = torch.promote_types(q.dtype, torch.float32)
    q, k, v, dout, out = (t.to(acc) for t in (q, k, v, dout, out))
    s = torch.matmul(q, k.transpose(-2, -1)) * scale  # [B, H', Lq, Lk]
    allowed = _math_allowed(q.shape[2], k.shape[2], causal, bias, q.device)
    if allowed is not None:
        s = s.masked_fill(~allowed, -math.inf)
    p = torch.exp(s - lse[..., None].to(acc))  # the union's probabilities of these keys
    dv = torch.matmul(p.transpose(-2, -1), dout)
    dp = torch.matmul(dout, v.transpose(-2, -1))
    delta = (dout * out).sum(-1, keepdim=True)  # [B, H', Lq, 1]
    ds = p * (dp - delta) * scale
    return torch.matmul(ds, k), torch.matmul(ds.transpose(-2, -1), q), dv


def _cast(bias: Tensor | None, q: Tensor) -> Tensor | None:
    return None if bias is None else bias.to(device=q.device, dtype=q.dtype)


# --- the pieces: views of the padded sequence [B, H, Np, X] ------------------------------------


@dataclass(frozen=True)
class _Piece:
    """One piece of a plan. ``frame`` names the order the piece reads the sequence in ("seq"
    [B, H, Np, X] as it is, "blocks" [B*H, T, l, X], "runs" [B*H, l, T, X]: see _framed);
    ``rows(x)`` views a frame as the piece's query sequences [B', H', L, X] and
    ``keys(x)`` as its key sequences (views, so that results are merged and gradients added
    through them in place; ``add_keys(dst, g)`` adds a key gradient where ``keys`` overlaps
    itself); ``causal`` or an additive ``bias`` [L, Lk] masks it (every query keeps at least
    one key: none of these pieces has an empty row); ``first``: the piece writes its rows
    instead of merging into them (it holds every query's own key)."""

    frame: str
    rows: Callable[[Tensor], Tensor]
    keys: Callable[[Tensor], Tensor]
    causal: bool
    bias: Tensor | None = None
    first: bool = False
    add_keys: Callable[[Tensor, Tensor], None] | None = None


def _all(x: Tensor) -> Tensor:
    return x


def _framed(x: Tensor, frame: str, l: int) -> Tensor:
    """A [B, H, T*l, X] tensor in a piece's frame (a view): "seq" as it is; "blocks"
    [B*H, T, l, X], block t of l tokens as head t of a batch row; "runs" [B*H, l, T, X],
    residue r's run of tokens r, r + l, r + 2l, ... as head r (the transposed sequence)."""
    if frame == "seq":
        return x
    B, H, n, X = x.shape
    blocks = x.view(B * H, n // l, l, X)
    return blocks if frame == "blocks" else blocks.transpose(1, 2)


def _windows(blocks: Tensor) -> Tensor:
    """[B', T, l, X] contiguous -> [B', T-1, 2l, X]: blocks t-1 and t side by side for each
    t >= 1, an overlapping view (no copy)."""
    Bp, T, l, X = blocks.shape
    return blocks.as_strided(
        (Bp, T - 1, 2 * l, X), (T * l * X, l * X, X, 1), blocks.storage_offset()
    )


def _add_windows(dst: Tensor, g: Tensor) -> None:
    """Add a gradient g [B', T-1, 2l, X] of _windows(dst)'s keys into dst [B', T, l, X]."""
    l = dst.shape[2]
    dst[:, :-1].add_(g[:, :, :l])
    dst[:, 1:].add_(g[:, :, l:])


def _band_pieces(l: int, T: int) -> list[_Piece]:
    """local(l): block 0 against itself, causal; each later block against the window of the
    block before and its own (2l keys), where query a sees window key e iff a < e <= a + l
    (i - j < l, causal)."""
    own0 = _Piece("blocks", lambda x: x[:, :1], lambda x: x[:, :1], causal=True, first=True)
    if T == 1 or l == 1:
        own = _Piece("blocks", _all, _all, causal=True, first=True)
        return [own]
    window = _Piece(
        "blocks", lambda x: x[:, 1:], _windows, causal=False, bias=_window_bias(l), first=True,
        add_keys=_add_windows,
    )  # fmt: skip
    return [own0, window]


def _column_piece(with_self: bool) -> _Piece:
    """Run position t of each residue against positions s < t (s <= t ``with_self``): with the
    queries shifted by one, plain causal attention over runs of equal length (torch's causal
    mask is top-left aligned)."""
    if with_self:
        return _Piece("runs", _all, _all, causal=True, first=True)
    return _Piece("runs", lambda x: x[:, :, 1:], lambda x: x[:, :, :-1], causal=True)


@functools.lru_cache(maxsize=64)
def _window_bias(l: int) -> Tensor:
    """The band's additive mask [l, 2l] over a window (previous block, own block): 0 where
    query a sees key e, a < e <= a + l, else -inf."""
    a, e = torch.arange(l)[:, None], torch.arange(2 * l)[None, :]
    return torch.zeros(l, 2 * l).masked_fill((e <= a) | (e > a + l), -math.inf)


@functools.lru_cache(maxsize=64)
def _group_bias(m: int, l: int, c: int) -> Tensor:
    """Within a chunk of m blocks, query a (block a // l) sees the summary keys of the chunk's
    earlier blocks: key e (block e // c) iff e // c < a // l. [m*l, m*c], 0 or -inf."""
    a, e = torch.arange(m * l)[:, None], torch.arange(m * c)[None, :]
    return torch.zeros(m * l, m * c).masked_fill(e // c >= a // l, -math.inf)


# --- the plans ---------------------------------------------------------------------------------


class _Plan:
    """The pieces of one layout at length n, over the sequence padded to ``n_pad``; ``forward``
    gives (out, lse), ``backward`` (dq, dk, dv), both walking the same pieces. Fixed's summary
    keys are gathered into one sequence [B, H, Tp * c, D] (block t's c keys at t*c..) and
    walked in chunks of m blocks: a chunk's queries see every summary key of the blocks before
    the chunk (a full piece, one call per chunk) and those of the chunk's own earlier blocks
    (one masked call for all chunks at once)."""

    def __init__(self, layout: Layout, n: int, n_heads: int, scale: float) -> None:
        self.kind, self.l = _reduced(layout, n)
        self.layout = layout
        blocks = -(-n // self.l)  # T
        self.chunk = _chunk_blocks(blocks) if self.kind == "fixed" else 1  # m
        self.blocks = -(-blocks // self.chunk) * self.chunk  # Tp: whole chunks
        self.n_pad = self.blocks * self.l
        self.n_heads = n_heads
        self.scale = scale

    def pieces(self) -> list[_Piece]:
        kind, l, T = self.kind, self.l, self.blocks
        if kind == "dense":
            return [_Piece("seq", _all, _all, causal=True, first=True)]
        if kind == "self":  # the key j = i alone: blocks of one token
            return [_Piece("blocks", _all, _all, causal=True, first=True)]
        if kind == "column":
            return [_column_piece(with_self=True)]
        if kind == "axial":  # the row so far + the column above (its key j = i is the row's)
            own = _Piece("blocks", _all, _all, causal=True, first=True)
            return [own] + ([_column_piece(with_self=False)] if T > 1 else [])
        band = _band_pieces(l, T)
        if kind == "local":
            return band
        if kind == "strided":
            return band + ([_column_piece(with_self=False)] if T > 1 else [])
        return [_Piece("blocks", _all, _all, causal=True, first=True)]  # fixed's own block

    def framed(self, x: Tensor, frame: str) -> Tensor:
        """x [B, H, Np, X] in a piece's frame, a view (see _framed)."""
        return _framed(x, frame, self.l)

    def inputs(self, frame: str, *xs: Tensor) -> tuple[Tensor, ...]:
        """xs in a frame, as views: the fused kernel reads the transposed "runs" view directly
        (measured: a contiguous copy of each input costs more than it saves, forward and
        backward, N = 1,024..16,384)."""
        return tuple(self.framed(x, frame) for x in xs)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        acc = torch.promote_types(q.dtype, torch.float32)
        out = torch.empty(q.shape, dtype=acc, device=q.device)
        lse = torch.empty(q.shape[:3], dtype=acc, device=q.device)
        framed: dict[str, tuple[Tensor, ...]] = {}
        for p in self.pieces():
            if p.frame not in framed:
                framed[p.frame] = self.inputs(p.frame, q, k, v)
            qf, kf, vf = framed[p.frame]
            o, lse_p = piece(
                p.rows(qf), p.keys(kf), p.keys(vf), causal=p.causal, bias=p.bias, scale=self.scale
            )
            rows_lse = p.rows(self.framed(lse.unsqueeze(-1), p.frame))[..., 0]
            _merge_into(p.rows(self.framed(out, p.frame)), rows_lse, o, lse_p, p.first)
        if self.kind == "fixed" and self.blocks > 1:
            self._summary(q, k, v, out, lse)
        return out.to(q.dtype), lse

    def backward(
        self, dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        acc = torch.promote_types(q.dtype, torch.float32)
        dq, dk, dv = (torch.zeros(q.shape, dtype=acc, device=q.device) for _ in range(3))
        framed: dict[str, tuple[Tensor, ...]] = {}
        for p in self.pieces():
            if p.frame not in framed:
                framed[p.frame] = self.inputs(p.frame, dout, q, k, v, out, lse.unsqueeze(-1))
            dout_f, qf, kf, vf, out_f, lse_f = framed[p.frame]
            gq, gk, gv = piece_backward(
                p.rows(dout_f), p.rows(qf), p.keys(kf), p.keys(vf), p.rows(out_f),
                p.rows(lse_f)[..., 0], causal=p.causal, bias=p.bias, scale=self.scale,
            )  # fmt: skip
            p.rows(self.framed(dq, p.frame)).add_(gq)
            for dst, g in ((dk, gk), (dv, gv)):
                if p.add_keys is not None:
                    p.add_keys(self.framed(dst, p.frame), g)
                else:
                    p.keys(self.framed(dst, p.frame)).add_(g)
        if self.kind == "fixed" and self.blocks > 1:
            self._summary(q, k, v, out, lse, grads=(dout, dq, dk, dv))
        return dq, dk, dv

    def _summary(
        self, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, grads=None
    ) -> None:
        """Fixed's summary keys: merged into (out, lse) in the forward; with ``grads`` =
        (dout, dq, dk, dv) their gradients added in the backward (out, lse: the merged ones)."""
        l, c, m, T = self.l, self.layout.c, self.chunk, self.blocks
        BH, D = q.shape[0] * q.shape[1], q.shape[-1]
        idx = _summary_index(self.layout, T, self.n_heads, q.device)  # [H, Tp * c]
        kg, vg = _gather(k, idx), _gather(v, idx)  # [B, H, Tp * c, D]
        if grads is not None:  # the gathered keys' gradients, added to dk, dv at the end
            dkg, dvg = (torch.zeros_like(kg, dtype=grads[1].dtype) for _ in range(2))

        def chunks(x: Tensor, per: int) -> Tensor:  # [B, H, Tp*per, X] -> [B*H, Tp/m, m*per, X]
            return x.view(BH, T // m, m * per, x.shape[-1])

        # (query rows, key rows, bias) of each call, as views
        calls = []
        if m > 1:  # within each chunk: its earlier blocks' summary keys
            calls.append((lambda x: chunks(x, l), lambda x: chunks(x, c), _group_bias(m, l, c)))
        for j in range(1, T // m):  # chunk j: the summary keys of every block before it
            rows = slice(j * m * l, (j + 1) * m * l)
            calls.append(
                (lambda x, rows=rows: x[:, :, rows], lambda x, j=j: x[:, :, : j * m * c], None)
            )
        for rows, keys, bias in calls:
            if grads is None:
                o, lse_p = piece(
                    rows(q), keys(kg), keys(vg), causal=False, bias=bias, scale=self.scale
                )
                if bias is not None:  # the first block of a chunk has no earlier block in it
                    lse_p[..., :l] = -math.inf
                _merge_into(rows(out), rows(lse.unsqueeze(-1))[..., 0], o, lse_p, False)
                continue
            dout, dq, _, _ = grads
            gq, gk, gv = piece_backward(
                rows(dout), rows(q), keys(kg), keys(vg), rows(out), rows(lse.unsqueeze(-1))[..., 0],
                causal=False, bias=bias, scale=self.scale,
            )  # fmt: skip
            rows(dq).add_(gq)
            keys(dkg).add_(gk)
            keys(dvg).add_(gv)
        if grads is not None:
            _, _, dk, dv = grads
            index = idx[None, :, :, None].expand(q.shape[0], -1, -1, D)
            dk.scatter_add_(2, index, dkg)  # each summary position once: a plain add
            dv.scatter_add_(2, index, dvg)


def _chunk_blocks(blocks: int) -> int:
    """Fixed's chunk of m ~ sqrt(T) blocks (about sqrt(T) calls of about N/sqrt(T) queries each):
    a divisor of T where one is near, so that no padding to whole chunks is copied."""
    root = math.sqrt(blocks)
    near = min((d for d in range(1, blocks + 1) if blocks % d == 0), key=lambda d: abs(d - root))
    return near if near >= root / 2 else max(1, round(root))


def _merge_into(out: Tensor, lse: Tensor, o: Tensor, lse_p: Tensor, first: bool) -> None:
    """Merge a piece's (o, lse_p) into the running (out, lse) of the same rows, in place: the
    softmax over the union of disjoint key sets, lse = log(e^lse + e^lse_p) and
    out = out e^(lse_old - lse) + o e^(lse_p - lse). ``first`` writes them instead."""
    if first:
        out.copy_(o)
        lse.copy_(lse_p)
        return
    new = torch.logaddexp(lse, lse_p)
    out.mul_(torch.exp(lse - new).unsqueeze(-1)).addcmul_(o, torch.exp(lse_p - new).unsqueeze(-1))
    lse.copy_(new)


def _reduced(layout: Layout, n: int) -> tuple[str, int]:
    """(kind, l): the pieces a layout needs at length n, after the cases that are simpler
    layouts in disguise (a window or a block of l >= n keys holds every earlier key: dense; a
    column of step 1, and fixed(1, 1), are dense; a window of 1 or a column of step >= n is the
    key j = i alone; axial of width >= n is its first row, of width 1 its column: dense; dilated
    is local(w) at r = 1 and column(r) where w * r >= n)."""
    if isinstance(layout, Dense):
        return "dense", 1
    if isinstance(layout, Dilated):
        w, r = layout.w, layout.r
        if w == 1:
            return "self", 1
        return _reduced(Local(w) if r == 1 else Column(r), n)
    if isinstance(layout, Axial):
        return ("dense", 1) if layout.width >= n or layout.width == 1 else ("axial", layout.width)
    l = layout.l
    if isinstance(layout, (Local, Strided, Fixed)) and l >= n:
        return "dense", 1
    if isinstance(layout, (Column, Strided, Fixed)) and l == 1:
        return "dense", 1
    if isinstance(layout, Local) and l == 1 or isinstance(layout, Column) and l >= n:
        return "self", 1
    return type(layout).__name__.lower(), l


def _summary_index(layout: Fixed, T: int, n_heads: int, device) -> Tensor:
    """Token positions of the summary keys of blocks 0..T-1, per head: [H, T * c]."""
    lo, _ = fixed_summary_offsets(torch.arange(n_heads), layout.l, layout.c, layout.num_verts)
    offsets = lo[:, None] + torch.arange(layout.c)  # [H, c]
    starts = torch.arange(T) * layout.l  # [T]
    return (starts[None, :, None] + offsets[:, None, :]).reshape(n_heads, -1).to(device)


def _gather(x: Tensor, idx: Tensor) -> Tensor:
    """x [B, H, N, D] at per-head positions idx [H, G] -> [B, H, G, D]."""
    B, H, _, D = x.shape
    return x.gather(2, idx[None, :, :, None].expand(B, H, -1, D))


class _ComposedFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, plan: _Plan):  # noqa: ANN205
        out, lse = plan.forward(q, k, v)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.plan = plan
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout: Tensor, _dlse: Tensor):  # noqa: ANN205
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = ctx.plan.backward(dout.contiguous(), q, k, v, out, lse)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None


def composed_attention(
    q: Tensor, k: Tensor, v: Tensor, layout: Layout, *, scale: float
) -> tuple[Tensor, Tensor]:
    """Exact attention of q, k, v [B, H, N, D] under ``layout`` from dense pieces:
    (out [B, H, N, D], lse [B, H, N] float32). kernels.dispatch.attention checks the inputs
    and calls this for backend="composed"; ValueError names a layout it cannot compose."""
    B, H, N, D = q.shape
    misfit = composed_misfit(layout, N)
    if misfit is not None:
        raise ValueError(misfit)
    plan = _Plan(layout, N, H, scale)
    pad = plan.n_pad - N
    # contiguous [B, H, Np, D] tensors: the block views need them (the model's q, k, v are
    # strided slices of one projection: one copy each; contiguous inputs of a multiple of l:
    # none)
    q, k, v = ((F.pad(t, (0, 0, 0, pad)) if pad else t).contiguous() for t in (q, k, v))
    out, lse = _ComposedFunction.apply(q, k, v, plan)
    return out[:, :, :N], lse[:, :, :N]
