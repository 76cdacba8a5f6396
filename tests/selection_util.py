"""The keys a content-based selection keeps, as a mask: the reference the selection tests and
the frontier's coverage check read (kernels/selection.py runs the selections fused)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from kernels.selection import Selection


def selection_mask(
    q: Tensor, k: Tensor, selection: Selection, positions: Tensor, scale: float
) -> Tensor:
    """bool [B, H, Q, N]: the keys k [B, H, N, D] that queries q [B, H, Q, D] at ``positions``
    [Q] keep under ``selection``: its rule over the causal scores, accumulated in float32 at
    least as the kernel's are (a top-k between near-ties must pick the same keys)."""
    acc = torch.promote_types(q.dtype, torch.float32)
    scores = torch.matmul(q.to(acc), k.to(acc).transpose(-2, -1)) * scale  # [B, H, Q, N]
    future = torch.arange(k.shape[2], device=q.device)[None, :] > positions.to(q.device)[:, None]
    scores = scores.masked_fill(future, -math.inf)
    return selection.allowed(scores, q, k, positions.to(q.device))
