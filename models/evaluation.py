"""Evaluation: test bits/dim, the time of one training step, and the pixel-histogram baseline.

The command line is tools/evaluate.py (`python -m tools.evaluate`).
"""

from __future__ import annotations

import math
import platform
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from models.model import NO_INTERVENTION, Intervention, SparseTransformer, evaluating

EVAL_FILE = "eval.json"


@torch.no_grad()
def evaluate_bpd(
    model: SparseTransformer,
    tokens: torch.Tensor,
    *,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    progress: bool = True,
    intervention: Intervention = NO_INTERVENTION,
) -> float:
    """Mean bits per dimension of ``tokens`` (uint8 or long [N, T]) under ``model``, run with
    ``intervention`` (models.model: another attention per layer, edited heads) if given.

    Sums the exact per-token NLL in float64 over all N*T tokens, so the result does not depend
    on the batch size.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(tokens) == 0:
        raise ValueError("no test images to evaluate on")
    total, count = 0.0, 0
    batches = range(0, len(tokens), batch_size)
    with evaluating(model):
        for s in tqdm(batches, desc="eval", disable=not progress, leave=False):
            x = tokens[s : s + batch_size].to(device=device, dtype=torch.long)  # [b, T]
            logits = model(x, intervention).float()  # [b, T, 256]
            # every token of the batch at once: logits [b*T, 256] against targets [b*T]
            nll = F.cross_entropy(logits.flatten(0, 1), x.flatten(), reduction="sum")
            total += float(nll.double())
            count += x.numel()
    return total / count / math.log(2)


def device_name(device: torch.device) -> str:
    """What a measurement ran on, for its record: the GPU's name, or the CPU and its threads."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def time_train_step(
    model: SparseTransformer,
    *,
    batch_size: int = 16,
    iters: int = 5,
    device: torch.device | str = "cpu",
) -> float:
    """Median seconds of one training step (fresh copy of the model, AdamW, random tokens)."""
    if batch_size < 1 or iters < 1:
        raise ValueError(f"batch_size and iters must be >= 1, got {batch_size} and {iters}")
    clone = SparseTransformer(model.config).to(device).train()
    opt = torch.optim.AdamW(clone.parameters(), lr=1e-4)
    x = torch.randint(0, 256, (batch_size, model.config.block_size), device=device)
    times = []
    for i in range(iters + 1):  # the first step warms up (allocations, mask caches)
        if device != "cpu" and torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        loss = clone.loss(x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device != "cpu" and torch.cuda.is_available():
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def histogram_baseline_bpd(
    train: np.ndarray | torch.Tensor, test: np.ndarray | torch.Tensor
) -> float:
    """Bits/dim of a model that predicts each position from its own pixel histogram.

    train, test: tokens [N, T] (uint8 or any integer type). Counts are add-one (Laplace) smoothed
    so no test value has zero probability. The uniform distribution is the other baseline:
    exactly 8 bits/dim.
    """
    train, test = np.asarray(train), np.asarray(test)
    t = train.shape[1]
    flat = (np.arange(t) * 256)[None, :] + train.astype(np.int64)  # [N, T]: position*256+value
    counts = 1.0 + np.bincount(flat.reshape(-1), minlength=t * 256).reshape(t, 256)  # [T, 256]
    logp = np.log2(counts / counts.sum(axis=1, keepdims=True))  # [T, 256]
    return float(-logp[np.arange(t)[None, :], test].mean())
