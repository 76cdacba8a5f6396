"""Benchmark image completion: KV-cache decoding vs re-running the whole prefix, in one run.

    python -m tools.bench_sampling                 # CPU: the shipped models, 4 samples
    python -m tools.bench_sampling --device cuda   # GPU: adds a 32x32x3 model, 16 samples

Each row completes the bottom half of an image (the top half kept) and reports the wall time
of the whole completion and the time per decoding step (one new token for every sample).
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import date
from pathlib import Path

import torch

from models.checkpoint import CheckpointError, load_model
from models.completion import keep_mask
from models.evaluation import device_name
from models.model import ModelConfig, SparseTransformer
from models.sampling import sample
from tools.cli import Parser, int_range, run_main

ROOT = Path(__file__).resolve().parents[1] / "assets" / "models"


def time_completion(model: SparseTransformer, n_samples: int, *, use_cache: bool) -> float:
    """Seconds to sample the bottom half of one random image, ``n_samples`` times at once."""
    geometry = model.config.geometry
    device = next(model.parameters()).device
    image = torch.randint(0, 256, (geometry.n_tokens,), generator=torch.Generator().manual_seed(0))
    keep = keep_mask(geometry)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    sample(
        model, n_samples=n_samples, prefix=image.to(device), known=keep, seed=0, use_cache=use_cache
    )
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def device_arg(text: str) -> torch.device:
    """An argparse type: a torch device this machine has."""
    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"not a torch device: {text!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text}: no CUDA device on this machine")
    if device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"{text}: only cpu and cuda are benchmarked")
    return device


def main(argv: list[str] | None = None) -> int:
    """The command line: bad input is one ``error:`` line and exit status 2 (tools/cli.py)."""
    return run_main(_main, argv)


def _main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m tools.bench_sampling", description=__doc__)
    p.add_argument("--device", type=device_arg, default=torch.device("cpu"))
    p.add_argument(
        "--samples", type=int_range(1, 64), default=None, help="1-64; default: 4 on CPU, 16 on GPU"
    )
    p.add_argument("--no-uncached", action="store_true", help="skip the slow uncached baseline")
    args = p.parse_args(argv)
    device = args.device
    n_samples = args.samples or (16 if device.type == "cuda" else 4)
    models: list[tuple[str, SparseTransformer]] = []
    try:
        for name in ("dense", "strided", "fixed"):
            models.append((f"assets/models/{name}", load_model(ROOT / name, device=device)))
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if device.type == "cuda":  # the same architecture at CIFAR's shape, random weights
        base = models[1][1].config
        for layout in ("dense()", "strided(l=96)"):
            cfg = ModelConfig(
                **{**base.to_dict(), "height": 32, "width": 32, "channels": 3, "layout": layout}
            )
            models.append((f"32x32x3 {layout}", SparseTransformer(cfg).to(device).eval()))

    where = device_name(device)
    print(f"# completion benchmark, {date.today()}, {where}, torch {torch.__version__}")
    print(f"# {n_samples} samples, bottom half sampled, top half kept\n")
    print(
        "| model | layout | tokens sampled | cached: s / completion | ms / step "
        "| uncached: s / completion | speed-up |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, model in models:
        steps = int((~keep_mask(model.config.geometry)).sum())
        time_completion(model, n_samples, use_cache=True)  # warm-up: mask and row-index caches
        cached = time_completion(model, n_samples, use_cache=True)
        if args.no_uncached:
            uncached_s, ratio = "-", "-"
        else:
            uncached = time_completion(model, n_samples, use_cache=False)
            uncached_s, ratio = f"{uncached:.2f}", f"{uncached / cached:.1f}x"
        print(
            f"| {name} | `{model.layouts[0]!r}` | {steps} | {cached:.2f} "
            f"| {1000 * cached / steps:.2f} | {uncached_s} | {ratio} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
