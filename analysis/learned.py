"""Learned attention of a model on real images, scored against prescribed layouts.

Runs the model's captures over images and hands their rows, as numpy, to analysis.metrics; the
layout search scores candidate strided and fixed layouts. The command line is tools/analyze.py
(`python -m tools.analyze`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from analysis.metrics import (
    aggregate,
    default_queries,
    head_metrics,
    head_type,
    layout_coverage,
)
from kernels.layouts import Layout, fixed, strided
from models.datasets import load_images
from models.model import SparseTransformer
from models.tokens import images_to_tokens


def pick_images(data: str, geometry, count: int) -> torch.Tensor:
    """``count`` test images spread evenly over the split, as tokens [count, N]."""
    images = load_images(data, "test", geometry)
    idx = np.linspace(0, len(images) - 1, min(count, len(images))).astype(int)
    return images_to_tokens(images[idx])


def analyze_model(
    model: SparseTransformer, tokens: torch.Tensor, layout: Layout, *, batch: int = 8
) -> list[dict]:
    """One row per (layer, head): each metric's mean and std over the images, and the type."""
    return analyze_layouts(model, tokens, [layout], batch=batch)[0]


def analyze_layouts(
    model: SparseTransformer,
    tokens: torch.Tensor,
    layouts: Sequence[Layout],
    *,
    batch: int = 8,
    workers: int = 1,
) -> list[list[dict]]:
    """analyze_model's table for each of ``layouts``, from one capture: the metrics that do not
    depend on a layout (entropy, k90's sort, distance, shares) are measured once, coverage once
    per layout. ``workers`` threads measure batches while the next is captured (numpy releases
    the GIL; the captures stay in this thread)."""
    geometry = model.config.geometry
    queries = default_queries(geometry)
    heads = list(range(model.config.n_head))

    def measure(probs: np.ndarray) -> list[dict[str, np.ndarray]]:
        common = head_metrics(probs, queries, geometry, None, heads)  # each [b, H]
        return [common | layout_coverage(probs, queries, lay, heads) for lay in layouts]

    pending: list[tuple[int, Future]] = []  # (layer, measured batch) in capture order
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for s in range(0, len(tokens), batch):
            caps = model.capture(
                tokens[s : s + batch], form="rows", queries=torch.from_numpy(queries)
            )
            for layer, rows in caps.items():
                pending.append((layer, pool.submit(measure, rows.probs.numpy())))
        # per layout, per layer: each metric's values over all the images
        per_layer = [{} for _ in layouts]
        for layer, done in pending:
            for k, m in enumerate(done.result()):
                for name, v in m.items():
                    per_layer[k].setdefault(layer, {}).setdefault(name, []).append(v)
    tables = []
    for layout, layers in zip(layouts, per_layer, strict=True):
        table = []
        for layer, metrics in layers.items():
            stats = aggregate({k: np.concatenate(v) for k, v in metrics.items()})
            for h in heads:
                row = {"layer": layer, "head": h, "layout": repr(layout), "images": len(tokens)}
                for k, (mean, std) in stats.items():
                    row[k] = round(float(mean[h]), 4)
                    row[f"{k}_std"] = round(float(std[h]), 4)
                table.append(row)
            rows = table[-len(heads) :]  # this layer's, typed from their (rounded) means
            kinds = head_types({k: [r[k] for r in rows] for k in stats})
            for row, kind in zip(rows, kinds, strict=True):
                row["type"] = kind
        tables.append(table)
    return tables


def head_types(metrics: Mapping[str, np.ndarray]) -> list[str]:
    """The type of every head (analysis.metrics.head_type) from its metrics, {name: [..., H]}:
    each metric's mean over all but the last (head) axis; the one rule the timeline, the
    ablation ranking and the tables of this module type heads by."""
    values = {k: np.asarray(v, dtype=np.float64) for k, v in metrics.items()}
    count = next(iter(values.values())).shape[-1]
    return [
        head_type({k: float(v[..., h].mean()) for k, v in values.items()}) for h in range(count)
    ]


def model_head_types(
    model: SparseTransformer, tokens: torch.Tensor, *, query_stride: int = 7
) -> dict[tuple[int, int], str]:
    """Each (layer, head)'s type on ``tokens`` [B, N], from its rows at every
    ``query_stride``-th query from the second image row on (the timeline's queries; reading
    every query takes that many times longer, and gives the same types to within the
    thresholds)."""
    geometry = model.config.geometry
    queries = default_queries(geometry)[::query_stride]
    caps = model.capture(tokens, form="rows", queries=torch.from_numpy(queries))
    out = {}
    for layer, cap in caps.items():
        metrics = head_metrics(cap.probs.float().numpy(), queries, geometry)  # each [B, H]
        for h, kind in enumerate(head_types(metrics)):
            out[(layer, h)] = kind
    return out


def search_candidates(geometry) -> list[Layout]:
    """strided(l) and fixed(l, c) around one image row (l = row / 2, row, 2 rows, 3 rows)."""
    row = geometry.row_stride
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
    queries = torch.from_numpy(default_queries(geometry))
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
