"""Head ablation: what the model loses, in bits/dim and per pixel, without chosen heads.

A head's whole contribution to the residual stream passes through its layer's output
projection: ``attn.proj`` maps the heads' outputs, concatenated head-major (channels
[h*D, (h+1)*D) are head h, D = n_embd / n_head), back to the stream. So a head is removed by
editing its slice of proj's input: ``ablation(...)`` returns a models.model.Intervention whose
head edits do that, and the caller passes it to the one call that should run without the heads
(``token_bits(..., intervention=...)``, ``complete``, ``model.capture``). Nothing is hooked or
stored on the model, so a cached model shared by several sessions and threads is never seen
ablated by a call that did not ask. Every path through the attention (the forward, capture,
prefill and cached decoding in models.sampling) takes the intervention, so completions and
attention captures run under an ablation too.

Two modes:

    zero    the head's output is 0; the layer's output keeps proj's bias.
    mean    the head's output is replaced, at each position, by its mean over a reference batch
            of images (head_means).

Mean-ablation is the default measure of importance. A head's output is never 0 in training:
later layers and their LayerNorms were fitted to vectors of a certain size and direction at
every position, and a zero vector is an input they never saw, so zero-ablation measures the
shock of that input as well as the loss of the head's information. The per-position mean keeps
later layers' inputs where they were in training on average, and takes away only what the head
says about this particular image: the information it contributes.

The mean of several ablated heads is each head's mean in the intact model (not re-measured with
the other heads removed): the "typical output" a head is replaced by stays one fixed vector per
position whatever else is ablated.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor
from tqdm import tqdm

from analysis.prediction import bits_of
from models.model import Intervention, SparseTransformer, evaluating

MODES = ("zero", "mean")
Head = tuple[int, int]  # (layer, head)


def all_heads(model: SparseTransformer) -> list[Head]:
    """Every (layer, head) of the model, layer by layer."""
    return [(i, h) for i in range(model.config.n_layer) for h in range(model.config.n_head)]


def _check_heads(model: SparseTransformer, heads: Iterable[Head]) -> list[Head]:
    n_layer, n_head = model.config.n_layer, model.config.n_head
    out = []
    for pair in heads:
        layer, head = (int(x) for x in pair)
        if not (0 <= layer < n_layer and 0 <= head < n_head):
            raise ValueError(
                f"head (layer {layer}, head {head}) is outside layers 0..{n_layer - 1}, "
                f"heads 0..{n_head - 1}"
            )
        out.append((layer, head))
    return sorted(set(out))


def _check_mode(mode: str, means: Tensor | None, model: SparseTransformer) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown ablation mode {mode!r}; choose one of {', '.join(MODES)}")
    if mode == "mean":
        c = model.config
        want = (c.n_layer, c.block_size, c.n_embd)
        if means is None:
            raise ValueError("mean ablation needs means=head_means(model, reference_tokens)")
        if tuple(means.shape) != want:
            raise ValueError(f"means must be [layers, N, n_embd] = {list(want)}, got {means.shape}")


def _device(model: SparseTransformer) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def head_means(model: SparseTransformer, tokens: Tensor, *, batch_size: int = 16) -> Tensor:
    """Every head's output averaged over reference images tokens [R, N], per position:
    [layers, N, n_embd] float32, head h of a layer in channels [h*D, (h+1)*D) (proj's input).

    Read through an Intervention whose head edits record and return their input unchanged, in a
    running float64 sum, so memory does not grow with the number of reference images."""
    if tokens.ndim != 2 or len(tokens) == 0:
        raise ValueError(f"reference tokens must be a non-empty [R, N], got {tuple(tokens.shape)}")
    c = model.config
    sums = torch.zeros(c.n_layer, c.block_size, c.n_embd, dtype=torch.float64)

    def record(layer: int):
        def edit(y: Tensor, start: int) -> Tensor:
            sums[layer, start : start + y.shape[1]] += y.double().sum(0).cpu()  # [T, C]
            return y

        return edit

    recording = Intervention(head_outputs={i: record(i) for i in range(c.n_layer)})
    with evaluating(model):
        for s in range(0, len(tokens), batch_size):
            model(tokens[s : s + batch_size].to(_device(model), torch.long), recording)
    return (sums / len(tokens)).float()


def ablation(
    model: SparseTransformer,
    heads: Iterable[Head],
    *,
    mode: str = "zero",
    means: Tensor | None = None,
) -> Intervention:
    """The Intervention that runs ``model`` with the (layer, head) pairs ``heads`` removed, for
    the calls it is passed to. ``mode`` "zero" or "mean" (then ``means`` from head_means)."""
    heads = _check_heads(model, heads)
    _check_mode(mode, means, model)
    D = model.config.n_embd // model.config.n_head
    if means is not None:
        means = means.to(_device(model))
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)

    def remove(layer: int):
        def edit(y: Tensor, start: int) -> Tensor:
            y = y.clone()  # [B, T, C]: the heads' outputs side by side, head-major
            T = y.shape[1]
            for h in by_layer[layer]:
                cols = slice(h * D, (h + 1) * D)
                if mode == "zero":
                    y[..., cols] = 0.0
                else:  # the positions this call runs: all of them, a prefill, or one decoded
                    y[..., cols] = means[layer, start : start + T, cols].to(y.dtype)  # [T, D]
            return y

        return edit

    return Intervention(head_outputs={layer: remove(layer) for layer in by_layer})


@torch.no_grad()
def _batch_bits(
    model: SparseTransformer, tokens: Tensor, heads: list[Head], mode: str, means: Tensor | None
) -> tuple[float, list[float]]:
    """Summed bits of tokens [b, N] intact, and with each single head of ``heads`` removed.

    Removing a head of layer l changes nothing below l, so each ablated run starts from the
    intact run's input to layer l (kept for this batch only) instead of from the embedding:
    about half the work of running every ablation from the bottom."""
    x = model.embed(tokens)  # [b, N, C]
    inputs = []
    for block in model.blocks:
        inputs.append(x)
        x = block(x)
    intact = float(bits_of(model.head(model.ln_f(x)), tokens).sum())
    ablated = []
    for layer, head in heads:
        _, edit = ablation(model, [(layer, head)], mode=mode, means=means).layer(layer)
        y = model.blocks[layer](inputs[layer], None, 0, None, edit)
        for block in model.blocks[layer + 1 :]:
            y = block(y)
        ablated.append(float(bits_of(model.head(model.ln_f(y)), tokens).sum()))
    return intact, ablated


def rank_heads(
    model: SparseTransformer,
    tokens: Tensor,
    *,
    mode: str = "mean",
    means: Tensor | None = None,
    head_types: Mapping[Head, str] | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> list[dict]:
    """Every single head ranked by how much bits/dim on tokens [B, N] rises without it.

    One row per head, largest rise first: layer, head, bpd (without it), bpd_intact, rise,
    mode, type (from ``head_types``, e.g. analysis.metrics' head_type of each head; None where
    not given)."""
    _check_mode(mode, means, model)
    if tokens.ndim != 2 or len(tokens) == 0:
        raise ValueError(f"tokens must be a non-empty [B, N], got {tuple(tokens.shape)}")
    heads = all_heads(model)
    device = _device(model)
    intact, ablated = 0.0, [0.0] * len(heads)
    with evaluating(model):
        batches = range(0, len(tokens), batch_size)
        for s in tqdm(batches, desc="ablate", disable=not progress, leave=False):
            t = tokens[s : s + batch_size].to(device, torch.long)  # [b, N]
            i, a = _batch_bits(model, t, heads, mode, means)
            intact += i
            ablated = [x + y for x, y in zip(ablated, a, strict=True)]
    count = tokens.numel()
    base = intact / count
    rows = [
        {
            "layer": layer,
            "head": head,
            "bpd": bits / count,
            "bpd_intact": base,
            "rise": bits / count - base,
            "mode": mode,
            "type": (head_types or {}).get((layer, head)),
        }
        for (layer, head), bits in zip(heads, ablated, strict=True)
    ]
    return sorted(rows, key=lambda r: (-r["rise"], r["layer"], r["head"]))
