"""Measure a model's learned attention against a prescribed layout, per layer and head.

    python -m tools.analyze --model assets/models/dense --layout strided --images 64
    python -m tools.analyze --model assets/models/dense --layout fixed --search --out analysis/

Prints the per layer x head table (coverage with its parts, entropy, k90, distance in pixels,
same-row / same-column shares, head type; mean and spread over the images) and writes it as
JSON and CSV. ``--search`` adds the layout search: for candidate strided(l) and fixed(l, c), the
share of the model's attention each would keep, against its density.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import torch

from analysis.learned import analyze_model, layout_search, pick_images, search_candidates
from kernels.layouts import Layout, image_layout_spec, parse_layout
from models.checkpoint import load_model
from tools.cli import Parser, UsageError, check_output_dir, int_range, run_main, write_atomic

MAX_IMAGES = 10_000  # the size of the Fashion-MNIST and CIFAR-10 test splits


def format_table(rows: list[dict], layout: Layout) -> str:
    parts = [
        k[len("coverage_") :]
        for k in rows[0]
        if k.startswith("coverage_") and not k.endswith("_std")
    ]
    head = [
        "layer",
        "head",
        "coverage",
        *parts,
        "entropy (bits)",
        "k90",
        "distance (px)",
        "same row",
        "same col",
        "type",
    ]
    lines = [
        f"learned attention vs {layout!r} ({rows[0]['images']} images; mean ± std)",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rows:
        cells = [str(r["layer"]), str(r["head"]), f"{r['coverage']:.3f} ± {r['coverage_std']:.3f}"]
        cells += [f"{r['coverage_' + p]:.3f}" for p in parts]
        cells += [
            f"{r['entropy']:.2f} ± {r['entropy_std']:.2f}",
            f"{r['k90']:.1f}",
            f"{r['distance']:.2f}",
            f"{r['same_row']:.2f}",
            f"{r['same_col']:.2f}",
            r["type"],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_search(rows: list[dict]) -> str:
    lines = [
        "| layout | density | coverage (mean) | coverage (worst head) | per layer |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        per = ", ".join(f"{x:.2f}" for x in r["coverage_per_layer"])
        lines.append(
            f"| `{r['layout']}` | {r['density']:.4f} | {r['coverage']:.3f} "
            f"| {r['coverage_min_head']:.3f} | {per} |"
        )
    return "\n".join(lines)


def parser() -> Parser:
    p = Parser(prog="python -m tools.analyze", description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=Path("assets/models/dense"))
    p.add_argument("--layout", default="strided", help="strided | fixed | a layout spec")
    p.add_argument("--images", type=int_range(1, MAX_IMAGES), default=64)
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--search", action="store_true", help="also the layout search table")
    p.add_argument("--out", type=Path, default=Path("analysis"), help="a folder for .json, .csv")
    p.add_argument("--threads", type=int_range(1, 1024), default=None)
    return p


def main(argv: list[str] | None = None) -> int:
    """The command line: bad input is one ``error:`` line and exit status 2 (tools/cli.py)."""
    return run_main(run, argv)


def run(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    check_output_dir(args.out)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model)
    layout = parse_layout(
        image_layout_spec(args.layout, model.config.row_stride, model.config.block_size)
    )
    layout.check_heads(model.config.n_head)
    stem = f"{args.model.name}_vs_{layout.name.split('(')[0]}"
    outputs = [args.out / f"{stem}.json", args.out / f"{stem}.csv"]
    for path in outputs:
        if path.exists() and not path.is_file():
            raise UsageError(f"--out {args.out}: {path} exists and is not a file")
    tokens = pick_images(args.data, model.config.geometry, args.images)
    rows = analyze_model(model, tokens, layout)
    result = {
        "model": str(args.model),
        "layout": repr(layout),
        "images": len(tokens),
        "command": "python -m tools.analyze " + " ".join(sys.argv[1:] if argv is None else argv),
        "heads": rows,
    }
    if args.search:
        search = layout_search(model, tokens, search_candidates(model.config.geometry))
        result["search"] = search
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    # the files first: a reader that leaves early (``| head -1``) or Ctrl-C during the printing
    # cannot lose the analysis
    write_atomic(outputs[0], json.dumps(result, indent=1) + "\n")
    write_atomic(outputs[1], table.getvalue())
    print(format_table(rows, layout))
    if args.search:
        print("\nlayout search: the share of this model's attention each layout keeps\n")
        print(format_search(search))
    print(f"\nwrote {args.out / stem}.json and .csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
