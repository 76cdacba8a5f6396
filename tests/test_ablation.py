"""Head ablation (analysis/ablation.py): a whole layer zeroed is its attention branch reduced to
proj's bias, nothing ablated is nothing changed, the ablation is an argument of the call it is
passed to (no hook, nothing left on the model), decoding and the ranking see the same ablation
as the forward pass."""

from __future__ import annotations

import copy
from collections.abc import Iterable

import pytest
import torch
from torch import Tensor

from analysis.ablation import Head, ablation, all_heads, head_means, rank_heads
from analysis.maps import token_map
from analysis.prediction import token_bits
from models import ModelConfig, SparseTransformer
from models.evaluation import evaluate_bpd
from models.sampling import decode_one_token, prefill, sample


# the references the ranking is checked against: one ablation at a time
def ablated_bpd(
    model: SparseTransformer,
    tokens: Tensor,
    heads: Iterable[Head],
    *,
    mode: str = "zero",
    means: Tensor | None = None,
    batch_size: int = 16,
) -> float:
    """Bits/dim of tokens [B, N] with ``heads`` removed."""
    removed = ablation(model, heads, mode=mode, means=means)
    return float(token_bits(model, tokens, batch_size=batch_size, intervention=removed).mean())


def pixel_bits_change(
    model: SparseTransformer,
    tokens: Tensor,
    heads: Iterable[Head],
    *,
    mode: str = "zero",
    means: Tensor | None = None,
    batch_size: int = 16,
) -> Tensor:
    """Per-pixel bits with ``heads`` removed minus intact: float64 [B, H, W, C]; > 0 where the
    removed heads were helping."""
    intact = token_bits(model, tokens, batch_size=batch_size)  # [B, N]
    removed = ablation(model, heads, mode=mode, means=means)
    ablated = token_bits(model, tokens, batch_size=batch_size, intervention=removed)  # [B, N]
    return token_map(ablated - intact, model.config.geometry)


N = 42  # 6 x 7 gray


def tiny(layout="strided(l=7)", n_layer=2) -> SparseTransformer:
    torch.manual_seed(0)
    config = ModelConfig(height=6, width=7, n_layer=n_layer, n_head=2, n_embd=16, layout=layout)
    model = SparseTransformer(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(6.0)  # heads that matter: a random init at 0.02 barely moves the logits
        for block in model.blocks:
            block.attn.proj.bias.normal_()  # a bias that is not 0, so "except the bias" shows
    return model


def tokens(batch=3, seed=0) -> torch.Tensor:
    return torch.randint(0, 256, (batch, N), generator=torch.Generator().manual_seed(seed))


def logits(model: SparseTransformer, x: torch.Tensor, intervention=None) -> torch.Tensor:
    with torch.no_grad():
        return model(x) if intervention is None else model(x, intervention)


def no_hooks(model: SparseTransformer) -> bool:
    return all(
        not m._forward_pre_hooks and not m._forward_hooks for m in model.modules()
    )  # fmt: skip


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("layer", [0, 1])
def test_zeroing_every_head_of_a_layer_leaves_only_proj_bias_of_its_attention(layer):
    model = tiny()
    x = tokens()
    # the comparison, built explicitly: a copy whose attention branch at `layer` outputs
    # dropout(proj.bias) at every position, whatever its input
    bare = copy.deepcopy(model)
    attn = bare.blocks[layer].attn

    def bias_only(x, cache=None, start=0, attend=None, edit=None):
        return attn.dropout(attn.proj.bias.expand(x.shape))  # [B, T, C]

    attn.forward = bias_only
    ablated = logits(model, x, ablation(model, [(layer, 0), (layer, 1)], mode="zero"))
    torch.testing.assert_close(ablated, logits(bare, x), rtol=0, atol=0)
    assert not torch.allclose(ablated, logits(model, x))  # the heads did something


def test_ablating_nothing_changes_nothing_and_the_model_is_left_as_it_was():
    model = tiny()
    x = tokens()
    before, state = logits(model, x), copy.deepcopy(model.state_dict())
    assert torch.equal(logits(model, x, ablation(model, [], mode="zero")), before)
    assert not torch.equal(logits(model, x, ablation(model, [(0, 1), (1, 0)])), before)
    assert no_hooks(model)
    assert same_state(model.state_dict(), state)
    assert torch.equal(logits(model, x), before)


def test_a_call_that_raises_leaves_nothing_behind():
    model = tiny()
    x = tokens()
    before = logits(model, x)
    removed = ablation(model, [(1, 1)], mode="zero")
    with pytest.raises(ValueError, match="got 50 tokens"):
        model(torch.zeros(1, 50, dtype=torch.long), removed)
    assert no_hooks(model)
    assert torch.equal(logits(model, x), before)


def test_ablation_in_one_thread_is_not_seen_by_another_using_the_same_model():
    # two app sessions share one cached model: one ablates while the other browses
    import threading

    model = tiny()
    x = tokens()
    before = logits(model, x)
    removed = ablation(model, [(0, 0), (1, 1)], mode="zero")
    ablated = logits(model, x, removed)
    seen: dict[str, list[bool]] = {"intact": [], "ablated": []}
    go = threading.Barrier(2)

    def browse() -> None:
        go.wait()
        for _ in range(20):
            seen["intact"].append(torch.equal(logits(model, x), before))

    def ablate() -> None:
        go.wait()
        for _ in range(20):
            seen["ablated"].append(torch.equal(logits(model, x, removed), ablated))

    threads = [threading.Thread(target=browse), threading.Thread(target=ablate)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen["intact"] == [True] * 20 and seen["ablated"] == [True] * 20


def test_mean_ablation_with_the_image_itself_as_reference_changes_nothing():
    model = tiny()
    x = tokens(1)
    intact = logits(model, x)
    means = head_means(model, x)  # [2, 42, 16]: each position's own output, exactly
    assert means.shape == (2, N, 16)
    everything = ablation(model, all_heads(model), mode="mean", means=means)
    torch.testing.assert_close(logits(model, x, everything), intact, rtol=0, atol=0)
    ref = tokens(4, seed=1)  # other images: their mean is not this image's output
    one = ablation(model, [(0, 0)], mode="mean", means=head_means(model, ref))
    assert not torch.allclose(logits(model, x, one), intact)


def test_head_means_average_over_images_whatever_the_batch():
    model = tiny()
    ref = tokens(4, seed=2)
    both = head_means(model, ref, batch_size=3)
    one_by_one = torch.stack([head_means(model, ref[i : i + 1]) for i in range(4)]).mean(0)
    torch.testing.assert_close(both, one_by_one, rtol=0, atol=1e-6)
    assert no_hooks(model)


def test_decoding_under_ablation_matches_the_ablated_forward_pass():
    model = tiny()
    x = tokens(2)
    means = head_means(model, tokens(4, seed=3))
    for mode in ("zero", "mean"):
        removed = ablation(model, [(0, 1), (1, 0)], mode=mode, means=means)
        full = logits(model, x, removed)  # [2, 42, 256]
        caches = model.new_caches(2)
        with torch.no_grad():
            torch.testing.assert_close(prefill(model, x, 10, caches, removed), full[:, 10])
            for i in range(11, 16):  # one position at a time, against the caches
                got = decode_one_token(model, x, i, caches, removed)
                torch.testing.assert_close(got, full[:, i])
        cached = sample(model, n_samples=2, seed=5, intervention=removed)
        uncached = sample(model, n_samples=2, seed=5, use_cache=False, intervention=removed)
        assert torch.equal(cached, uncached)
        assert not torch.equal(cached, sample(model, n_samples=2, seed=5))
        assert not torch.allclose(full, logits(model, x))
    assert no_hooks(model)


def test_bits_with_heads_removed_and_their_pixel_map():
    model = tiny()
    x = tokens(2)
    heads = [(1, 1)]
    intact = evaluate_bpd(model, x, progress=False)
    removed = ablation(model, heads, mode="zero")
    by_evaluator = evaluate_bpd(model, x, progress=False, intervention=removed)
    assert abs(ablated_bpd(model, x, heads, mode="zero") - by_evaluator) < 1e-6
    change = pixel_bits_change(model, x, heads, mode="zero")  # [2, 6, 7, 1]
    assert change.shape == (2, 6, 7, 1)
    assert abs(float(change.mean()) - (by_evaluator - intact)) < 1e-6
    nothing = pixel_bits_change(model, x, [], mode="zero")
    assert torch.equal(nothing, torch.zeros(2, 6, 7, 1, dtype=torch.float64))


@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_ranking_is_every_single_head_ablated_sorted_by_the_rise(mode):
    model = tiny(n_layer=3)
    x = tokens(3)
    means = head_means(model, tokens(4, seed=4)) if mode == "mean" else None
    types = {(0, 0): "local", (2, 1): "column"}
    rows = rank_heads(model, x, mode=mode, means=means, head_types=types, batch_size=2)
    assert len(rows) == 6 and {(r["layer"], r["head"]) for r in rows} == set(all_heads(model))
    assert [r["rise"] for r in rows] == sorted((r["rise"] for r in rows), reverse=True)
    base = float(token_bits(model, x).mean())
    for r in rows:
        assert r["mode"] == mode and r["type"] == types.get((r["layer"], r["head"]))
        assert abs(r["bpd_intact"] - base) < 1e-9
        # resuming from the layer's input is the same as running the whole ablated model
        alone = ablated_bpd(model, x, [(r["layer"], r["head"])], mode=mode, means=means)
        assert abs(r["bpd"] - alone) < 1e-9
        assert abs(r["rise"] - (alone - base)) < 1e-9
    assert abs(rows[0]["bpd_intact"] - evaluate_bpd(model, x, progress=False)) < 1e-6
    assert no_hooks(model)


def test_bad_arguments_are_refused():
    model = tiny()
    x = tokens(1)
    with pytest.raises(ValueError, match="outside layers"):
        ablation(model, [(2, 0)])
    with pytest.raises(ValueError, match="outside layers"):
        ablation(model, [(0, -1)])
    with pytest.raises(ValueError, match="unknown ablation mode"):
        ablated_bpd(model, x, [(0, 0)], mode="half")
    with pytest.raises(ValueError, match="needs means"):
        rank_heads(model, x, mode="mean")
    with pytest.raises(ValueError, match="means must be"):
        ablation(model, [(0, 0)], mode="mean", means=torch.zeros(2, 41, 16))
    with pytest.raises(ValueError, match="non-empty"):
        head_means(model, x[:0])
    assert no_hooks(model)


@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_the_seam_gives_the_numbers_of_a_hook_on_proj(mode):
    # today's numbers: the ablation as it was measured before the seam, a forward pre-hook on
    # the layer's proj editing the head's slice (written out here, on a private copy)
    model = tiny(n_layer=3)
    x = tokens(3)
    means = head_means(model, tokens(4, seed=6)) if mode == "mean" else None
    heads = [(0, 1), (2, 0)]
    hooked = copy.deepcopy(model)
    D = 16 // 2

    def hook_for(layer):
        def hook(module, args):
            y = args[0].clone()
            for lay, h in heads:
                if lay == layer:
                    cols = slice(h * D, (h + 1) * D)
                    y[..., cols] = 0.0 if mode == "zero" else means[layer, : y.shape[1], cols]
            return (y,)

        return hook

    for layer in {lay for lay, _ in heads}:
        hooked.blocks[layer].attn.proj.register_forward_pre_hook(hook_for(layer))
    want = float(token_bits(hooked, x).mean())
    got = ablated_bpd(model, x, heads, mode=mode, means=means)
    assert abs(got - want) < 1e-12
