"""Train a Sparse Transformer on images.

    python -m tools.train --preset fmnist-small --layout strided --steps 20000 --out runs/strided
    python -m tools.train --preset fmnist-medium --layout strided --minutes 8 --out runs/strided
    torchrun --nproc_per_node=8 -m tools.train ...      # the same script on K GPUs (DDP)

The paper's recipe (docs/DESIGN.md, "What the paper reports"): AdamW, linear warm-up then
cosine decay, gradient clipping at 1.0, weight decay 0.01 on matrices. bf16 autocast on CUDA
(``--dtype``: bf16 or fp32 anywhere), ``--compile`` for torch.compile. The recipe of the deeper
GPU models: ``--preset fmnist-deep --dtype bf16 --compile`` (scripts/gpu_train.sh).
Batches are a pure function of (seed, step) — an epoch-wise shuffle — so a resumed run sees
exactly the batches an uninterrupted one would, and the weights it ends with are the same.

The output directory is a loadable model directory (config.json + model.safetensors, see
models/checkpoint.py, and ``run.json``: the record of the run: command, data, steps, wall time,
device, train / test bits per dim) plus ``checkpoints/step-N/``, the newest complete checkpoint
(the model, optimizer moments and RNG state, the record, and a manifest of their SHA-256 written
last), which ``--resume`` continues from exactly (models/run_folder.py); on a finished run it says
so and leaves the run alone (exit status 0). ``--resume`` refuses a
folder no resumable run wrote (a shipped model) and settings other than the run's; training
without it refuses a folder that already holds a model. A loss or gradient that turns NaN stops
the run (exit status 1) with its last good checkpoint kept.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

from models.model import PRESETS
from models.training import (
    DTYPES,
    TrainConfig,
    TrainingDiverged,
    check_train_config,
    model_config,
    train,
)
from tools.cli import (
    Parser,
    UsageError,
    check_output_dir,
    finite_float,
    int_range,
    non_negative_int,
    positive_int,
    run_main,
)

INF = float("inf")
# --minutes at most a week: --steps is bounded (2^31), and a week at 1 ms a step stays far below
MAX_MINUTES = 7 * 24 * 60.0


def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, argparse.Namespace]:
    p = Parser(prog="python -m tools.train", description=__doc__.split("\n")[0])
    d = TrainConfig()
    p.add_argument("--preset", default=d.preset, choices=list(PRESETS))
    p.add_argument("--layout", default=d.layout, help="dense | strided | fixed | a layout spec")
    p.add_argument(
        "--data",
        default=d.data,
        help="fashion-mnist[:DIR] | cifar10:DIR | folder:DIR | photos[:DIR] (colour patches of the "
        "photographs installed packages ship; not data of CIFAR's breadth)",
    )
    counts = {
        "steps": positive_int,
        "batch_size": int_range(1, 65_536),
        "warmup": non_negative_int,
        "eval_every": positive_int,
        "eval_images": positive_int,
        "seed": non_negative_int,
    }
    for name, kind in counts.items():
        p.add_argument(f"--{name.replace('_', '-')}", type=kind, default=getattr(d, name))
    rates = {
        "lr": finite_float(0.0, 10.0, lo_open=True),
        "min_lr_ratio": finite_float(0.0, 1.0),
        "weight_decay": finite_float(0.0, 10.0),
        "grad_clip": finite_float(0.0, INF, lo_open=True),
    }
    for name, kind in rates.items():
        p.add_argument(f"--{name.replace('_', '-')}", type=kind, default=getattr(d, name))
    p.add_argument(
        "--minutes",
        type=finite_float(0.0, MAX_MINUTES, lo_open=True),
        default=None,
        help="a time budget that sets --steps (see run.json); at most a week (10080)",
    )
    p.add_argument("--dropout", type=finite_float(0.0, 0.99), default=None)
    p.add_argument(
        "--size",
        type=int_range(1, 256),
        default=None,
        help="image side (square), instead of the preset's; Fashion-MNIST at a side that "
        "divides 28 (14, 7) is downsampled by block means, e.g. --size 14 (196 tokens)",
    )
    p.add_argument(
        "--dtype",
        default=d.dtype,
        choices=list(DTYPES),
        help="bf16: bf16 autocast (weights and optimizer stay float32); fp32; auto: bf16 on "
        "CUDA, fp32 on the CPU (bf16 works on a CPU, but slower than fp32)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model, the attention kernels left outside the graph (a GPU "
        "speed-up; tens of seconds of compilation first)",
    )
    p.add_argument("--threads", type=int_range(1, 1024), default=None)
    p.add_argument("--out", type=Path, required=True, help="run directory (a model directory)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument(
        "--stop-at", type=positive_int, default=None, help="stop (with a checkpoint) at this step"
    )
    p.add_argument(
        "--timeline-probes",
        type=int_range(0, 64),
        default=0,
        help="record attention snapshots on N probe test images at log-spaced steps "
        "(timeline.npz + timeline.json in --out; analysis/timeline.py); 0: none",
    )
    args = p.parse_args(argv)
    fields = {k: v for k, v in vars(args).items() if k in asdict(d)}
    return TrainConfig(**fields), args


def main(argv: list[str] | None = None) -> int:
    """The command line: bad input is one ``error:`` line and exit status 2 (tools/cli.py); a
    run whose loss turns NaN stops with one ``error:`` line and exit status 1."""
    return run_main(run, argv)


def run(argv: list[str] | None = None) -> int:
    cfg, args = parse_args(argv)
    # everything checkable before the data is read: the settings, the layout, the folder
    check_train_config(cfg)
    check_memory(cfg, model_config(cfg))
    check_output_dir(args.out)
    try:
        record = train(
            cfg,
            args.out,
            resume=args.resume,
            stop_at=args.stop_at,
            timeline=timeline_recorder(args.timeline_probes),
        )
    except TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if record.final is not None:
        print(json.dumps(record.final))
    return 0


def memory_available() -> tuple[int, str]:
    """Bytes this rank's training may use, and where: the GPU's memory (the one torchrun's
    LOCAL_RANK names) when CUDA is there, as training picks it, else the machine's MemAvailable
    (/proc/meminfo; where that is missing the physical memory)."""
    import torch

    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0") or 0)
        props = torch.cuda.get_device_properties(local)
        return props.total_memory, f"the GPU's {props.total_memory / 2**30:.1f} GiB"
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) * 1024
                    return free, f"the {free / 2**30:.1f} GiB of memory available"
    except (OSError, ValueError, IndexError):
        pass
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (OSError, ValueError, AttributeError):
        return 2**63, "an unknown amount of memory"
    return total, f"the machine's {total / 2**30:.1f} GiB"


def check_memory(cfg: TrainConfig, config, available: tuple[int, str] | None = None) -> int:
    """Refuse (UsageError) a run whose estimated memory (models.training.training_memory:
    weights, gradients, AdamW moments and one step's activations, for this rank's share of
    --batch-size) exceeds what this machine has; returns the estimate. The model's size is
    bounded first (models.checkpoint.check_model_size), so the estimate allocates little."""
    from models.checkpoint import CheckpointError, check_model_size
    from models.training import training_memory

    try:
        check_model_size(config, f"--preset {cfg.preset}")
    except CheckpointError as e:
        raise UsageError(str(e)) from None
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    per_rank = max(1, cfg.batch_size // max(world, 1))
    need = training_memory(config, per_rank)
    have, where = memory_available() if available is None else available
    if need > have:
        fits = max(
            (b for b in (2**k for k in range(17)) if training_memory(config, b) <= have),
            default=0,
        )
        hint = (
            f"; --batch-size {fits * max(world, 1)} would fit"
            if fits
            else "; not even a batch of 1 fits"
        )
        raise UsageError(
            f"--batch-size {cfg.batch_size} needs about {need / 2**30:,.1f} GiB to train "
            f"{config.block_size} tokens an image ({per_rank} images a step on this rank), more "
            f"than {where}{hint}"
        )
    return need


def timeline_recorder(probes: int):
    """The recorder of --timeline-probes (analysis/timeline.py); None for 0."""
    if not probes:
        return None
    from analysis.timeline import TimelineRecorder

    return TimelineRecorder(probes)


if __name__ == "__main__":
    sys.exit(main())
