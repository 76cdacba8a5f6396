"""Measure a model's learned attention against a prescribed layout, per layer and head.

    python -m viz.analyze --model assets/models/dense --layout strided --images 64
    python -m viz.analyze --model assets/models/dense --layout fixed --search --out analysis/

Prints the per layer x head table (coverage with its parts, entropy, k90, distance in pixels,
same-row / same-column shares, head type; mean and spread over the images) and writes it as
JSON and CSV. ``--search`` adds the layout search: for candidate strided(l) and fixed(l, c), the
share of the model's attention each would keep, against its density.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
import torch

from kernels.layouts import Layout, fixed, parse_layout, strided
from models.checkpoint import CheckpointError, load_model
from models.data import DatasetError, load_images
from models.model import SparseTransformer
from models.train import layout_spec
from viz.analysis import aggregate, default_queries, head_metrics, head_type


def pick_images(data: str, geometry, count: int) -> torch.Tensor:
    """``count`` test images spread evenly over the split, as tokens [count, N]."""
    images = load_images(data, "test", geometry)
    idx = np.linspace(0, len(images) - 1, min(count, len(images))).astype(int)
    return torch.from_numpy(images[idx].reshape(len(idx), -1).astype(np.int64))


def analyze_model(
    model: SparseTransformer, tokens: torch.Tensor, layout: Layout, *, batch: int = 8
) -> list[dict]:
    """One row per (layer, head): each metric's mean and std over the images, and the type."""
    geometry = model.config.geometry
    queries = default_queries(geometry)
    heads = list(range(model.config.n_head))
    per_layer: dict[int, dict[str, list[torch.Tensor]]] = {}
    for s in range(0, len(tokens), batch):
        caps = model.capture(tokens[s : s + batch], form="rows", queries=queries)
        for layer, rows in caps.items():
            m = head_metrics(rows.probs, queries, geometry, layout, heads)  # each [b, H]
            for k, v in m.items():
                per_layer.setdefault(layer, {}).setdefault(k, []).append(v)
    table = []
    for layer, metrics in per_layer.items():
        stats = aggregate({k: torch.cat(v) for k, v in metrics.items()})
        for h in heads:
            row = {"layer": layer, "head": h, "layout": repr(layout), "images": len(tokens)}
            for k, (mean, std) in stats.items():
                row[k] = round(float(mean[h]), 4)
                row[f"{k}_std"] = round(float(std[h]), 4)
            row["type"] = head_type(row)
            table.append(row)
    return table


def search_candidates(geometry) -> list[Layout]:
    """strided(l) and fixed(l, c) around one image row (l = row / 2, row, 2 rows, 3 rows)."""
    row = geometry.width * geometry.channels
    ls = sorted({max(1, row // 2), row, 2 * row, 3 * row})
    out: list[Layout] = [strided(l) for l in ls]
    for l in ls:
        out += [fixed(l, c) for c in sorted({1, 2, max(1, l // 8), max(1, l // 4)}) if c <= l]
    return out


def layout_search(
    model: SparseTransformer, tokens: torch.Tensor, candidates: list[Layout], *, batch: int = 8
) -> list[dict]:
    """Per candidate: density, and the mean share of attention mass it keeps (over images,
    layers, heads and query rows), its minimum over heads, and its mean per layer."""
    geometry = model.config.geometry
    queries = default_queries(geometry)
    n, H = geometry.n_tokens, model.config.n_head
    masks = {}
    for c in candidates:
        h = torch.arange(H)[:, None, None]
        masks[c] = c.mask_mod(torch.tensor(0), h, queries[None, :, None], torch.arange(n))
    kept = {c: [] for c in candidates}  # per batch: [b, layers, H]
    for s in range(0, len(tokens), batch):
        caps = model.capture(tokens[s : s + batch], form="rows", queries=queries)
        probs = torch.stack([caps[i].probs for i in sorted(caps)], dim=1)  # [b, L, H, Q, N]
        for c in candidates:
            kept[c].append((probs * masks[c]).sum(-1).mean(-1))
    table = []
    for c in candidates:
        k = torch.cat(kept[c])  # [images, L, H]
        per_head = k.mean(0)  # [L, H]
        table.append(
            {
                "layout": repr(c),
                "density": round(c.density(n), 4),
                "coverage": round(float(per_head.mean()), 4),
                "coverage_min_head": round(float(per_head.min()), 4),
                "coverage_per_layer": [round(float(x), 4) for x in per_head.mean(1)],
            }
        )
    return sorted(table, key=lambda r: r["density"])


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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m viz.analyze", description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=Path("assets/models/dense"))
    p.add_argument("--layout", default="strided", help="strided | fixed | a layout spec")
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--search", action="store_true", help="also the layout search table")
    p.add_argument("--out", type=Path, default=Path("analysis"))
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        if args.images < 1:
            raise ValueError("--images must be >= 1")
        model = load_model(args.model)
        layout = parse_layout(layout_spec(args.layout, model.config))
        layout.check_heads(model.config.n_head)
        tokens = pick_images(args.data, model.config.geometry, args.images)
    except (CheckpointError, DatasetError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rows = analyze_model(model, tokens, layout)
    print(format_table(rows, layout))
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"{args.model.name}_vs_{layout.name.split('(')[0]}"
    result = {
        "model": str(args.model),
        "layout": repr(layout),
        "images": len(tokens),
        "command": "python -m viz.analyze " + " ".join(sys.argv[1:] if argv is None else argv),
        "heads": rows,
    }
    if args.search:
        search = layout_search(model, tokens, search_candidates(model.config.geometry))
        print("\nlayout search: the share of this model's attention each layout keeps\n")
        print(format_search(search))
        result["search"] = search
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    with open(args.out / f"{stem}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"\nwrote {args.out / stem}.json and .csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
