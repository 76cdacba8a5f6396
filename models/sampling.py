"""Sampling images from a trained model, in small pure pieces (gpt-fast style).

This is the plain path: every new token runs the model over the whole prefix, O(N) forwards of
growing length. It is exact for every layout, because it is the model's own forward pass.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from models.model import SparseTransformer


def logits_to_probs(
    logits: Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> Tensor:
    """Next-token distribution [B, 256] from logits [B, 256]; temperature 0 means argmax."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    logits = logits.float()
    if temperature == 0:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
    logits = logits / temperature
    if top_k is not None:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p is not None:
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        sorted_p, order = probs.sort(dim=-1, descending=True)
        # keep the smallest set of tokens whose mass reaches top_p (always at least one)
        drop = sorted_p.cumsum(-1) - sorted_p >= top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


@torch.no_grad()
def sample(
    model: SparseTransformer,
    *,
    n_samples: int,
    prefix: Tensor | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    on_token: Callable[[int, Tensor], None] | None = None,
) -> Tensor:
    """Sample ``n_samples`` whole images as tokens [n_samples, N], continuing ``prefix``.

    ``prefix`` is [P] (the same start for every sample) or [n_samples, P] (one each). The first
    P tokens of every sample are the prefix; the rest are drawn one at a time in raster order.
    ``seed`` makes the result reproducible. ``on_token(i, tokens)`` is called after token i.
    """
    n = model.config.block_size
    device = next(model.parameters()).device
    tokens = torch.zeros(n_samples, n, dtype=torch.long, device=device)
    start = 0
    if prefix is not None:
        start = prefix.shape[-1]
        if start > n:
            raise ValueError(f"prefix has {start} tokens; the model's images have {n}")
        if prefix.ndim == 2 and len(prefix) != n_samples:
            raise ValueError(f"got {len(prefix)} prefixes for {n_samples} samples")
        tokens[:, :start] = prefix.to(device)
    generator = torch.Generator(device=device)
    generator.manual_seed(seed if seed is not None else torch.seed())
    for i in range(start, n):
        logits = model(tokens[:, : i + 1])[:, i]  # [B, 256]: token i from tokens < i
        probs = logits_to_probs(logits, temperature=temperature, top_k=top_k, top_p=top_p)
        tokens[:, i] = torch.multinomial(probs, 1, generator=generator)[:, 0]
        if on_token is not None:
            on_token(i, tokens)
    return tokens
