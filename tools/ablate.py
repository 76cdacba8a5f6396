"""Rank every attention head by how much the model's bits/dim rises without it.

    python -m tools.ablate --model assets/models/dense --images 200
    python -m tools.ablate --model assets/models/strided --images 200 --mode zero --out rank.csv

Each head is removed alone (analysis/ablation.py) and the test bits/dim measured on ``--images``
test images spread evenly over the split. ``--mode mean`` (the default) replaces the head's
output by its per-position mean over ``--reference`` training images; ``--mode zero`` sets it
to 0. Prints the ranking table (layer, head, type, bits/dim without the head, the rise, mode)
and with ``--out`` writes it as JSON or CSV, by the suffix. Head types are those of
python -m tools.analyze (row, column, local, sparse, global), measured on a few of the same test
images (``--types auto``), read from a tools.analyze JSON (``--types PATH``) or left out
(``--types none``).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from analysis.ablation import MODES, head_means, rank_heads
from analysis.learned import analyze_model, pick_images
from kernels.layouts import dense
from models.checkpoint import CheckpointError, load_config, load_model
from models.datasets import DatasetError, load_images
from models.model import SparseTransformer
from models.tokens import images_to_tokens
from tools.cli import (
    Parser,
    UsageError,
    check_output_file,
    read_input,
    run_main,
    write_atomic,
)

MAX_JSON_BYTES = 64 * 2**20  # a tools.analyze JSON is tens of kB

MAX_IMAGES = 10_000  # the size of the Fashion-MNIST and CIFAR-10 test splits
TYPE_IMAGES = 16  # images whose attention decides the head types with --types auto
OUT_SUFFIXES = (".json", ".csv")


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m tools.ablate", description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=Path("assets/models/dense"))
    p.add_argument("--images", type=int, default=200, help=f"test images, 1..{MAX_IMAGES}")
    p.add_argument("--mode", choices=MODES, default="mean")
    p.add_argument(
        "--reference", type=int, default=200, help="training images for the mean (--mode mean)"
    )
    p.add_argument("--data", default="fashion-mnist", help="fashion-mnist | cifar10:DIR | ...")
    p.add_argument("--types", default="auto", help="auto | none | a tools.analyze JSON")
    p.add_argument("--out", type=Path, default=None, help="write the ranking: .json or .csv")
    p.add_argument("--batch-size", type=int, default=20)
    p.add_argument("--threads", type=int, default=None)
    return p


def check_args(args: argparse.Namespace) -> None:
    """Every argument that can be checked before the work starts; UsageError if bad."""
    for name, value in (("--images", args.images), ("--reference", args.reference)):
        if not 1 <= value <= MAX_IMAGES:
            raise UsageError(f"{name} must be between 1 and {MAX_IMAGES:,}, got {value}")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.threads is not None and not 1 <= args.threads <= 1024:
        raise UsageError(f"--threads must be between 1 and 1,024, got {args.threads}")
    if not args.model.is_dir():
        raise UsageError(f"--model {args.model}: no such model directory")
    load_config(args.model)  # its kind, size and bounds, before any work (CheckpointError)
    if args.types not in ("auto", "none"):
        from models.files import check_file

        if not Path(args.types).exists() and not Path(args.types).is_symlink():
            raise UsageError(f"--types {args.types}: no such file (or say auto or none)")
        check_file(Path(args.types), MAX_JSON_BYTES, what="--types", error=UsageError)
    if args.out is not None:
        check_out(args.out)


def check_out(out: Path) -> None:
    """The output file must have a known suffix and be writable, so an hour of work is never
    lost to a typo in its name."""
    if out.suffix.lower() not in OUT_SUFFIXES:
        raise UsageError(f"--out {out}: the name must end in .json or .csv")
    if out.is_dir():
        raise UsageError(f"--out {out} is a directory")
    folder = out.parent
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--out {out}: {folder} is a file, not a folder")
    if not folder.is_dir():
        raise UsageError(f"--out {out}: the folder {folder} does not exist")
    check_output_file(out, OUT_SUFFIXES)  # a file made and removed: os.access lies to root


def reference_tokens(data: str, model: SparseTransformer, count: int) -> torch.Tensor:
    """``count`` training images spread evenly over the split, as tokens [count, N]: the mean
    a head is replaced by comes from images the evaluation does not use."""
    images = load_images(data, "train", model.config.geometry)
    idx = np.linspace(0, len(images) - 1, min(count, len(images))).astype(int)
    return images_to_tokens(images[idx])


def head_types(model: SparseTransformer, tokens: torch.Tensor, how: str) -> dict | None:
    """(layer, head) -> type: measured on ``tokens`` ("auto"), read from a JSON, or None."""
    if how == "none":
        return None
    if how == "auto":
        # dense(): the type depends only on where the head looks, not on a layout's coverage
        rows = analyze_model(model, tokens, dense())
    else:
        data = read_input(Path(how), MAX_JSON_BYTES, flag="--types")
        try:
            rows = json.loads(data.decode())["heads"]
        except (ValueError, KeyError, TypeError) as e:
            raise UsageError(f"--types {how}: not a tools.analyze JSON ({e})") from e
    return {(int(r["layer"]), int(r["head"])): r.get("type") for r in rows}


def format_table(rows: list[dict], meta: dict) -> str:
    lines = [
        f"{meta['model']}: {meta['bpd_intact']:.4f} bits/dim intact on {meta['images']} test "
        f"images; each head {meta['mode']}-ablated alone ({meta['seconds']:.1f} s)",
        "",
        "| rank | layer | head | type | bits/dim without it | rise | mode |",
        "|---|---|---|---|---|---|---|",
    ]
    for rank, r in enumerate(rows, 1):
        lines.append(
            f"| {rank} | {r['layer']} | {r['head']} | {r['type'] or '-'} | {r['bpd']:.4f} "
            f"| {r['rise']:+.4f} | {r['mode']} |"
        )
    return "\n".join(lines)


def write(out: Path, rows: list[dict], meta: dict) -> None:
    """The ranking as JSON or CSV, written whole or not at all."""
    if out.suffix.lower() == ".json":
        write_atomic(out, json.dumps({**meta, "heads": rows}, indent=1) + "\n")
        return
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(out, table.getvalue())


def main(argv: list[str] | None = None) -> int:
    """The command line: bad input is one ``error:`` line and exit status 2 (tools/cli.py)."""
    return run_main(_main, argv)


def _main(argv: list[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
        check_args(args)
        if args.threads:
            torch.set_num_threads(args.threads)
        model = load_model(args.model)
        tokens = pick_images(args.data, model.config.geometry, args.images)
        ref = reference_tokens(args.data, model, args.reference) if args.mode == "mean" else None
        types = head_types(model, tokens[:TYPE_IMAGES], args.types)
    except (UsageError, CheckpointError, DatasetError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    means = head_means(model, ref, batch_size=args.batch_size) if ref is not None else None
    rows = rank_heads(
        model,
        tokens,
        mode=args.mode,
        means=means,
        head_types=types,
        batch_size=args.batch_size,
        progress=sys.stderr.isatty(),
    )
    seconds = time.perf_counter() - start
    for r in rows:
        r.update({k: round(r[k], 6) for k in ("bpd", "bpd_intact", "rise")})
    meta = {
        "model": str(args.model),
        "mode": args.mode,
        "images": len(tokens),
        "reference_images": 0 if ref is None else len(ref),
        "bpd_intact": rows[0]["bpd_intact"],
        "seconds": round(seconds, 1),
        "threads": torch.get_num_threads(),
        "command": "python -m tools.ablate " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    print(format_table(rows, meta))
    if args.out is not None:
        write(args.out, rows, meta)
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
