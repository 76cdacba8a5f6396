"""The anchors of the benchmark: FlexAttention with the exact mask, and FlexAttention composed
into exact strided / fixed attention from pieces joined through their log-sum-exp (docs/DESIGN.md,
"Composing sparse attention from dense pieces").

    strided(l) = local band  +  column attention on the transposed sequence (strictly causal)
    fixed(l,c) = own block   +  attention over the gathered summary keys of earlier blocks

Written to be measured against, and tested for exactness against the reference like any kernel.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

from kernels.layouts import Fixed, Layout, Strided


def merge(o1: Tensor, lse1: Tensor, o2: Tensor, lse2: Tensor) -> tuple[Tensor, Tensor]:
    """Join two partial softmaxes over disjoint key sets: m = max(lse1, lse2),
    o = (o1 e^(lse1-m) + o2 e^(lse2-m)) / (e^(lse1-m) + e^(lse2-m)). An empty part has lse -inf."""
    m = torch.maximum(lse1, lse2)
    w1 = torch.exp(lse1 - m)
    w2 = torch.exp(lse2 - m)
    total = w1 + w2
    out = (o1.float() * w1[..., None] + o2.float() * w2[..., None]) / total[..., None]
    return out.to(o1.dtype), m + torch.log(total)


_BLOCK_MASKS: dict[tuple, BlockMask] = {}


def _block_mask(key: tuple, mask_mod, nq: int, nk: int, device: torch.device) -> BlockMask:
    """create_block_mask once per (mask, sizes, device): building it costs more than the
    attention itself at large N (so it stays out of the timings, as it would in a model that
    reuses it every layer), and reusing one mask_mod spares torch.compile a recompilation."""
    full_key = (*key, nq, nk, str(device))
    if full_key not in _BLOCK_MASKS:
        if len(_BLOCK_MASKS) >= 64:
            _BLOCK_MASKS.clear()
        _BLOCK_MASKS[full_key] = create_block_mask(
            mask_mod, None, None, nq, nk, device=device, _compile=device.type == "cuda"
        )
    return _BLOCK_MASKS[full_key]


def _flex(q, k, v, key: tuple, mask_mod, scale, compiled=None):
    bm = _block_mask(key, mask_mod, q.shape[2], k.shape[2], q.device)
    fn = compiled or flex_attention
    out, lse = fn(q, k, v, block_mask=bm, scale=scale, return_lse=True)
    return out, lse.float()


def flex_exact(q: Tensor, k: Tensor, v: Tensor, layout: Layout, scale=None, compiled=None):
    """FlexAttention with the layout's exact mask (the naive block-sparse route)."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    return _flex(q, k, v, ("exact", repr(layout)), layout.mask_mod, scale, compiled)


def composed_strided(q, k, v, l: int, scale=None, compiled=None):
    """Exact strided(l): local band + column attention on the transposed sequence."""
    B, H, N, D = q.shape
    scale = 1 / math.sqrt(D) if scale is None else scale

    def band(b, h, qi, ki):
        return (qi >= ki) & (qi - ki < l)

    o1, lse1 = _flex(q, k, v, ("band", l), band, scale, compiled)
    rows = -(-N // l)
    pad = rows * l - N

    def columns(t):  # [B, H, N, D] -> [B, H*l, rows, D]: the sequence of each column
        t = torch.nn.functional.pad(t, (0, 0, 0, pad))
        return t.view(B, H, rows, l, D).transpose(2, 3).reshape(B, H * l, rows, D)

    def above(b, h, qi, ki):  # strictly earlier in the column: i - j = k*l, k >= 1
        return qi > ki

    o2, lse2 = _flex(columns(q), columns(k), columns(v), ("above",), above, scale, compiled)
    o2 = o2.view(B, H, l, rows, D).transpose(2, 3).reshape(B, H, rows * l, D)[:, :, :N]
    lse2 = lse2.view(B, H, l, rows).transpose(2, 3).reshape(B, H, rows * l)[:, :, :N]
    return merge(o1, lse1, o2, lse2)


def composed_fixed(q, k, v, l: int, c: int, scale=None, compiled=None):
    """Exact fixed(l, c) (num_verts = 1): own block + the gathered summary keys."""
    B, H, N, D = q.shape
    scale = 1 / math.sqrt(D) if scale is None else scale

    def block(b, h, qi, ki):
        return (qi >= ki) & (qi // l == ki // l)

    o1, lse1 = _flex(q, k, v, ("block", l), block, scale, compiled)
    full_blocks = N // l
    idx = (
        torch.arange(full_blocks, device=q.device)[:, None] * l
        + (l - c)
        + torch.arange(c, device=q.device)[None, :]
    ).flatten()  # [blocks * c]
    if len(idx) == 0:
        return o1, lse1
    ks, vs = k[:, :, idx], v[:, :, idx]

    def earlier(b, h, qi, ki):  # the summary key's block is before the query's
        return ki // c < qi // l

    o2, lse2 = _flex(q, ks, vs, ("earlier", l, c), earlier, scale, compiled)
    return merge(o1, lse1, o2, lse2)


def composed(q, k, v, layout: Layout, scale=None, compiled=None):
    if isinstance(layout, Strided):
        return composed_strided(q, k, v, layout.l, scale, compiled)
    if isinstance(layout, Fixed) and layout.num_verts == 1:
        return composed_fixed(q, k, v, layout.l, layout.c, scale, compiled)
    raise ValueError(f"no composed route for {layout!r}")
