"""What the kernel and analysis tests share: a list of small layouts, and tiny models with sharp
attention."""

from __future__ import annotations

import torch

from kernels import layouts as L
from models import ModelConfig, SparseTransformer

LAYOUTS = [
    L.dense(),
    L.local(5),
    L.column(5),
    L.strided(6),
    L.fixed(6, 2),
    L.fixed(8, 2, num_verts=2),
    L.multihead(L.local(4), L.column(4)),
]


def sharp_tiny(height: int, width: int, n_layer: int, layout: str) -> SparseTransformer:
    """A seeded gray model (2 heads, 16 wide) in eval mode, its qkv weights scaled by 20 so the
    attention is sharp and unequal rather than uniform."""
    torch.manual_seed(0)
    config = ModelConfig(
        height=height, width=width, n_layer=n_layer, n_head=2, n_embd=16, layout=layout
    )
    model = SparseTransformer(config).eval()
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight.mul_(20.0)
    return model
