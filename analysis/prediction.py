"""What the model predicts at every token, and where the true value surprised it.

``logits[:, i]`` is the model's distribution of token i given the tokens before it
(docs/DESIGN.md, "The model"), so one forward pass over an image gives, at every position:

    predicted_probs     p(v | tokens < i) for the 256 values v                 [B, N, 256]
    token_bits          -log2 p(true value): the surprise, in bits             [B, N]
    entropy_bits        the spread of the prediction before seeing the value   [B, N]
    pixel_bits          token_bits on the image grid                           [B, H, W, C]
    mean_pixel_bits     pixel_bits averaged over many images, in batches       [H, W, C]

The mean of token_bits over an image's tokens is that image's bits/dim, the number
models.evaluation.evaluate_bpd reports, so the bits map is exactly where the bits/dim go. The
softmax and logarithms are taken in float64: a bits map is summed over thousands of tokens and
compared with the evaluator's float64 sum.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from analysis.maps import token_map
from models.model import NO_INTERVENTION, Intervention, SparseTransformer, evaluating

LN2 = math.log(2)


def _batches(tokens: Tensor, batch_size: int) -> Iterator[Tensor]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [B, N], got shape {tuple(tokens.shape)}")
    if len(tokens) == 0:
        raise ValueError("no images: tokens is empty")
    for s in range(0, len(tokens), batch_size):
        yield tokens[s : s + batch_size]


@torch.no_grad()
def _logits(
    model: SparseTransformer, tokens: Tensor, intervention: Intervention = NO_INTERVENTION
) -> Tensor:
    """logits [b, N, 256] in float64 on the CPU, the model run in eval mode (no dropout)."""
    with evaluating(model):
        device = next(model.parameters()).device
        return model(tokens.to(device=device, dtype=torch.long), intervention).double().cpu()


def log_probs(logits: Tensor) -> Tensor:
    """Natural-log probabilities [..., 256] from logits [..., 256], in float64."""
    return F.log_softmax(logits.double(), dim=-1)


def bits_of(logits: Tensor, tokens: Tensor) -> Tensor:
    """-log2 p(tokens) [B, N] from logits [B, N, 256]: the surprise of each true value."""
    logp = log_probs(logits)  # [B, N, 256]
    true = logp.gather(-1, tokens.to(logp.device, torch.long)[..., None])[..., 0]  # [B, N]
    return -true / LN2


def entropy_bits(probs: Tensor) -> Tensor:
    """Entropy in bits of distributions [..., 256] -> [...]; 8 for the uniform one.

    Low entropy with high token_bits is a confident mistake; high entropy with high bits is a
    value the model knew it could not guess."""
    p = probs.double()
    plogp = torch.where(p > 0, p * torch.log2(p), torch.zeros_like(p))  # 0 log 0 = 0
    return -plogp.sum(-1)


def predicted_probs(
    model: SparseTransformer,
    tokens: Tensor,
    *,
    batch_size: int = 16,
    intervention: Intervention = NO_INTERVENTION,
) -> Tensor:
    """p(v | tokens < i) for every image, position and value: float64 [B, N, 256] on the CPU."""
    batches = _batches(tokens, batch_size)
    return torch.cat([log_probs(_logits(model, t, intervention)).exp() for t in batches])


def token_bits(
    model: SparseTransformer,
    tokens: Tensor,
    *,
    batch_size: int = 16,
    intervention: Intervention = NO_INTERVENTION,
) -> Tensor:
    """-log2 p(true value) at every token: float64 [B, N] on the CPU."""
    batches = _batches(tokens, batch_size)
    return torch.cat([bits_of(_logits(model, t, intervention), t) for t in batches])


def pixel_bits(
    model: SparseTransformer,
    tokens: Tensor,
    *,
    batch_size: int = 16,
    intervention: Intervention = NO_INTERVENTION,
) -> Tensor:
    """token_bits on the image grid: float64 [B, H, W, C]."""
    bits = token_bits(model, tokens, batch_size=batch_size, intervention=intervention)
    return token_map(bits, model.config.geometry)


def mean_pixel_bits(
    model: SparseTransformer,
    tokens: Tensor,
    *,
    batch_size: int = 16,
    intervention: Intervention = NO_INTERVENTION,
) -> Tensor:
    """pixel_bits averaged over the images: float64 [H, W, C].

    A running sum over batches, so memory is one batch's logits whatever the number of images.
    """
    total = torch.zeros(model.config.block_size, dtype=torch.float64)
    for t in _batches(tokens, batch_size):
        total += bits_of(_logits(model, t, intervention), t).sum(0)  # [N]
    return token_map(total / len(tokens), model.config.geometry)
