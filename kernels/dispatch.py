"""The one attention entry point the model calls, and the choice of backend behind it.

Backends:
    "reference"  kernels.reference: plain masked softmax, O(N^2) memory; the ground truth.
    "sdpa"       torch's fused scaled_dot_product_attention with the layout's boolean mask
                 (is_causal for dense): the same exact math, much faster on the CPU, no probs.
    "triton"     the fused kernels of kernels/sparse.py (CUDA; on the CPU under
                 TRITON_INTERPRET=1, slowly, for tests)
    "auto"       "triton" for CUDA tensors when a kernel fits the layout, dtype and head dim,
                 otherwise "sdpa".

The choice can be forced for a whole process with the environment variable
SPARSE_ATTENTION_BACKEND, or for a block of code with ``with use_backend("reference"):``;
an explicit ``backend=`` argument other than "auto" wins over both.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from kernels.layouts import Dense, Layout
from kernels.reference import cached_mask, reference_attention
from kernels.sparse import kernel_fits, sparse_attention

BACKENDS = ("auto", "reference", "sdpa", "triton")
ENV_VAR = "SPARSE_ATTENTION_BACKEND"
_forced: list[str] = []


def _check_backend(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return name


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Force a backend for every ``attention(..., backend="auto")`` call inside the block."""
    _forced.append(_check_backend(name))
    try:
        yield
    finally:
        _forced.pop()


def resolve_backend(backend: str, device: torch.device, kernel_fits: bool = False) -> str:
    """The concrete backend an ``attention`` call with these arguments will use."""
    _check_backend(backend)
    if backend == "auto" and _forced:
        backend = _forced[-1]
    if backend == "auto" and os.environ.get(ENV_VAR):
        backend = _check_backend(os.environ[ENV_VAR])
    if backend == "auto":
        backend = "triton" if device.type == "cuda" and kernel_fits else "sdpa"
    return backend


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    layout: Layout,
    *,
    scale: float | None = None,
    backend: str = "auto",
) -> Tensor:
    """Exact attention of q, k, v [B, H, N, D] restricted to ``layout``; returns [B, H, N, D]."""
    if q.ndim != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(
            f"q, k, v must all be [B, H, N, D]; got {tuple(q.shape)}, {tuple(k.shape)}, "
            f"{tuple(v.shape)}"
        )
    B, H, N, D = q.shape
    layout.check_heads(H)
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    chosen = resolve_backend(backend, q.device, kernel_fits(q, layout))
    if chosen == "triton":
        return sparse_attention(q, k, v, layout, scale=scale, backend="triton")
    if chosen == "reference":
        return reference_attention(q, k, v, layout, scale=scale).out
    if isinstance(layout, Dense):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    bias = _additive_mask(layout, N, H, q.device, q.dtype)  # [H or 1, N, N]: 0 or -inf
    # expanded to the full [B, H, N, N] view (no copy): torch's fused CPU kernel takes this
    # shape and is ~3x faster than with a broadcast mask, which falls back to the math path
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias.expand(B, H, N, N), scale=scale)


@functools.lru_cache(maxsize=32)
def _additive_mask(
    layout: Layout, n: int, n_heads: int, device: torch.device, dtype: torch.dtype
) -> Tensor:
    allowed = cached_mask(layout, n, n_heads, device)
    return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, -math.inf)
