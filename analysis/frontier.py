"""The sparsity frontier: a trained model's test bits/dim with its attention restricted to each
family of sparse attention, against the share of the keys it keeps.

Every point is one attention spec (a static layout of kernels/layouts.py or a selection of
kernels/selection.py) run in every layer of the model through the seam (models.model.
Intervention): the trained weights, the softmax renormalised over the kept keys, no retraining.
For each point:

    density     kept pairs / the N(N+1)/2 causal pairs (exact, from nnz)
    keys        kept pairs / N: the keys a query keeps on average
    bpd         test bits/dim of the images under that attention (models.evaluation.evaluate_bpd,
                the number tools.evaluate gives for a config naming the spec)
    coverage    the share of the intact model's attention mass that the kept keys hold, averaged
                over layers, heads, queries and images (1 = the restriction drops nothing)

A family's curve is the lower envelope of its points (``lower_envelope``): a choice that does
not follow the image (strided(l=21) on 28-pixel rows) does not stand for the family. ``fitted``
chooses, for each layer and head, the static candidate that keeps the most of that head's mass
within a budget, and evaluates that per-head arrangement (multihead) the same way: the paper's
way of choosing a layout, automated.

Coverage comes from the intact model's attention averaged over the images, [L, H, N, N] float64
(``AttentionMass``): a static layout's coverage is then one masked sum per layer and head, and
top-k's is read off the sorted rows for every k at once; MoBA's choice depends on each image's
scores, so its coverage is measured image by image.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from kernels.capture import capture_full
from kernels.layouts import Layout, multihead, parse_layout
from kernels.selection import MoBA, Selection, TopK, parse_attention
from models.evaluation import evaluate_bpd
from models.model import Intervention, SparseTransformer, evaluating
from models.tokens import Geometry

#: the families a frontier measures by default, static first, then the content-based ones
FAMILIES = (
    "local",
    "strided",
    "fixed",
    "dilated",
    "sinks",
    "axial",
    "neighborhood",
    "block_sparse",
    "bigbird",
    "topk",
    "moba",
)
#: the share of the causal pairs the points span
DENSITY_RANGE = (0.015, 0.45)
#: the budgets (densities) at which the fitted per-head layout is chosen
FIT_BUDGETS = (0.05, 0.1, 0.2)
#: coverage needs the [L, H, N, N] mean attention: up to this many tokens (28 x 28 x 1 is 784)
MAX_COVERAGE_N = 1024

Progress = Callable[[int, int, str], None]  # (done, total, what is being measured)


def family_candidates(family: str, geometry: Geometry) -> list[str]:
    """The parameter choices tried for ``family`` on images of ``geometry``, as specs: spread
    over about 2 % to 40 % of the causal pairs, with the choices aligned with the image (one
    row W, a block dividing W, columns every W) always among them and a few that are not."""
    W = geometry.row_stride
    half, quarter = max(1, W // 2), max(1, W // 4)
    table: dict[str, list[str]] = {
        "local": [f"local(l={max(1, int(W * r))})" for r in (0.5, 1, 2, 4, 6)],
        # one row and its multiples follow the image's columns; half and three quarters do not
        "strided": [f"strided(l={W * r})" for r in (1, 2, 4, 6)]
        + [f"strided(l={half})", f"strided(l={max(1, 3 * W // 4)})"],
        "fixed": [f"fixed(l={W}, c={c})" for c in (1, 2, 4, 8)]
        + [f"fixed(l={2 * W}, c=4)", f"fixed(l={4 * W}, c=16)"],
        "dilated": [f"dilated(w={w}, r={W})" for w in (8, 16)]
        + [f"dilated(w={w}, r=2)" for w in (W // 2, W, 2 * W, 4 * W)],
        "sinks": [f"sinks(s=4, w={int(W * r)})" for r in (0.5, 1, 2, 4, 6)],
        "axial": [f"axial(width={w})" for w in (half, W, 2 * W, 4 * W, 7 * W)],
        "neighborhood": [
            f"neighborhood(kh={kh}, kw={kw}, width={W})"
            for kh, kw in ((2, 5), (3, 7), (4, 11), (6, 15), (8, W + 1), (10, 2 * W + 1))
        ],
        "block_sparse": [
            f"block_sparse(block={b}, local_blocks={nl}, vert_stride={vs})"
            for b, nl, vs in (
                (quarter, 2, 16),
                (quarter, 4, 16),
                (quarter, 4, 8),
                (quarter, 8, 8),
                (quarter, 8, 4),
                (W, 4, 4),
            )
        ],
        "bigbird": [
            f"bigbird(block={b}, window={w}, globals=1, random={r})"
            for b, w, r in (
                (quarter, 2, 1),
                (quarter, 4, 2),
                (quarter, 5, 3),
                (half, 4, 3),
                (W, 2, 2),
            )
        ],
        "topk": [f"topk(k={k})" for k in (8, 16, 32, 64, 128)],
        "moba": [
            f"moba(block={b}, topk={k})" for b, k in ((half, 2), (W, 2), (half, 4), (W, 3), (W, 5))
        ],
    }
    if family not in table:
        raise ValueError(f"unknown frontier family {family!r}; choose from {', '.join(table)}")
    return list(dict.fromkeys(table[family]))  # unique, in order


def frontier_specs(
    families: Sequence[str], geometry: Geometry, density: tuple[float, float] = DENSITY_RANGE
) -> dict[str, list[str]]:
    """Each family's candidates whose density at the image's length lies in ``density``."""
    n = geometry.n_tokens
    out = {}
    for family in families:
        lo, hi = density
        specs = family_candidates(family, geometry)
        out[family] = [s for s in specs if lo <= parse_attention(s).density(n) <= hi]
    return out


# --- the intact model's attention, averaged ----------------------------------------------------


@dataclass
class AttentionMass:
    """The intact model's attention over ``images`` images: ``mean`` [L, H, N, N] float64 (the
    mean of each head's probabilities), ``top`` [L, H, K] float64 (the mean over images and
    queries of the k largest probabilities' sum, at k = 1..K), and MoBA's coverage per spec,
    [L, H] (its keys depend on each image's scores)."""

    mean: np.ndarray
    top: np.ndarray
    moba: dict[str, np.ndarray]
    images: int

    def coverage(self, attention: Layout | Selection) -> np.ndarray:
        """[L, H]: the mean attention mass on the keys ``attention`` keeps."""
        L, H, N, _ = self.mean.shape
        if isinstance(attention, TopK):
            if attention.k > self.top.shape[-1] and attention.k < N:
                raise ValueError(
                    f"{attention!r}: the top masses were kept up to k = {self.top.shape[-1]}"
                )
            return self.top[:, :, min(attention.k, self.top.shape[-1]) - 1]
        if isinstance(attention, MoBA):
            return self.moba[repr(attention)]
        heads = H if attention.period > 1 else 1
        mask = attention.dense_mask(N, heads).numpy()  # [heads, N, N]
        # the mean over queries of each row's kept mass = the masked sum of the mean map / N
        return np.einsum("lhij,hij->lh", self.mean, np.broadcast_to(mask, (H, N, N))) / N


def _layer_attention(
    model: SparseTransformer, tokens: Tensor
) -> Iterator[tuple[int, Tensor, Tensor, Tensor]]:
    """(layer, q, k, probs) of every layer on tokens [B, N]: q, k [B, H, N, D] and the layer's
    attention probabilities [B, H, N, N] under its own layout, walking the blocks as
    SparseTransformer.capture does (which keeps no q and k, and MoBA's coverage needs them).
    The probabilities are the capture's full map on its reference walk (exact, in plain
    PyTorch), not the fused kernels' form, whose rounding differs: a frontier's coverage is the
    same number wherever it is measured, up to the matrix products' own rounding."""
    x = model.embed(tokens)
    for i, block in enumerate(model.blocks):
        q, k, _ = block.attn.heads_qkv(block.ln_1(x))  # [B, H, N, D] each
        yield i, q, k, capture_full(q, k, block.attn.layout, backend="reference").probs
        x = block(x)


@torch.no_grad()
def attention_mass(
    model: SparseTransformer,
    tokens: Tensor,
    moba_specs: Sequence[str] = (),
    *,
    top_k: int = 128,
    batch: int = 16,
    progress: Progress | None = None,
    cancel: Callable[[], bool] | None = None,
) -> AttentionMass:
    """The intact model's attention over tokens [B, N] (see AttentionMass), the top masses up to
    ``top_k`` keys."""
    c = model.config
    n = c.block_size
    if n > MAX_COVERAGE_N:
        raise ValueError(
            f"coverage averages [layers, heads, N, N] maps: up to N = {MAX_COVERAGE_N} tokens, "
            f"this model has {n}"
        )
    device = next(model.parameters()).device
    mean = np.zeros((c.n_layer, c.n_head, n, n))
    top_k = min(top_k, n)
    top = np.zeros((c.n_layer, c.n_head, top_k))
    mobas = {s: parse_attention(s) for s in moba_specs}
    moba = {s: np.zeros((c.n_layer, c.n_head)) for s in mobas}
    with evaluating(model):
        for s in range(0, len(tokens), batch):
            if cancel is not None and cancel():
                raise InterruptedError("stopped")
            t = tokens[s : s + batch].to(device, torch.long)
            for layer, q, k, probs in _layer_attention(model, t):
                p = probs.float()  # [B, H, N, N]; sums over a batch are exact enough in float32
                mean[layer] += p.sum(0).double().cpu().numpy()
                # the k largest of each row, summed for every k <= top_k: [B, H, N, top_k]
                ranked = p.topk(top_k, dim=-1).values.cumsum(-1)
                top[layer] += ranked.sum((0, 2)).double().cpu().numpy() / n
                for spec, sel in mobas.items():
                    kept = _block_mass(p, sel.block).mul_(sel.blocks(q, k, torch.arange(n)))
                    moba[spec][layer] += kept.sum(-1).mean(-1).sum(0).double().cpu().numpy()
            if progress is not None:
                progress(min(s + batch, len(tokens)), len(tokens), "the intact attention")
    count = len(tokens)
    return AttentionMass(mean / count, top / count, {s: v / count for s, v in moba.items()}, count)


def _block_mass(p: Tensor, block: int) -> Tensor:
    """Each row's mass in each key block: p [B, H, Q, N] -> [B, H, Q, ceil(N / block)]."""
    B, H, Q, N = p.shape
    nb = -(-N // block)
    return torch.nn.functional.pad(p, (0, nb * block - N)).view(B, H, Q, nb, block).sum(-1)


# --- points, envelopes, the fitted layout ------------------------------------------------------


def lower_envelope(points: Sequence[dict]) -> list[dict]:
    """The points no cheaper point beats: sorted by density, each kept if its bpd is below every
    kept point's at a lower or equal density."""
    kept: list[dict] = []
    for p in sorted(points, key=lambda p: (p["density"], p["bpd"])):
        if not kept or p["bpd"] < kept[-1]["bpd"]:
            kept.append(p)
    return kept


def fitted_layers(
    mass: AttentionMass, candidates: Sequence[str], budget: float, n: int
) -> tuple[list[str], list[list[str]], float]:
    """For each layer and head, the static candidate with the most coverage of that head among
    those whose density is at most ``budget``: (one spec per layer, multihead(...) of its
    heads' choices, or the one choice where all heads agree; the choices [L][H]; the mean
    density of the chosen layouts)."""
    static = [parse_layout(s) for s in candidates]
    static = [lay for lay in static if lay.period == 1 and lay.density(n) <= budget]
    if not static:
        raise ValueError(f"no static candidate keeps at most {budget:.0%} of the pairs")
    cov = np.stack([mass.coverage(lay) for lay in static])  # [C, L, H]
    best = cov.argmax(0)  # [L, H]
    L, H = best.shape
    choices = [[repr(static[best[i, h]]) for h in range(H)] for i in range(L)]
    specs = []
    for row in choices:
        specs.append(row[0] if len(set(row)) == 1 else repr(multihead(*map(parse_layout, row))))
    density = float(np.mean([static[b].density(n) for b in best.flatten()]))
    return specs, choices, density


def _per_layer(specs: Sequence[str]) -> Intervention:
    return Intervention(attention={i: parse_attention(s) for i, s in enumerate(specs)})


class _Steps:
    """The frontier's progress: ``step(label)`` after each measurement tells ``progress``
    (done, total, label), and stops with InterruptedError once ``cancel()`` is true."""

    def __init__(self, total: int, progress: Progress | None, cancel: Callable[[], bool] | None):
        self.total, self.done = total, 0
        self.progress, self.cancel = progress, cancel

    def step(self, label: str) -> None:
        if self.cancel is not None and self.cancel():
            raise InterruptedError("stopped")
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total, label)

    def before(self) -> Progress | None:
        """A progress for the work before the first step (the intact attention): done 0."""
        if self.progress is None:
            return None
        return lambda done, total, what: self.progress(0, self.total, what)


def measure_frontier(
    model: SparseTransformer,
    tokens: Tensor,
    families: Sequence[str] = FAMILIES,
    *,
    batch: int = 32,
    fit_budgets: Sequence[float] = FIT_BUDGETS,
    progress: Progress | None = None,
    cancel: Callable[[], bool] | None = None,
) -> dict:
    """The frontier of ``model`` on tokens [B, N]: dense bits/dim, every family's points with
    bpd, density, keys and coverage, each family's envelope, and the fitted layouts. ``progress``
    is told (done, total, label) after each step; ``cancel()`` stops between steps
    (InterruptedError)."""
    started = time.perf_counter()
    geometry = model.config.geometry
    specs = frontier_specs(families, geometry)
    steps = _Steps(sum(len(v) for v in specs.values()) + 1 + len(fit_budgets), progress, cancel)
    device = next(model.parameters()).device

    def bpd(intervention: Intervention) -> float:
        return evaluate_bpd(
            model,
            tokens,
            batch_size=batch,
            device=device,
            progress=False,
            intervention=intervention,
        )

    mass = None
    if geometry.n_tokens <= MAX_COVERAGE_N:
        ks = [parse_attention(s).k for s in specs.get("topk", [])]
        mass = attention_mass(
            model,
            tokens,
            specs.get("moba", []),
            top_k=max(ks, default=1),
            progress=steps.before(),
            cancel=cancel,
        )
    dense_bpd = bpd(Intervention())
    steps.step("dense")
    points = _family_points(specs, geometry.n_tokens, model.config.n_layer, mass, bpd, steps)
    fitted = [] if mass is None else _fitted_points(specs, fit_budgets, geometry, mass, bpd, steps)
    return {
        "n_tokens": geometry.n_tokens,
        "geometry": list(geometry),
        "images": len(tokens),
        "dense_bpd": dense_bpd,
        "points": points,
        "envelopes": {
            f: [p["spec"] for p in lower_envelope([p for p in points if p["family"] == f])]
            for f in specs
        },
        "fitted": fitted,
        "seconds": time.perf_counter() - started,
    }


def _family_points(
    specs: dict[str, list[str]],
    n: int,
    n_layer: int,
    mass: AttentionMass | None,
    bpd: Callable[[Intervention], float],
    steps: _Steps,
) -> list[dict]:
    """Every family's points: each spec run in every layer, its density, keys, bits/dim and
    coverage (None without the intact attention)."""
    points = []
    for family, family_specs in specs.items():
        for spec in family_specs:
            attention = parse_attention(spec)
            coverage = None if mass is None else float(mass.coverage(attention).mean())
            points.append(
                {
                    "family": family,
                    "spec": spec,
                    "density": attention.density(n),
                    "keys": attention.nnz(n) / n,
                    "bpd": bpd(Intervention.everywhere(attention, n_layer)),
                    "coverage": coverage,
                }
            )
            steps.step(spec)
    return points


def _fitted_points(
    specs: dict[str, list[str]],
    budgets: Sequence[float],
    geometry: Geometry,
    mass: AttentionMass,
    bpd: Callable[[Intervention], float],
    steps: _Steps,
) -> list[dict]:
    """At each budget, the fitted per-head layout of the static candidates (fitted_layers) and
    its bits/dim and coverage; a budget no static candidate fits is skipped."""
    n = geometry.n_tokens
    static = [s for f, v in specs.items() if f not in ("topk", "moba") for s in v]
    fitted = []
    for budget in budgets:
        if not any(parse_layout(s).density(n) <= budget for s in static):
            steps.step(f"fitted at {budget:.0%}: no static candidate that small")
            continue
        layers, choices, density = fitted_layers(mass, static, budget, n)
        coverage = [mass.coverage(parse_layout(s))[i].mean() for i, s in enumerate(layers)]
        fitted.append(
            {
                "budget": budget,
                "layers": layers,
                "heads": choices,
                "density": density,
                "keys": density * (n + 1) / 2,
                "bpd": bpd(_per_layer(layers)),
                "coverage": float(np.mean(coverage)),
            }
        )
        steps.step(f"fitted at {budget:.0%}")
    return fitted
