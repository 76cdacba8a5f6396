"""Train a Sparse Transformer on images.

    python -m tools.train --preset fmnist-small --layout strided --steps 20000 --out runs/strided
    python -m tools.train --preset fmnist-medium --layout strided --minutes 8 --out runs/strided
    torchrun --nproc_per_node=8 -m tools.train ...      # the same script on K GPUs (DDP)

The paper's recipe (docs/DESIGN.md, "What the paper reports"): AdamW, linear warm-up then
cosine decay, gradient clipping at 1.0, weight decay 0.01 on matrices. bf16 autocast on CUDA.
Batches are a pure function of (seed, step) — an epoch-wise shuffle — so a resumed run sees
exactly the batches an uninterrupted one would, and the weights it ends with are the same.

The output directory is a loadable model directory (config.json + model.safetensors, see
models/checkpoint.py) plus ``train_state.safetensors`` (optimizer moments and RNG state, for
``--resume``) and ``run.json`` (the record of the run: command, data, steps, wall time, device,
train / test bits per dim).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from models.checkpoint import CheckpointError
from models.datasets import DatasetError
from models.model import PRESETS
from models.training import TrainConfig, train


def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, argparse.Namespace]:
    p = argparse.ArgumentParser(prog="python -m tools.train", description=__doc__.split("\n")[0])
    d = TrainConfig()
    p.add_argument("--preset", default=d.preset, choices=list(PRESETS))
    p.add_argument("--layout", default=d.layout, help="dense | strided | fixed | a layout spec")
    p.add_argument("--data", default=d.data, help="fashion-mnist | cifar10:DIR | folder:DIR")
    for name in ("steps", "batch_size", "warmup", "eval_every", "eval_images", "seed"):
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(d, name))
    for name in ("lr", "min_lr_ratio", "weight_decay", "grad_clip"):
        p.add_argument(f"--{name.replace('_', '-')}", type=float, default=getattr(d, name))
    p.add_argument(
        "--minutes", type=float, default=None, help="a time budget that sets --steps (see run.json)"
    )
    p.add_argument("--dropout", type=float, default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, required=True, help="run directory (a model directory)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument(
        "--stop-at", type=int, default=None, help="stop (with a checkpoint) at this step"
    )
    p.add_argument("--save-all-ranks", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    fields = {k: v for k, v in vars(args).items() if k in asdict(d)}
    return TrainConfig(**fields), args


def main(argv: list[str] | None = None) -> int:
    cfg, args = parse_args(argv)
    try:
        if cfg.steps < 1 or cfg.batch_size < 1 or cfg.eval_every < 1:
            raise ValueError("--steps, --batch-size and --eval-every must be >= 1")
        if cfg.minutes is not None and not cfg.minutes > 0:
            raise ValueError("--minutes must be > 0")
        record = train(
            cfg,
            args.out,
            resume=args.resume,
            stop_at=args.stop_at,
            save_all_ranks=args.save_all_ranks,
        )
    except (DatasetError, CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if "final" in record:
        print(json.dumps(record["final"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
