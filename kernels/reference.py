"""Exact masked softmax attention in plain PyTorch: the ground truth for every kernel.

It builds the full [H, N, N] layout mask and the full score matrix, so it costs O(N^2) memory;
that is what makes it obviously right, and what the Triton kernels exist to avoid.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
from torch import Tensor

from kernels.layouts import Layout


class AttentionResult(NamedTuple):
    """Output [B, H, N, D]; optionally lse [B, H, N] (natural log; float32, float64 for float64
    inputs) and probs [B, H, N, N]."""

    out: Tensor
    lse: Tensor | None = None
    probs: Tensor | None = None


@functools.lru_cache(maxsize=32)
def cached_mask(layout: Layout, n: int, n_heads: int, device: torch.device) -> Tensor:
    """The layout's [H, N, N] mask, built once per (layout, n, heads, device).

    Layouts are frozen dataclasses, so they hash by value. The same heads get the same mask,
    so a layout with period 1 is stored as [1, N, N] and broadcast.
    """
    heads = n_heads if layout.period > 1 else 1
    return layout.dense_mask(n, heads, device=device)


def reference_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    layout: Layout,
    *,
    scale: float | None = None,
    return_lse: bool = False,
    return_probs: bool = False,
    upcast: bool = False,
) -> AttentionResult:
    """softmax(q k^T * scale, restricted to the layout) v, for q, k, v of shape [B, H, N, D].

    The arithmetic runs in the inputs' dtype unless ``upcast`` is set, in which case it runs in
    float32 and the output is cast back: the low-precision reference measures the error a
    kernel is allowed (flash-attention's rule), the upcast one is the truth it is measured to.
    Every row has at least its own key (all layouts allow j == i), so no row is empty.
    """
    B, H, N, D = q.shape
    layout.check_heads(H)
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    dtype = q.dtype
    if upcast:
        q, k, v = q.float(), k.float(), v.float()
    mask = cached_mask(layout, N, H, q.device)  # [H or 1, N, N]
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale  # [B, H, N, N]
    scores = scores.masked_fill(~mask, float("-inf"))
    acc = torch.promote_types(scores.dtype, torch.float32)  # fp32 (fp64 stays fp64)
    lse = torch.logsumexp(scores.to(acc), dim=-1)  # [B, H, N]
    probs = torch.exp(scores.to(acc) - lse[..., None]).to(q.dtype)  # [B, H, N, N]
    out = torch.matmul(probs, v).to(dtype)  # [B, H, N, D]
    return AttentionResult(out, lse if return_lse else None, probs if return_probs else None)
