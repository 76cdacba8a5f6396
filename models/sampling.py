"""Sampling images from a trained model, in small pure pieces (gpt-fast style).

    prefill(model, tokens, p, caches)    positions 0..p in one pass, filling the KV caches
    decode_one_token(model, tokens, i, caches)   position i alone, against the caches
    logits_to_probs(logits, ...)          temperature, top-k, top-p
    sample(model, ...)                    the loop: a batch of samples, known pixels kept fixed

Decoding attends only to the keys the layer's layout allows (kernels/decode.py), so a strided
model looks at about l + i/l cached keys per token, never at the whole prefix. ``use_cache=False``
runs the whole model over the prefix for every token instead: slow, and the reference the cached
path is tested against token for token.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from models.model import NO_INTERVENTION, Intervention, KVCache, ModelConfig, SparseTransformer


class SamplingCancelled(Exception):
    """Raised when ``cancel()`` returns True; ``tokens`` holds what was sampled so far."""

    def __init__(self, tokens: Tensor, position: int) -> None:
        super().__init__(f"sampling cancelled at token {position}")
        self.tokens = tokens
        self.position = position


# What a command line may ask sample() to hold at once (the app allows 1-16 samples, see
# app_pages/limits.py): n_samples is bounded so that the estimate below stays within this.
SAMPLING_MEMORY_BUDGET = 4 * 2**30
MAX_SAMPLES = 1024


def bytes_per_sample(config: ModelConfig) -> int:
    """A generous estimate of the float32 memory one sample costs while sampling: the KV cache
    (keys and values of every layer, [N, d] each), the prefix's logits [N, 256] and the
    feed-forward activations of the prefill ([N, 4 d] and a few [N, d])."""
    n, d = config.block_size, config.n_embd
    return 4 * n * (2 * config.n_layer * d + config.vocab_size + 8 * d)


def max_samples(config: ModelConfig, budget: int = SAMPLING_MEMORY_BUDGET) -> int:
    """The most samples of ``config`` one call may draw: within ``budget`` and MAX_SAMPLES."""
    return max(1, min(MAX_SAMPLES, budget // bytes_per_sample(config)))


def logits_to_probs(
    logits: Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> Tensor:
    """Next-token distribution [B, 256] (float32) from logits [B, 256]; temperature 0 means
    argmax.

    Exact at the float edges: the work is done in float64 on logits less their row maximum, so
    dividing by any positive temperature (1e-300 included, which float32 rounds to 0) gives 0
    for the most likely token and at most 0 elsewhere: nothing overflows, a tiny temperature is
    greedy (ties share), and the top token is always kept by top-p (the mass before it is 0,
    never >= a positive top_p, however small: float32 would round 1e-300 to 0 and drop it)."""
    if not (math.isfinite(temperature) and temperature >= 0):  # NaN fails every comparison
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not (math.isfinite(top_p) and 0 < top_p <= 1):
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    logits = logits.double()
    if temperature == 0:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
    logits = logits - logits.amax(-1, keepdim=True)  # <= 0, the top token(s) exactly 0
    logits = logits / temperature  # float64: 0 stays 0, the rest may reach -inf, never NaN
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p is not None:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        # keep the smallest set of tokens whose mass reaches top_p (always at least one)
        drop = sorted_p.cumsum(-1) - sorted_p >= top_p
        drop[..., 0] = False
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs.float()  # the top token's probability is >= 1/256: no row underflows to 0


def prefill(
    model: SparseTransformer,
    tokens: Tensor,
    p: int,
    caches: list[KVCache],
    intervention: Intervention = NO_INTERVENTION,
) -> Tensor:
    """Run positions 0..p (their inputs are tokens < p) in one pass; logits of position p."""
    x = model.embed(tokens, 0, p + 1)
    return model.transform(x, caches, 0, intervention)[:, -1]  # [B, 256]


def decode_one_token(
    model: SparseTransformer,
    tokens: Tensor,
    i: int,
    caches: list[KVCache],
    intervention: Intervention = NO_INTERVENTION,
) -> Tensor:
    """Run position i (its input is token i-1) against the caches; logits [B, 256]."""
    return model.transform(model.embed(tokens, i, i + 1), caches, i, intervention)[:, 0]


@torch.no_grad()
def sample(
    model: SparseTransformer,
    *,
    n_samples: int,
    prefix: Tensor | None = None,
    known: Tensor | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    use_cache: bool = True,
    on_row: Callable[[int, Tensor], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    intervention: Intervention = NO_INTERVENTION,
) -> Tensor:
    """Sample ``n_samples`` images as tokens [n_samples, N].

    ``prefix`` [P] or [n_samples, P]: the first P tokens, kept. ``known`` (bool [N]) marks
    further tokens to keep fixed (e.g. a rectangle); their values come from ``prefix`` extended
    to length N, which must then be given whole ([N] or [n_samples, N]). Everything else is drawn
    in raster order. ``seed`` makes the result reproducible. ``on_row(row, tokens)`` is called
    once per image row that had tokens drawn, as soon as the row is complete; ``cancel()`` is
    polled before every token and stops the loop by raising SamplingCancelled.
    ``intervention`` runs every step with another attention or edited heads (models.model).
    """
    n = model.config.block_size
    row_len = model.config.row_stride
    device = next(model.parameters()).device
    tokens = torch.zeros(n_samples, n, dtype=torch.long, device=device)
    keep = torch.zeros(n, dtype=torch.bool)
    if prefix is not None:
        width = prefix.shape[-1]
        if width > n:
            raise ValueError(f"prefix has {width} tokens; the model's images have {n}")
        if prefix.ndim == 2 and len(prefix) != n_samples:
            raise ValueError(f"got {len(prefix)} prefixes for {n_samples} samples")
        tokens[:, :width] = prefix.to(device)
        keep[:width] = True
    if known is not None:
        if known.shape != (n,) or prefix is None or prefix.shape[-1] != n:
            raise ValueError(f"known must be bool [{n}] with a prefix of all {n} tokens")
        keep = known.bool().cpu()
        if not keep.all():
            tokens[:, ~keep.to(device)] = 0  # the values there are never read: be explicit
    start = int(keep.long().cumprod(0).sum())  # length of the leading run of kept tokens
    if start == n:
        return tokens
    generator = torch.Generator(device=device)
    generator.manual_seed(seed if seed is not None else int(torch.seed() % 2**63))

    caches = model.new_caches(n_samples) if use_cache else None
    for i in range(start, n):
        if cancel is not None and cancel():
            raise SamplingCancelled(tokens, i)
        if caches is None:
            logits = model(tokens[:, : i + 1], intervention)[:, i]  # [B, 256]: the prefix again
        elif i == start:
            logits = prefill(model, tokens, i, caches, intervention)
        else:
            logits = decode_one_token(model, tokens, i, caches, intervention)
        if not keep[i]:
            probs = logits_to_probs(logits, temperature=temperature, top_k=top_k, top_p=top_p)
            tokens[:, i] = torch.multinomial(probs, 1, generator=generator)[:, 0]
        if on_row is not None and ((i + 1) % row_len == 0 or i + 1 == n):
            row = i // row_len
            if not keep[row * row_len : (row + 1) * row_len].all():
                on_row(row, tokens)
    return tokens
