"""The sparsity frontier of a trained model: test bits/dim with its attention restricted to each
family of sparse attention, against the keys a query keeps.

    python -m tools.frontier --model assets/models/dense --images 256 --out frontier.json
    python -m tools.frontier --families strided,axial,topk --images 64 --out f.csv

Every point runs the model with one attention spec in every layer (analysis/frontier.py,
through models.model.Intervention): no retraining, the softmax renormalised over the kept keys.
The images are the first ``--images`` of the test split from ``--first`` on, recorded by index.
``--trained`` adds models evaluated under their own layouts on the same images (default: the
shipped strided and fixed models, when the model is the shipped dense one). Prints the table;
``--out`` writes JSON (everything, with each family's envelope and the fitted layouts) or CSV
(the points), by the suffix.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import io
import json
import platform
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from analysis.frontier import FAMILIES, measure_frontier
from models.checkpoint import CheckpointError, load_config, load_model
from models.datasets import DatasetError, load_images
from models.evaluation import evaluate_bpd
from models.tokens import images_to_tokens
from tools.cli import Parser, UsageError, check_output_file, run_main, write_atomic

MAX_IMAGES = 10_000
OUT_SUFFIXES = (".json", ".csv")
SHIPPED = Path("assets/models")


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m tools.frontier", description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=SHIPPED / "dense")
    p.add_argument("--families", default=",".join(FAMILIES), help="comma-separated families")
    p.add_argument("--images", type=int, default=256, help=f"test images, 1..{MAX_IMAGES}")
    p.add_argument("--first", type=int, default=0, help="index of the first test image")
    p.add_argument("--data", default="fashion-mnist", help="fashion-mnist | cifar10:DIR | ...")
    p.add_argument(
        "--trained",
        default="auto",
        help="models evaluated under their own layout, comma-separated folders, or auto / none",
    )
    p.add_argument("--out", type=Path, default=None, help="write the result: .json or .csv")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=None)
    return p


def check_args(args: argparse.Namespace) -> list[str]:
    """Every argument that can be checked before the work starts (UsageError); the families."""
    if not 1 <= args.images <= MAX_IMAGES:
        raise UsageError(f"--images must be between 1 and {MAX_IMAGES:,}, got {args.images}")
    if not 0 <= args.first < MAX_IMAGES:
        raise UsageError(f"--first must be between 0 and {MAX_IMAGES - 1:,}, got {args.first}")
    if args.batch_size < 1 or args.batch_size > 1024:
        raise UsageError(f"--batch-size must be between 1 and 1,024, got {args.batch_size}")
    if args.threads is not None and not 1 <= args.threads <= 1024:
        raise UsageError(f"--threads must be between 1 and 1,024, got {args.threads}")
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = [f for f in families if f not in FAMILIES]
    if not families or unknown:
        raise UsageError(
            f"--families: unknown {', '.join(unknown) or '(none given)'}; "
            f"choose from {', '.join(FAMILIES)}"
        )
    if not args.model.is_dir():
        raise UsageError(f"--model {args.model}: no such model directory")
    load_config(args.model)  # its kind, size and bounds, before any work (CheckpointError)
    for folder in trained_folders(args):
        if not folder.is_dir():
            raise UsageError(f"--trained {folder}: no such model directory")
        load_config(folder)
    if args.out is not None:
        if args.out.suffix.lower() not in OUT_SUFFIXES:
            raise UsageError(f"--out {args.out}: the name must end in .json or .csv")
        check_output_file(args.out, OUT_SUFFIXES)
    return list(dict.fromkeys(families))


def trained_folders(args: argparse.Namespace) -> list[Path]:
    if args.trained == "none":
        return []
    if args.trained == "auto":
        shipped_dense = args.model.resolve() == (SHIPPED / "dense").resolve()
        return [SHIPPED / "strided", SHIPPED / "fixed"] if shipped_dense else []
    return [Path(p.strip()) for p in args.trained.split(",") if p.strip()]


def format_table(result: dict) -> str:
    lines = [
        f"{result['model']}: dense {result['dense_bpd']:.4f} bits/dim on {result['images']} test "
        f"images (indices {result['image_indices'][0]}..{result['image_indices'][-1]}), "
        f"{result['seconds']:.0f} s",
        "",
        "| family | spec | keys a query | density | bits/dim | coverage | on envelope |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in result["points"]:
        on = p["spec"] in result["envelopes"][p["family"]]
        cov = "-" if p["coverage"] is None else f"{p['coverage']:.3f}"
        lines.append(
            f"| {p['family']} | `{p['spec']}` | {p['keys']:.1f} | {p['density']:.3f} "
            f"| {p['bpd']:.4f} | {cov} | {'yes' if on else ''} |"
        )
    for t in result["trained"]:
        lines.append(
            f"| trained | `{t['spec']}` ({t['model']}) | {t['keys']:.1f} | {t['density']:.3f} "
            f"| {t['bpd']:.4f} | - | |"
        )
    for f in result["fitted"]:
        lines.append(
            f"| fitted | per head, budget {f['budget']:.0%} | {f['keys']:.1f} "
            f"| {f['density']:.3f} | {f['bpd']:.4f} | {f['coverage']:.3f} | |"
        )
    return "\n".join(lines)


def write(out: Path, result: dict) -> None:
    """JSON (everything) or CSV (the points), written whole or not at all."""
    if out.suffix.lower() == ".json":
        write_atomic(out, json.dumps(result, indent=1) + "\n")
        return
    table = io.StringIO(newline="")
    fields = ["family", "spec", "keys", "density", "bpd", "coverage"]
    writer = csv.DictWriter(table, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(result["points"])
    write_atomic(out, table.getvalue())


def main(argv: list[str] | None = None) -> int:
    """The command line: bad input is one ``error:`` line and exit status 2 (tools/cli.py)."""
    return run_main(_main, argv)


def _main(argv: list[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
        families = check_args(args)
        if args.threads:
            torch.set_num_threads(args.threads)
        model = load_model(args.model)
        images = load_images(args.data, "test", model.config.geometry)
        if args.first + args.images > len(images):
            raise UsageError(
                f"--first {args.first} + --images {args.images} is past the {len(images):,} "
                f"test images"
            )
        indices = list(range(args.first, args.first + args.images))
        tokens = images_to_tokens(images[indices])
        trained = [load_model(f) for f in trained_folders(args)]
        for f, m in zip(trained_folders(args), trained, strict=True):
            if m.config.geometry != model.config.geometry:
                raise UsageError(f"--trained {f}: its images are not the model's")
    except (UsageError, CheckpointError, DatasetError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    bar = tqdm(total=1, desc="frontier", disable=not sys.stderr.isatty(), leave=False)

    def progress(done: int, total: int, label: str) -> None:
        bar.total = total
        bar.n = done
        bar.set_postfix_str(label[:40])
        bar.refresh()

    result = measure_frontier(model, tokens, families, batch=args.batch_size, progress=progress)
    bar.close()
    result["trained"] = []
    n = model.config.block_size
    for folder, m in zip(trained_folders(args), trained, strict=True):
        layouts = m.layouts
        start = time.perf_counter()
        result["trained"].append(
            {
                "model": str(folder),
                "spec": repr(layouts[0]) if len(set(layouts)) == 1 else "per layer",
                "density": sum(lay.density(n) for lay in layouts) / len(layouts),
                "keys": sum(lay.nnz(n) for lay in layouts) / len(layouts) / n,
                "bpd": evaluate_bpd(m, tokens, batch_size=args.batch_size, progress=False),
                "seconds": round(time.perf_counter() - start, 1),
            }
        )
    result.update(
        {
            "model": str(args.model),
            "data": args.data,
            "image_indices": indices,
            "command": "python -m tools.frontier "
            + " ".join(sys.argv[1:] if argv is None else argv),
            "date": datetime.date.today().isoformat(),
            "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
            "torch": torch.__version__,
        }
    )
    print(format_table(result))
    if args.out is not None:
        write(args.out, result)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
