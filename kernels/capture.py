"""Attention probabilities in the forms a person can look at, without an N x N matrix.

The four forms of docs/DESIGN.md, "Capture without an N x N matrix", for q, k of shape
[B, H, N, D] and the layout they attend with:

    FullMap     probs [B, H, N, N]                      only where N <= MAX_FULL_N
    Rows        probs [B, H, Q, N] of chosen queries    a clicked pixel
    PooledMap   mean and max of every P x P tile        an overview at any N
    SparseMap   the probability of every pair of a support layout, in CSR form

The reference path here is exact, in plain PyTorch, walking over blocks of query rows so that
memory is O(rows x N) per block and O(output) overall (the full map excepted). ``backend`` means
what it means for kernels.dispatch.attention: where that resolves to "triton" (CUDA tensors and
a kernel for the layout under "auto"; also under TRITON_INTERPRET=1 when asked for) the fused
kernels compute the same forms from their forward pass's log-sum-exp (kernels/triton/capture.py);
"reference" and "sdpa" take the plain walk here.

``support`` for the sparse form may differ from the attention layout: the probabilities of a
dense model stored on the pairs of strided(l) are exactly what "how much of this head does
strided cover" needs.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from kernels.dispatch import attention, resolve_backend
from kernels.layouts import Layout
from kernels.selection import Selection, selection_probs

if TYPE_CHECKING:
    from kernels.triton.common import KernelSpec

MAX_FULL_N = 4096  # a full float32 map is 64 MiB per head here
ROW_BLOCK = 256  # query rows per step of the reference walk


def to_device(form: CaptureForm, device: torch.device | str) -> CaptureForm:
    """The same capture with every tensor on ``device`` (e.g. back to where the tokens were)."""
    moved = {
        f.name: getattr(form, f.name).to(device)
        for f in fields(form)
        if isinstance(getattr(form, f.name), Tensor)
    }
    return replace(form, **moved)


@dataclass
class FullMap:
    probs: Tensor  # [B, H, N, N]

    def select(self, heads: list[int]) -> FullMap:
        return FullMap(self.probs[:, heads])


@dataclass
class Rows:
    queries: Tensor  # [Q] query positions
    probs: Tensor  # [B, H, Q, N]

    def select(self, heads: list[int]) -> Rows:
        return Rows(self.queries, self.probs[:, heads])


@dataclass
class PooledMap:
    block: int
    n: int
    mean: Tensor  # [B, H, nb, nb]: the mean over the tile's real (unpadded) entries
    max: Tensor  # [B, H, nb, nb]

    def select(self, heads: list[int]) -> PooledMap:
        return PooledMap(self.block, self.n, self.mean[:, heads], self.max[:, heads])


@dataclass
class SparseMap:
    """CSR over the support's pairs: row i's keys are indices[indptr[i]:indptr[i+1]] (sorted)
    and their probabilities values[..., indptr[i]:indptr[i+1]]. For per-head supports the
    pattern is the union over heads, with zeros where a head's support has no pair."""

    n: int
    support: str  # the support layout's spec
    indptr: Tensor  # [N + 1]
    indices: Tensor  # [nnz]
    values: Tensor  # [B, H, nnz]

    def select(self, heads: list[int]) -> SparseMap:
        return SparseMap(self.n, self.support, self.indptr, self.indices, self.values[:, heads])

    def to_dense(self) -> Tensor:
        """[B, H, N, N]; for small N (tests, exports)."""
        B, H, _ = self.values.shape
        rows = torch.repeat_interleave(
            torch.arange(self.n, device=self.indptr.device), self.indptr.diff()
        )  # [nnz]
        out = self.values.new_zeros(B, H, self.n, self.n)
        out[:, :, rows, self.indices] = self.values
        return out


def _dtype(q: Tensor) -> torch.dtype:
    return torch.promote_types(q.dtype, torch.float32)


def _heads_mask(layout: Layout, h: Tensor, i: Tensor, j: Tensor) -> Tensor:
    return layout.mask_mod(torch.zeros((), dtype=torch.long), h, i, j)


def row_probs(
    q: Tensor, k: Tensor, layout: Layout | Selection, queries: Tensor, scale: float | None = None
) -> Tensor:
    """Exact attention probabilities of the given query rows: [B, H, Q, N], float32 (float64
    for float64 inputs). A selection (kernels/selection.py) chooses its keys from the scores."""
    B, H, N, D = q.shape
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    if isinstance(layout, Selection):
        return selection_probs(q, k, layout, queries, scale)
    queries = queries.to(q.device)
    dt = _dtype(q)
    scores = torch.matmul(q[:, :, queries].to(dt), k.to(dt).transpose(-2, -1)) * scale
    h = torch.arange(H, device=q.device)[:, None, None]
    allowed = _heads_mask(layout, h, queries[None, :, None], torch.arange(N, device=q.device))
    scores = scores.masked_fill(~allowed, float("-inf"))  # [B, H, Q, N]
    return torch.softmax(scores, dim=-1)


def _row_blocks(
    q: Tensor, k: Tensor, layout: Layout, scale: float | None, rows: int
) -> Iterator[tuple[int, Tensor]]:
    """(first row, probs [B, H, r, N]) for consecutive blocks of r query rows."""
    N = q.shape[2]
    for s in range(0, N, rows):
        yield s, row_probs(q, k, layout, torch.arange(s, min(s + rows, N)), scale)


def _fused(
    q: Tensor, k: Tensor, layout: Layout, scale: float | None, backend: str
) -> tuple[KernelSpec, Tensor, float] | None:
    """(kernel spec, the forward's log-sum-exp, scale) when the fused kernels take this
    capture, else None (the reference walk)."""
    if isinstance(layout, Selection) or resolve_backend(q, layout, backend) != "triton":
        return None
    from kernels.triton.common import kernel_spec

    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    _, lse = attention(q, k, k, layout, scale=scale, return_lse=True, backend="triton")
    return kernel_spec(layout, q.shape[2]), lse, scale


def capture_full(
    q: Tensor, k: Tensor, layout: Layout, scale: float | None = None, backend: str = "auto"
) -> FullMap:
    N = q.shape[2]
    if N > MAX_FULL_N:
        raise ValueError(
            f"a full map at N = {N} would be {N * N * 4 / 2**20:.0f} MiB per head; full maps are "
            f"for N <= {MAX_FULL_N}: use the rows, pooled or sparse forms"
        )
    fused = _fused(q, k, layout, scale, backend)
    if fused is not None:
        from kernels.triton.capture import triton_rows

        spec, lse, scale = fused
        return FullMap(triton_rows(q, k, lse, spec, torch.arange(N), scale=scale))
    return FullMap(torch.cat([p for _, p in _row_blocks(q, k, layout, scale, ROW_BLOCK)], dim=2))


def capture_rows(
    q: Tensor,
    k: Tensor,
    layout: Layout,
    queries,
    scale: float | None = None,
    backend: str = "auto",
) -> Rows:
    N = q.shape[2]
    queries = torch.as_tensor(queries, dtype=torch.long).flatten()
    if len(queries) and (queries.min() < 0 or queries.max() >= N):
        raise ValueError(f"query positions must be in 0..{N - 1}, got {queries.tolist()}")
    fused = _fused(q, k, layout, scale, backend)
    if fused is not None:
        from kernels.triton.capture import triton_rows

        spec, lse, scale = fused
        return Rows(queries, triton_rows(q, k, lse, spec, queries, scale=scale))
    return Rows(queries, row_probs(q, k, layout, queries, scale))


def capture_pooled(
    q: Tensor,
    k: Tensor,
    layout: Layout,
    block: int,
    scale: float | None = None,
    backend: str = "auto",
) -> PooledMap:
    if block < 1:
        raise ValueError(f"pooling block must be >= 1, got {block}")
    B, H, N, _ = q.shape
    if not isinstance(layout, Selection) and resolve_backend(q, layout, backend) == "triton":
        scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
        _, lse = attention(q, k, k, layout, scale=scale, return_lse=True, backend="triton")
        return _triton_pooled(q, k, lse, layout, block, scale)
    nb = -(-N // block)
    pad = nb * block - N
    # tile sizes, for the mean over real entries of the partial last row/column of tiles
    sizes = torch.full((nb,), block, dtype=_dtype(q), device=q.device)
    sizes[-1] = block - pad
    mean = q.new_zeros(B, H, nb, nb, dtype=_dtype(q))
    mx = q.new_zeros(B, H, nb, nb, dtype=_dtype(q))
    rows = block * max(1, ROW_BLOCK // block)
    for s, p in _row_blocks(q, k, layout, scale, rows):
        r = p.shape[2]
        p = torch.nn.functional.pad(p, (0, pad, 0, -r % block))  # [B, H, r', nb*block]
        tiles = p.view(B, H, p.shape[2] // block, block, nb, block)
        t0 = s // block
        mean[:, :, t0 : t0 + tiles.shape[2]] = tiles.sum(dim=(3, 5))
        mx[:, :, t0 : t0 + tiles.shape[2]] = tiles.amax(dim=(3, 5))
    mean /= sizes[:, None] * sizes[None, :]
    return PooledMap(block, N, mean, mx)


def _triton_pooled(
    q: Tensor, k: Tensor, lse: Tensor, layout: Layout, block: int, scale: float
) -> PooledMap:
    from kernels.triton.capture import triton_pooled
    from kernels.triton.common import kernel_spec

    spec = kernel_spec(layout, q.shape[2])
    return PooledMap(block, q.shape[2], *triton_pooled(q, k, lse, spec, block, scale=scale))


def attention_pooled(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    layout: Layout,
    block: int,
    *,
    scale: float | None = None,
    backend: str = "auto",
    return_lse: bool = False,
) -> tuple:
    """kernels.attention's output (and lse with ``return_lse``) plus the PooledMap of P x P
    tiles, last in the tuple: (out, pooled) or (out, lse, pooled). On the fused kernels the map
    comes from the forward's own lse and a walk over the layout's pairs (no second forward, no
    N x N matrix); elsewhere from the reference walk."""
    if not isinstance(block, int) or block < 1:
        raise ValueError(f"pool must be a tile size >= 1, got {block!r}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if resolve_backend(q, layout, backend, return_lse=return_lse) == "triton":
        out, lse = attention(q, k, v, layout, scale=scale, return_lse=True, backend="triton")
        pooled = _triton_pooled(q, k, lse, layout, block, scale)
        return (out, lse, pooled) if return_lse else (out, pooled)
    res = attention(q, k, v, layout, scale=scale, backend=backend, return_lse=return_lse)
    pooled = capture_pooled(q, k, layout, block, scale, backend="reference")
    return (*res, pooled) if return_lse else (res, pooled)


@functools.lru_cache(maxsize=16)
def support_pattern(support: Layout, n: int, n_heads: int) -> tuple[Tensor, Tensor]:
    """CSR (indptr [N+1], indices [nnz]) of the union over heads of the support's pairs.

    Built on the host block by block (O(256 x N) memory) and cached per (layout, n, heads): it is
    the same for every image and layer."""
    heads = n_heads if support.period > 1 else 1
    counts, indices = [], []
    h = torch.arange(heads)[:, None, None]
    for s in range(0, n, ROW_BLOCK):
        i = torch.arange(s, min(s + ROW_BLOCK, n))
        allowed = _heads_mask(support, h, i[None, :, None], torch.arange(n)).expand(
            heads, len(i), n
        )
        union = allowed.any(0)  # [r, N]
        counts.append(union.sum(1))
        indices.append(union.nonzero()[:, 1])
    indptr = torch.zeros(n + 1, dtype=torch.long)
    indptr[1:] = torch.cat(counts).cumsum(0)
    return indptr, torch.cat(indices)


def capture_sparse(
    q: Tensor,
    k: Tensor,
    layout: Layout,
    support: Layout | None = None,
    scale: float | None = None,
    backend: str = "auto",
) -> SparseMap:
    """Probabilities (under ``layout``) of the pairs of ``support`` (default: the layout).

    On the fused kernels, for a support a kernel walks (dense, local, column, strided, fixed),
    the pattern is built on q's device from closed-form row counts and the values come from
    tensor-core tiles over the support's pairs (kernels/triton/capture.py); otherwise the host
    builds the pattern (``support_pattern``) and the reference walk fills it."""
    B, H, N, _ = q.shape
    if isinstance(layout, Selection) and support is None:
        raise ValueError(
            f"{layout!r} chooses its keys from the scores, so it has no pairs known ahead: give "
            f"the sparse form a static support layout, or use the full, rows or pooled form"
        )
    support = layout if support is None else support
    support.check_heads(H)
    fused = _fused(q, k, layout, scale, backend)
    walked = None
    if fused is not None and isinstance(support, Layout):
        from kernels.triton.capture import support_spec

        walked = support_spec(support, N, H)
    if walked is not None:
        from kernels.triton.capture import triton_sparse, triton_support

        spec, lse, scale = fused
        indptr, indices = triton_support(walked, N, q.device)
        values = triton_sparse(q, k, lse, spec, walked, indptr, len(indices), scale=scale)
    elif _pairs_pay(q, layout, support, backend):
        indptr, indices = support_pattern(support, N, H)
        values = _composed_pairs(q, k, layout, indptr, indices, scale, support is layout)
    else:
        indptr, indices = support_pattern(support, N, H)
        values = q.new_zeros(B, H, len(indices), dtype=_dtype(q))
        rows_of = torch.repeat_interleave(torch.arange(N), indptr.diff())  # [nnz]
        for s, p in _row_blocks(q, k, layout, scale, ROW_BLOCK):
            a, b = indptr[s], indptr[min(s + p.shape[2], N)]
            values[:, :, a:b] = p[:, :, rows_of[a:b] - s, indices[a:b].to(p.device)]
    if support.period > 1:  # zero the pairs of the union that this head's support lacks
        dev = indptr.device
        rows_of = torch.repeat_interleave(
            torch.arange(N, device=dev), indptr.diff(), output_size=len(indices)
        )
        h = torch.arange(H, device=dev)[:, None]
        mask = _heads_mask(support, h, rows_of[None, :], indices[None, :])
        values = values * mask.to(values)
    return SparseMap(N, repr(support), indptr, indices, values)


PAIR_CHUNK = 1 << 16  # pairs scored at once by _composed_pairs: [B, H, 65,536, D] gathered


# the pair walk pays where the support holds under this share of the N x N pairs (measured on
# the 2-core CPU, B=1, H=4, D=32: strided at 4,096 and 8,192 (2 % of the pairs) 2.4x and 4.6x
# faster than the row walk; fixed (7 %) and strided at 784 (7 %) slower)
PAIR_DENSITY = 1 / 32


def _pairs_pay(q: Tensor, layout: Layout, support: Layout, backend: str) -> bool:
    """Whether capture_sparse scores only the support's pairs from the composed lse."""
    if isinstance(layout, Selection):
        return False
    if resolve_backend(q, layout, backend, return_lse=True) != "composed":
        return False
    n = q.shape[2]
    return backend == "composed" or support.nnz(n) < PAIR_DENSITY * n * n


def _composed_pairs(
    q: Tensor,
    k: Tensor,
    layout: Layout,
    indptr: Tensor,
    indices: Tensor,
    scale: float | None,
    own: bool = False,
) -> Tensor:
    """The probabilities of the CSR pairs from the composed forward's log-sum-exp:
    exp(scale q_i . k_j - lse_i) where the layout allows (i, j), else 0; O(nnz D) work, where
    the reference walk scores every row against all N keys. ``own``: the pairs are the
    layout's own (every one allowed where the layout is the same in every head)."""
    B, H, N, D = q.shape
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    _, lse = attention(q, k, k, layout, scale=scale, return_lse=True, backend="composed")
    dt = _dtype(q)
    rows_of = torch.repeat_interleave(torch.arange(N), indptr.diff(), output_size=len(indices))
    values = q.new_zeros(B, H, len(indices), dtype=dt)
    h = torch.arange(H)[:, None]
    for a in range(0, len(indices), PAIR_CHUNK):
        i, j = rows_of[a : a + PAIR_CHUNK], indices[a : a + PAIR_CHUNK]
        dev_i, dev_j = i.to(q.device), j.to(q.device)
        s = (q[:, :, dev_i].to(dt) * k[:, :, dev_j].to(dt)).sum(-1) * scale  # [B, H, chunk]
        p = torch.exp(s - lse[:, :, dev_i].to(dt))
        if not (own and layout.period == 1):
            p = p * _heads_mask(layout, h, i[None, :], j[None, :]).to(q.device)  # [H or 1, chunk]
        values[:, :, a : a + PAIR_CHUNK] = p
    return values


CaptureForm = FullMap | Rows | PooledMap | SparseMap
FORMS = ("full", "rows", "pooled", "sparse")


def capture(
    q: Tensor,
    k: Tensor,
    layout: Layout,
    form: str,
    *,
    queries=None,
    block: int | None = None,
    support: Layout | None = None,
    scale: float | None = None,
    backend: str = "auto",
) -> CaptureForm:
    """One of the forms by name: "full", "rows" (needs queries), "pooled" (needs block),
    "sparse" (optional support)."""
    if form == "full":
        return capture_full(q, k, layout, scale, backend)
    if form == "rows":
        if queries is None:
            raise ValueError('form="rows" needs queries=[positions]')
        return capture_rows(q, k, layout, queries, scale, backend)
    if form == "pooled":
        if block is None:
            raise ValueError('form="pooled" needs block=P (the tile size)')
        return capture_pooled(q, k, layout, block, scale, backend)
    if form == "sparse":
        return capture_sparse(q, k, layout, support, scale, backend)
    raise ValueError(f"unknown capture form {form!r}; choose full, rows, pooled or sparse")
