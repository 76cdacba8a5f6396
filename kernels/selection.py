"""Content-based selections: attention that keeps, for each query, the keys its scores choose.

A static layout (kernels/layouts.py) knows its pairs before the run; these do not, so they have
no ``mask_mod`` and no precomputed mask. They run as exact masked attention: the scores are
computed, the selection is made from them, and the softmax is taken over the kept keys alone
(renormalised), which is what "restrict a trained model's attention to k keys" means.

    topk(k)          each query keeps its k highest-scoring causal keys (all of them where it
                     has fewer than k): the oracle upper bound of any k-key layout
    moba(block, k)   MoBA (Lu et al. 2025): keys in blocks of ``block``; each complete past
                     block is scored by the gate q . mean(K_block); the query keeps its own
                     block (causal inside it) and the k - 1 best past blocks, k blocks in all

Both are causal (a key after the query is never kept) and keep the query's own key, so no row is
empty. Specs read and write like layouts' ("topk(k=8)", "moba(block=28, topk=3)");
``parse_attention`` takes either kind.

The work is O(N^2) per head (every score is needed to choose), so this is the path at the
model's size (N <= 4,096), not a fast kernel.
"""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor

from kernels.layouts import Layout, _check_int, call_spec, parse_layout


class Selection:
    """Base of the content-based selections: a spec, and the mask it chooses from the scores."""

    period: int = 1  # the same rule in every head

    @property
    def family(self) -> str:
        return type(self).__name__.lower()

    @property
    def name(self) -> str:
        return repr(self)

    def __repr__(self) -> str:
        args = ", ".join(f"{f.name}={getattr(self, f.name)}" for f in fields(self))  # type: ignore[arg-type]
        return f"{self.family}({args})"

    def check_heads(self, n_heads: int) -> None:
        """Every number of heads works (the rule is the same in each)."""

    def keys_per_query(self, n: int) -> float:
        """Mean number of keys a query keeps over a sequence of n tokens (exact)."""
        return self.nnz(n) / n

    def density(self, n: int) -> float:
        """Kept pairs as a share of the n(n+1)/2 causal pairs."""
        return self.nnz(n) / (n * (n + 1) / 2)

    def nnz(self, n: int, n_heads: int = 1) -> int:
        """Exact number of kept (head, i, j) triples: it depends only on n, not on the scores."""
        raise NotImplementedError

    def allowed(self, scores: Tensor, q: Tensor, k: Tensor, positions: Tensor) -> Tensor:
        """bool [B, H, Q, N]: the keys kept by queries at ``positions`` [Q] whose causal scores
        are ``scores`` [B, H, Q, N] (-inf after the query), from q [B, H, Q, D], k [B, H, N, D]."""
        raise NotImplementedError

    def restrict(self, scores: Tensor, q: Tensor, k: Tensor, positions: Tensor) -> Tensor:
        """``scores`` with -inf where a key is not kept (in place where it can be)."""
        return scores.masked_fill_(~self.allowed(scores, q, k, positions), -math.inf)


@dataclass(frozen=True, repr=False)
class TopK(Selection):
    """Each query keeps its k highest-scoring causal keys."""

    k: int

    def __post_init__(self) -> None:
        _check_int("topk: k", self.k, 1)

    def nnz(self, n: int, n_heads: int = 1) -> int:
        # row i keeps min(k, i + 1) keys
        m = min(n, self.k)
        return n_heads * (m * (m + 1) // 2 + (n - m) * self.k)

    def allowed(self, scores: Tensor, q: Tensor, k: Tensor, positions: Tensor) -> Tensor:
        # at or above the row's k-th largest score (a row with fewer than k causal keys has
        # -inf there and keeps them all); an exact tie with the k-th score keeps both
        kth = scores.topk(min(self.k, scores.shape[-1]), dim=-1).values[..., -1:]
        return (scores >= kth) & (scores > -math.inf)

    def restrict(self, scores: Tensor, q: Tensor, k: Tensor, positions: Tensor) -> Tensor:
        kth = scores.topk(min(self.k, scores.shape[-1]), dim=-1).values[..., -1:]
        return scores.masked_fill_(scores < kth, -math.inf)


@dataclass(frozen=True, repr=False)
class MoBA(Selection):
    """MoBA's block selection: own block + the topk - 1 past blocks with the highest gate."""

    block: int
    topk: int

    def __post_init__(self) -> None:
        _check_int("moba: block", self.block, 1)
        _check_int("moba: topk", self.topk, 1)

    def nnz(self, n: int, n_heads: int = 1) -> int:
        # query i in block u keeps its i mod block + 1 own keys and min(topk - 1, u) full blocks
        total = 0
        for u in range(-(-n // self.block)):
            rows = min(self.block, n - u * self.block)
            total += rows * (rows + 1) // 2 + rows * self.block * min(self.topk - 1, u)
        return n_heads * total

    def blocks(self, q: Tensor, k: Tensor, positions: Tensor) -> Tensor:
        """bool [B, H, Q, nb]: the key blocks (of ``block`` keys, nb = ceil(N / block)) that
        queries q [B, H, Q, D] at ``positions`` keep over keys k [B, H, N, D]: their own block
        and the topk - 1 complete past blocks with the highest gate q . mean(K_block)."""
        B, H, N, D = k.shape
        b = self.block
        nb = -(-N // b)
        # the mean key of every block: [B, H, N, D] -> zero-padded [B, H, nb, b, D] -> [B, H, nb, D]
        padded = F.pad(k, (0, 0, 0, nb * b - N)).view(B, H, nb, b, D)
        counts = torch.full((nb,), b, device=k.device, dtype=k.dtype)
        counts[-1] = N - (nb - 1) * b
        means = padded.sum(3) / counts[:, None]  # [B, H, nb, D]
        gate = torch.matmul(q, means.transpose(-2, -1))  # [B, H, Q, nb]
        own = (positions // b).to(k.device)  # [Q]
        block_ids = torch.arange(nb, device=k.device)[None, :]
        past = block_ids < own[:, None]  # [Q, nb]
        gate = gate.masked_fill(~past, -math.inf)
        chosen = torch.zeros_like(gate, dtype=torch.bool)
        if self.topk > 1 and nb > 1:
            top = gate.topk(min(self.topk - 1, nb), dim=-1).indices  # [B, H, Q, k-1]
            chosen.scatter_(-1, top, True)
            chosen &= past  # fewer past blocks than topk - 1: the -inf picks are dropped
        return chosen | (block_ids == own[:, None])

    def allowed(self, scores: Tensor, q: Tensor, k: Tensor, positions: Tensor) -> Tensor:
        B, H, Q, N = scores.shape
        chosen = self.blocks(q, k, positions)  # [B, H, Q, nb]
        key_block = torch.arange(N, device=k.device) // self.block  # [N]
        kept = chosen.gather(-1, key_block.expand(B, H, Q, N))  # [B, H, Q, N]
        return kept & (scores > -math.inf)


_SELECTIONS = {"topk": TopK, "moba": MoBA}


def topk(k: int) -> TopK:
    return TopK(k)


def moba(block: int, topk: int) -> MoBA:
    return MoBA(block, topk)


Attention = Layout | Selection  # what a layer may attend with


def parse_attention(spec: str | Attention) -> Attention:
    """A static layout spec (kernels.layouts.parse_layout) or a selection's: "topk(k=8)",
    "moba(block=28, topk=3)". Parsed with ``ast``, never evaluated; ValueError says what is
    allowed."""
    if isinstance(spec, (Layout, Selection)):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"an attention spec must be a non-empty string, got {spec!r}")
    try:
        node = ast.parse(spec.strip(), mode="eval").body
    except SyntaxError:
        node = None
    name = node.func.id if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) else None
    if name not in _SELECTIONS:
        return parse_layout(spec)
    help_ = "expected topk(k=K) or moba(block=B, topk=K), integer arguments"
    return call_spec(node, spec, _SELECTIONS[name], "selection", help_)


def _causal_scores(q: Tensor, k: Tensor, positions: Tensor, scale: float) -> Tensor:
    acc = torch.promote_types(q.dtype, torch.float32)
    scores = torch.matmul(q.to(acc), k.to(acc).transpose(-2, -1)).mul_(scale)  # [B, H, Q, N]
    future = torch.arange(k.shape[2], device=q.device)[None, :] > positions.to(q.device)[:, None]
    return scores.masked_fill_(future, -math.inf)


# scores held at once by selection_attention: 2**26 floats (256 MiB), e.g. 32 images x 4 heads x
# all 784 queries of a 28 x 28 image (one pass over the rows measured 5x faster than blocks of
# 256 rows on the 2-core CPU: fewer, larger matmuls and one top-k call)
MAX_SCORES = 1 << 26


def selection_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    selection: Selection,
    *,
    positions: Tensor | None = None,
    scale: float | None = None,
    return_lse: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Exact attention of queries q [B, H, Q, D] at ``positions`` [Q] (default 0..Q-1) over
    k, v [B, H, N, D], restricted to the keys ``selection`` keeps and renormalised over them:
    out [B, H, Q, D] in q's dtype, and with ``return_lse`` lse [B, H, Q] (float32, float64 for
    float64 inputs). Walks the queries in blocks of at most MAX_SCORES scores."""
    B, H, Q, D = q.shape
    N = k.shape[2]
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    positions = torch.arange(Q) if positions is None else torch.as_tensor(positions).flatten()
    acc = torch.promote_types(q.dtype, torch.float32)
    rows = max(1, MAX_SCORES // (B * H * N))
    outs, lses = [], []
    for s in range(0, Q, rows):
        qs, pos = q[:, :, s : s + rows], positions[s : s + rows]
        scores = _causal_scores(qs, k, pos, scale)  # [B, H, r, N]
        scores = selection.restrict(scores, qs, k, pos.to(q.device))
        if return_lse:  # before softmax, which may reuse the scores' memory
            lses.append(torch.logsumexp(scores, dim=-1))  # [B, H, r]
        probs = torch.softmax(scores, dim=-1)  # fused: ~3x faster than exp(scores - lse)
        outs.append(torch.matmul(probs, v.to(acc)).to(q.dtype))
    out = torch.cat(outs, dim=2)
    return (out, torch.cat(lses, dim=2)) if return_lse else out


def selection_probs(
    q: Tensor, k: Tensor, selection: Selection, positions: Tensor, scale: float | None = None
) -> Tensor:
    """The attention probabilities [B, H, Q, N] of the queries at ``positions`` (q [B, H, N, D]
    holds every position) under ``selection``: what kernels/capture.py draws."""
    D = q.shape[-1]
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    positions = torch.as_tensor(positions).flatten()
    qs = q[:, :, positions.to(q.device)]
    scores = _causal_scores(qs, k, positions, scale)
    kept = selection.allowed(scores, qs, k, positions.to(q.device))
    return torch.softmax(scores.masked_fill(~kept, -math.inf), dim=-1)
