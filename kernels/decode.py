"""Attention for one new query against a KV cache, touching only the keys its layout allows.

When sampling, token i's query may see only its layout's row i: for strided(l) that is the last
l keys and every l-th key before them, about l + i/l keys instead of i + 1. ``row_keys`` lists
them once per (layout, i); ``decode_attention`` gathers just those keys from the cache, so a
sparse layout never attends outside its layout and does no dense work it does not need.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from kernels.layouts import Layout


@functools.lru_cache(maxsize=8192)
def row_keys(layout: Layout, i: int, n_heads: int) -> tuple[Tensor, Tensor | None]:
    """Keys query i may attend to: (indices [K], per-head mask [H, K] or None).

    For layouts that are the same in every head the mask is None. For per-head layouts
    (fixed with num_verts, multihead) the indices are the union over heads and the mask says
    which of them each head may use.
    """
    heads = n_heads if layout.period > 1 else 1
    h = torch.arange(heads)[:, None]  # [heads, 1]
    j = torch.arange(i + 1)[None, :]  # [1, i+1]
    allowed = layout.mask_mod(torch.tensor(0), h, torch.tensor(i), j)  # [heads, i+1]
    allowed = allowed.expand(heads, i + 1)
    idx = allowed.any(0).nonzero().flatten()  # [K]
    if heads == 1:
        return idx, None
    return idx, allowed[:, idx]


def decode_attention(
    q: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    layout: Layout,
    pos: int,
    *,
    scale: float | None = None,
    return_probs: bool = False,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """Attention of the query at position ``pos``: q [B, H, 1, D], caches [B, H, >pos, D].

    The caches must already hold key/value ``pos``. Returns (out [B, H, 1, D], probs over the
    allowed keys [B, H, K] if asked, the key indices [K]).
    """
    B, H, _, D = q.shape
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    idx, head_mask = row_keys(layout, pos, H)
    idx = idx.to(q.device)
    k = k_cache.index_select(2, idx)  # [B, H, K, D]
    v = v_cache.index_select(2, idx)  # [B, H, K, D]
    acc = torch.promote_types(q.dtype, torch.float32)  # softmax in fp32 (fp64 stays fp64)
    scores = torch.matmul(q, k.transpose(-2, -1)).to(acc) * scale  # [B, H, 1, K]
    if head_mask is not None:
        scores = scores.masked_fill(~head_mask.to(q.device)[None, :, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1)  # [B, H, 1, K]
    out = torch.matmul(probs.to(v.dtype), v)  # [B, H, 1, D]
    return out, probs[:, :, 0] if return_probs else None, idx
