"""Who looks here: the attention every query gives one key token (a column of the map).

A viewer of attention rows answers "where does this pixel look"; the reverse question, "which
later pixels read this one", is column ``key`` of the same map. Only queries i >= key can
attend to it (every layout is causal, docs/DESIGN.md "Layouts"), so entries before the key are
0. From the two capture forms that hold every pair (kernels/capture.py):

    column_from_full(FullMap, key)      probs[:, :, :, key], for N <= 4,096
    column_from_sparse(SparseMap, key)  the CSR entries whose column is key, O(nnz) work,
                                        never densified: works at any N

The result is [B, H, N] (one value per head and query); heads_total / heads_average reduce it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from kernels.capture import MAX_FULL_N, FullMap, SparseMap
from kernels.layouts import Layout, parse_layout
from models.model import SparseTransformer


def _check_key(key: int, n: int) -> int:
    if isinstance(key, bool) or not 0 <= int(key) < n:
        raise ValueError(f"key token must be in 0..{n - 1}, got {key}")
    return int(key)


def _refuse_dense(n: int, what: str) -> None:
    if n > MAX_FULL_N:
        raise ValueError(
            f"{what} at N = {n} is a dense N x N map ({n * n * 4 / 2**20:.0f} MiB per head in "
            f"float32); dense maps are refused above {MAX_FULL_N:,} tokens: use a sparse "
            "capture over a sparse support (model.capture(form='sparse'))"
        )


def column_from_full(full: FullMap | Tensor, key: int) -> Tensor:
    """Attention to ``key`` from every query, per head: [B, H, N] from probs [B, H, N, N]."""
    probs = full.probs if isinstance(full, FullMap) else full
    n = probs.shape[-1]
    _refuse_dense(n, "a full map")
    return probs[..., _check_key(key, n)].clone()  # [B, H, N]: a copy, not a view of the map


def column_from_sparse(sparse: SparseMap, key: int) -> Tensor:
    """Attention to ``key`` from every query, per head: [B, H, N] from a SparseMap.

    The entries whose column is ``key`` are found by one comparison over the nnz indices; their
    rows come from the CSR row pointer. Pairs outside the support are 0 (a model trained with
    that layout puts no weight there)."""
    key = _check_key(key, sparse.n)
    hit = sparse.indices == key  # [nnz]
    rows = torch.repeat_interleave(
        torch.arange(sparse.n, device=sparse.indptr.device), sparse.indptr.diff()
    )  # [nnz]: the query row of every stored entry
    B, H, _ = sparse.values.shape
    out = sparse.values.new_zeros(B, H, sparse.n)
    out[:, :, rows[hit]] = sparse.values[:, :, hit.to(sparse.values.device)]  # [B, H, hits]
    return out


def heads_total(column: Tensor) -> Tensor:
    """Summed over heads: [B, H, N] -> [B, N]; how many heads' worth of reading (0..H)."""
    return column.sum(dim=1)


def heads_average(column: Tensor) -> Tensor:
    """Averaged over heads: [B, H, N] -> [B, N]; a share of the layer's attention (0..1)."""
    return column.mean(dim=1)


def who_looks_here(
    model: SparseTransformer,
    tokens: Tensor,
    key: int,
    *,
    layers: list[int] | None = None,
    support: Layout | str | None = None,
) -> dict[int, Tensor]:
    """Per layer, the attention [B, H, N] every query of tokens [B, N] gives token ``key``.

    Up to 4,096 tokens from full maps; above, from sparse maps over ``support`` (default: each
    layer's own layout, which holds all of its attention). A dense support above 4,096 tokens
    would be a dense N x N map in CSR clothing, and is refused like a full map.
    """
    n = tokens.shape[-1]
    _check_key(key, n)
    if n <= MAX_FULL_N:
        caps = model.capture(tokens, layers=layers, form="full")
        return {layer: column_from_full(cap, key) for layer, cap in caps.items()}
    if support is not None:
        supports = [parse_layout(support)]
    else:  # capture checks the layer numbers; only the valid ones matter here
        chosen = range(model.config.n_layer) if layers is None else layers
        supports = [model.layouts[i] for i in chosen if 0 <= i < len(model.layouts)]
    for s in supports:
        # a multihead support's CSR is the union over heads: one dense head makes it dense
        if any(p.density(n) >= 1.0 for p in getattr(s, "patterns", (s,))):
            _refuse_dense(n, f"a sparse capture over {s!r}")
    caps = model.capture(tokens, layers=layers, form="sparse", support=support)
    return {layer: column_from_sparse(cap, key) for layer, cap in caps.items()}
