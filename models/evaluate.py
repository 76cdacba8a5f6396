"""Evaluate trained models: test bits/dim and time per training iteration, as a table.

    python -m models.evaluate assets/models/dense assets/models/strided assets/models/fixed

Bits/dim is the mean negative log2-likelihood per 8-bit sub-pixel over the whole test split
(10,000 Fashion-MNIST images unless --limit). Time per iteration is one AdamW training step
(forward, backward, update) of the model's own layout at a fixed batch, the median of several.
With --write, each model's numbers are stored as ``eval.json`` in its directory, which is what
the model card (python -m models.card) is formatted from.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from models.checkpoint import CheckpointError, load_model
from models.data import DatasetError, load_images
from models.model import SparseTransformer

EVAL_FILE = "eval.json"


@torch.no_grad()
def evaluate_bpd(
    model: SparseTransformer,
    tokens: torch.Tensor,
    *,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> float:
    """Mean bits per dimension of ``tokens`` (uint8 or long [N, T]) under ``model``.

    Sums the exact per-token NLL in float64 over all N*T tokens, so the result does not depend
    on the batch size.
    """
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    batches = range(0, len(tokens), batch_size)
    for s in tqdm(batches, desc="eval", disable=not progress, leave=False):
        x = tokens[s : s + batch_size].to(device=device, dtype=torch.long)  # [b, T]
        logits = model(x).float()  # [b, T, 256]
        nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), x.flatten(), reduction="sum")
        total += float(nll.double())
        count += x.numel()
    model.train(was_training)
    return total / count / math.log(2)


def time_train_step(
    model: SparseTransformer, *, batch_size: int = 16, iters: int = 5, device="cpu"
) -> float:
    """Median seconds of one training step (fresh copy of the model, AdamW, random tokens)."""
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


def histogram_baseline_bpd(train: np.ndarray, test: np.ndarray) -> float:
    """Bits/dim of a model that predicts each position from its own pixel histogram.

    train, test: uint8 [N, T]. Counts are add-one (Laplace) smoothed so no test value has zero
    probability. The uniform distribution is the other baseline: exactly 8 bits/dim.
    """
    t = train.shape[1]
    flat = (np.arange(t) * 256)[None, :] + train.astype(np.int64)  # [N, T]: position*256+value
    counts = 1.0 + np.bincount(flat.reshape(-1), minlength=t * 256).reshape(t, 256)  # [T, 256]
    logp = np.log2(counts / counts.sum(axis=1, keepdims=True))  # [T, 256]
    return float(-logp[np.arange(t)[None, :], test].mean())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m models.evaluate", description=__doc__.split("\n")[0]
    )
    p.add_argument("models", nargs="+", type=Path, help="model directories")
    p.add_argument(
        "--data", default="fashion-mnist", help="fashion-mnist | cifar10:DIR | folder:DIR"
    )
    p.add_argument("--limit", type=int, default=None, help="evaluate on the first N test images")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--timing-batch", type=int, default=16, help="batch for time per iteration")
    p.add_argument("--timing-iters", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--baseline", action="store_true", help="also the pixel-histogram baseline")
    p.add_argument("--write", action="store_true", help="store the results as MODEL/eval.json")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    try:
        for directory in args.models:
            model = load_model(directory, device=device)
            images = load_images(args.data, "test", model.config.geometry)[: args.limit]
            tokens = torch.from_numpy(images.reshape(len(images), -1))
            bpd = evaluate_bpd(model, tokens, batch_size=args.batch_size, device=device)
            step_s = time_train_step(
                model, batch_size=args.timing_batch, iters=args.timing_iters, device=device
            )
            row = {
                "model": str(directory),
                "layout": repr(model.layouts[0]) if len(set(model.layouts)) == 1 else "interleaved",
                "params": model.num_params(),
                "test_bpd": round(bpd, 4),
                "test_images": len(tokens),
                "time_per_iter_s": round(step_s, 4),
                "timing_batch": args.timing_batch,
                "device": device,
                "threads": torch.get_num_threads(),
                "command": "python -m models.evaluate " + " ".join(sys.argv[1:]),
            }
            rows.append(row)
            if args.write:
                (directory / EVAL_FILE).write_text(json.dumps(row, indent=1) + "\n")
        if args.baseline:
            g = rows[0] if rows else None
            geometry = load_model(args.models[0]).config.geometry if g else None
            train = load_images(args.data, "train", geometry)
            test = load_images(args.data, "test", geometry)[: args.limit]
            base = histogram_baseline_bpd(
                train.reshape(len(train), -1), test.reshape(len(test), -1)
            )
    except (CheckpointError, DatasetError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(rows))
    if args.baseline:
        print(f"\npixel-histogram baseline: {base:.4f} bits/dim; uniform: 8.0000 bits/dim")
    return 0


def format_table(rows: list[dict]) -> str:
    """A Markdown table of evaluation rows."""
    lines = [
        "| model | layout | params | test bits/dim | time / iter (s) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | `{r['layout']}` | {r['params']:,} | {r['test_bpd']:.4f} "
            f"| {r['time_per_iter_s']:.3f} (batch {r['timing_batch']}, {r['device']}) |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
