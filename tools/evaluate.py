"""Evaluate trained models: test bits/dim and time per training iteration, as a table.

    python -m tools.evaluate assets/models/dense assets/models/strided assets/models/fixed

Bits/dim is the mean negative log2-likelihood per 8-bit sub-pixel over the whole test split
(10,000 Fashion-MNIST images unless --limit). Time per iteration is one AdamW training step
(forward, backward, update) of the model's own layout at a fixed batch, the median of several.
With --write, each model's numbers are stored as ``eval.json`` in its directory, which is what
the model card (python -m tools.card) is formatted from.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from models.checkpoint import load_config, load_model
from models.datasets import load_images
from models.evaluation import EVAL_FILE, evaluate_bpd, histogram_baseline_bpd, time_train_step
from models.tokens import images_to_tokens
from tools.cli import Parser, check_output_file, int_range, positive_int, run_main, write_atomic


def parser() -> Parser:
    p = Parser(prog="python -m tools.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("models", nargs="+", type=Path, help="model directories")
    p.add_argument(
        "--data", default="fashion-mnist", help="fashion-mnist | cifar10:DIR | folder:DIR"
    )
    p.add_argument(
        "--limit", type=positive_int, default=None, help="evaluate on the first N test images"
    )
    p.add_argument("--batch-size", type=int_range(1, 4096), default=100)
    p.add_argument(
        "--timing-batch", type=int_range(1, 4096), default=16, help="batch for time per iteration"
    )
    p.add_argument("--timing-iters", type=int_range(1, 1000), default=5)
    p.add_argument("--threads", type=int_range(1, 1024), default=None)
    p.add_argument("--baseline", action="store_true", help="also the pixel-histogram baseline")
    p.add_argument("--write", action="store_true", help="store the results as MODEL/eval.json")
    return p


def main(argv: list[str] | None = None) -> int:
    """The command line: bad input is one ``error:`` line and exit status 2 (tools/cli.py)."""
    return run_main(run, argv)


def run(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    for directory in args.models:  # every model is read before the first is evaluated
        load_config(directory)
        if args.write:
            check_output_file(directory / EVAL_FILE, (".json",), flag="--write")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    for directory in args.models:
        model = load_model(directory, device=device)
        images = load_images(args.data, "test", model.config.geometry)[: args.limit]
        tokens = images_to_tokens(images, dtype=np.uint8)  # [N, T]
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
            "command": "python -m tools.evaluate " + " ".join(sys.argv[1:]),
        }
        rows.append(row)
        if args.write:
            write_atomic(directory / EVAL_FILE, json.dumps(row, indent=1) + "\n")
    if args.baseline:
        geometry = load_config(args.models[0]).geometry
        train = load_images(args.data, "train", geometry)
        test = load_images(args.data, "test", geometry)[: args.limit]
        base = histogram_baseline_bpd(
            images_to_tokens(train, dtype=np.uint8), images_to_tokens(test, dtype=np.uint8)
        )
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
