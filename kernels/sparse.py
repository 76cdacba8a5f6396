"""``sparse_attention``: exact attention for a layout, on the fused Triton kernels where they
exist, with every check and error message in one place.

    out = sparse_attention(q, k, v, strided(28))                     # [B, H, N, D]
    out, lse = sparse_attention(q, k, v, fixed(128, 16), return_lse=True)

backend="auto" takes the Triton kernels for CUDA tensors and the reference on the CPU;
"triton" forces the kernels (on CPU tensors only under TRITON_INTERPRET=1, which is how CI runs
them); "reference" forces kernels/reference.py.
"""

from __future__ import annotations

import math
import os

import torch
from torch import Tensor

from kernels.layouts import Column, Dense, Fixed, Layout, Local, Strided
from kernels.reference import reference_attention

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
HEAD_DIMS = (16, 32, 64, 128)
KERNEL_LAYOUTS = (Dense, Local, Column, Strided, Fixed)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def check_inputs(q: Tensor, k: Tensor, v: Tensor, layout: Layout) -> None:
    """Raise ValueError / TypeError with what is wrong and what is allowed."""
    if not isinstance(layout, Layout):
        raise TypeError(f"layout must be a kernels.layouts.Layout, got {type(layout).__name__}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.ndim != 4:
            raise ValueError(f"{name} must be [B, H, N, D], got shape {tuple(t.shape)}")
    if not (q.shape == k.shape == v.shape):
        raise ValueError(
            f"q, k, v must have the same shape; got {tuple(q.shape)}, {tuple(k.shape)}, "
            f"{tuple(v.shape)}"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share a dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device; got {q.device}, {k.device}, {v.device}")
    if q.shape[2] < 1:
        raise ValueError("the sequence is empty (N = 0)")
    layout.check_heads(q.shape[1])


BAND, FIXED = 0, 1  # the two kernel families


def kernel_params(layout: Layout, n: int) -> tuple[int, int, int, int, int]:
    """(kind, a, b, c, columns): the layout as the kernels take it.

    BAND: keys with 0 <= i - j < a, plus (columns) every i - j = k * b; dense is a = n,
    column is a = 1. FIXED: a = l, b = c, c = num_verts.
    """
    if isinstance(layout, Fixed):
        return FIXED, layout.l, layout.c, layout.num_verts, 0
    if isinstance(layout, Dense):
        return BAND, n, 1, 1, 0
    if isinstance(layout, Local):
        return BAND, layout.l, 1, 1, 0
    if isinstance(layout, Column):
        return BAND, 1, layout.l, 1, 1
    if isinstance(layout, Strided):
        return BAND, layout.l, layout.l, 1, 1
    raise ValueError(f"no Triton kernel for {layout!r}")


def kernel_fits(q: Tensor, layout: Layout) -> bool:
    """Whether a fused kernel exists for this layout, dtype and head dim."""
    return isinstance(layout, KERNEL_LAYOUTS) and q.dtype in DTYPES and q.shape[-1] in HEAD_DIMS


def resolve(q: Tensor, layout: Layout, backend: str) -> str:
    """The path sparse_attention takes: "triton" or "reference" (ValueError if impossible)."""
    if backend not in ("auto", "triton", "reference"):
        raise ValueError(f"backend must be 'auto', 'triton' or 'reference', got {backend!r}")
    if backend == "auto":
        return "triton" if q.is_cuda and kernel_fits(q, layout) else "reference"
    if backend == "triton":
        if not (q.is_cuda or _interpreting()):
            raise ValueError(
                "backend='triton' needs CUDA tensors, or TRITON_INTERPRET=1 to run the kernels "
                "on the CPU (slowly; that is how the tests run them)"
            )
        if not isinstance(layout, KERNEL_LAYOUTS):
            raise ValueError(f"no Triton kernel for {layout!r}; use backend='reference'")
        if q.dtype not in DTYPES:
            raise ValueError(f"the Triton kernels take float32, float16 or bfloat16, not {q.dtype}")
        if q.shape[-1] not in HEAD_DIMS:
            raise ValueError(
                f"the Triton kernels take head dims {HEAD_DIMS}, got D = {q.shape[-1]}"
            )
    return backend


def sparse_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    layout: Layout,
    *,
    scale: float | None = None,
    return_lse: bool = False,
    backend: str = "auto",
) -> Tensor | tuple[Tensor, Tensor]:
    """Exact merged attention of q, k, v [B, H, N, D] restricted to ``layout``."""
    check_inputs(q, k, v, layout)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if resolve(q, layout, backend) == "reference":
        res = reference_attention(q, k, v, layout, scale=scale, return_lse=return_lse)
        return (res.out, res.lse) if return_lse else res.out
    from kernels.triton.band_column import BandColumnAttention
    from kernels.triton.fixed import FixedAttention

    kind, a, b, c, columns = kernel_params(layout, q.shape[2])
    if kind == FIXED:
        out, lse = FixedAttention.apply(q, k, v, a, b, c, scale)
    else:
        out, lse = BandColumnAttention.apply(
            q, k, v, min(a, q.shape[2]), b if columns else None, scale
        )
    return (out, lse) if return_lse else out
