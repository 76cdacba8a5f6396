"""Summaries of attention across heads and layers: head mean / max, and attention rollout.

One layer's attention says where each position read from the layer below, not from the image.
Attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers") follows
the reading down the stack. The residual stream carries each position's own state past the
attention, so every layer is modelled as half attention, half identity:

    A'_l = normalise_rows(0.5 * mean_over_heads(A_l) + 0.5 * I)
    rollout = A'_L @ ... @ A'_2 @ A'_1

and ``rollout[b, i, j]`` is how much of position i at the top is traced back to the input at
position j (the embedding of token j - 1; docs/DESIGN.md, "The model"). Every A'_l is causal
and row-stochastic, so the product is too: rows sum to 1 and nothing comes from the future.

Cost. The chain of N x N products is O(L N^3) per image. One query's row needs only
vector-matrix products, e_q^T A'_L, then (.) A'_{L-1}, ... : O(L q^2) for query q, since
causality keeps the vector on keys <= q. It still needs rows 0..q of every layer below the
top, which for a query near the end of the image is every row: the attention itself is as big
as a full map (O(L N^2) to capture and hold); only the N^3 products are saved. At 784 tokens a
full map is 2.3 MiB per head in float32 and the whole chain takes a fraction of a second per
image, so rollout here is exact and from full maps; model_rollout_row captures only rows 0..q.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from kernels.capture import MAX_FULL_N
from models.model import SparseTransformer

RESIDUAL = 0.5  # the weight of the identity (the residual path) in every layer


def heads_mean(probs: Tensor) -> Tensor:
    """The mean over heads: [B, H, ...] -> [B, ...] (full maps, rows, pooled tiles alike)."""
    return probs.mean(dim=1)


def heads_max(probs: Tensor) -> Tensor:
    """The elementwise max over heads: [B, H, ...] -> [B, ...]; where any one head looks."""
    return probs.amax(dim=1)


def with_residual(attn: Tensor, residual: float = RESIDUAL) -> Tensor:
    """A' = (1 - residual) * A + residual * I with rows renormalised: [B, N, N] -> [B, N, N].

    Rows of a softmax already sum to 1, so the renormalisation only removes rounding (and
    makes a map of head-max values, which need not sum to 1, a distribution)."""
    if not 0.0 <= residual <= 1.0:
        raise ValueError(f"residual must be in [0, 1], got {residual}")
    n = attn.shape[-1]
    eye = torch.eye(n, dtype=attn.dtype, device=attn.device)  # [N, N], broadcast over B
    mixed = (1.0 - residual) * attn + residual * eye  # [B, N, N]
    return mixed / mixed.sum(dim=-1, keepdim=True)


def _check_maps(maps: Sequence[Tensor]) -> None:
    if not maps:
        raise ValueError("rollout needs the attention of at least one layer")
    shape = maps[0].shape
    if len(shape) != 3 or shape[-1] != shape[-2]:
        raise ValueError(f"rollout takes head-averaged maps [B, N, N], got {tuple(shape)}")
    if any(m.shape != shape for m in maps):
        raise ValueError(f"every layer's map must be {tuple(shape)}, got {[m.shape for m in maps]}")


def rollout(maps: Sequence[Tensor], residual: float = RESIDUAL) -> Tensor:
    """Attention rollout [B, N, N] of head-averaged maps [B, N, N], lowest layer first."""
    _check_maps(maps)
    if maps[0].shape[-1] > MAX_FULL_N:
        raise ValueError(
            f"rollout of full maps is for N <= {MAX_FULL_N}; at N = {maps[0].shape[-1]} use "
            "rollout_row for one query"
        )
    out = with_residual(maps[0], residual)
    for attn in maps[1:]:
        out = with_residual(attn, residual) @ out  # A'_l @ (A'_{l-1} ... A'_1): [B, N, N]
    return out


def rollout_row(maps: Sequence[Tensor], query: int, residual: float = RESIDUAL) -> Tensor:
    """Row ``query`` of the rollout, [B, N], by vector-matrix products from the top layer down.

    ``maps`` [B, Q, N], lowest layer first, hold at least the rows 0..query (full maps or the
    rows form of queries 0..query). Only the top-left (query + 1) x (query + 1) block is read:
    causality keeps the vector on keys <= query at every step, so the cost is
    O(L * query^2) per image instead of the chain's O(L * N^3).
    """
    if not maps:
        raise ValueError("rollout needs the attention of at least one layer")
    B, Q, N = maps[0].shape
    if not 0 <= query < min(Q, N):
        raise ValueError(f"query must be in 0..{min(Q, N) - 1} (the rows given), got {query}")
    k = query + 1
    # the causal corner: queries and keys 0..query; later keys hold no mass for these rows
    corners = [with_residual(m[:, :k, :k], residual) for m in maps]  # each [B, k, k]
    row = corners[-1][:, query]  # e_q^T A'_L: [B, k]
    for a in reversed(corners[:-1]):
        row = torch.einsum("bi,bij->bj", row, a)  # row @ A'_l: [B, k]
    out = row.new_zeros(B, N)
    out[:, :k] = row
    return out


def _layers_upto(model: SparseTransformer, top: int | None) -> list[int]:
    n_layer = model.config.n_layer
    top = n_layer - 1 if top is None else int(top)
    if not 0 <= top < n_layer:
        raise ValueError(f"top layer must be in 0..{n_layer - 1}, got {top}")
    return list(range(top + 1))  # rollout starts at the input: every layer up to the top


def model_rollout_row(
    model: SparseTransformer,
    tokens: Tensor,
    query: int,
    *,
    top: int | None = None,
    residual: float = RESIDUAL,
) -> Tensor:
    """Row ``query`` of the rollout, [B, N], from the captured rows 0..query of each layer.

    Memory is L x B x H x (query + 1) x N attention values: for the last query, as much as the
    full maps, which is why this is for one query of a small image, or early queries."""
    queries = torch.arange(query + 1)
    caps = model.capture(tokens, layers=_layers_upto(model, top), form="rows", queries=queries)
    return rollout_row([heads_mean(caps[i].probs) for i in sorted(caps)], query, residual)
