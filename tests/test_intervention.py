"""The one seam that runs a trained model with another attention (models.model.Intervention):
an argument of the call, equal to a model whose config names that attention, seen by every path
(forward, capture, cached decoding), and invisible to any other call on the same model."""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest
import torch

from kernels.layouts import parse_layout
from kernels.selection import moba, topk
from models import ModelConfig, SparseTransformer, load_model
from models.datasets import load_images
from models.evaluation import evaluate_bpd
from models.model import Intervention
from models.sampling import decode_one_token, prefill, sample
from models.tokens import images_to_tokens
from tools.card import ROOT


def tiny(layout: str = "dense", n_layer: int = 3) -> SparseTransformer:
    torch.manual_seed(0)
    config = ModelConfig(height=5, width=7, n_layer=n_layer, n_head=2, n_embd=16, layout=layout)
    model = SparseTransformer(config).eval()
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight.mul_(8.0)  # sharp attention, so layouts make a difference
    return model


def as_configured(model: SparseTransformer, layouts: list[str]) -> SparseTransformer:
    """A copy of ``model`` whose config names ``layouts`` (one per layer): the comparison."""
    other = SparseTransformer(replace(model.config, layout=layouts)).eval()
    other.load_state_dict(model.state_dict())
    return other


def tokens(batch: int = 3, n: int = 35, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (batch, n), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_a_layout_per_layer_equals_a_model_configured_with_it():
    model = tiny()
    x = tokens()
    specs = ["strided(l=7)", "dense()", "axial(width=7)"]
    chosen = Intervention(attention={0: parse_layout(specs[0]), 2: parse_layout(specs[2])})
    want = as_configured(model, specs)(x)
    torch.testing.assert_close(model(x, chosen), want, rtol=0, atol=0)
    assert not torch.allclose(model(x), want)
    everywhere = Intervention.everywhere("neighborhood(kh=2, kw=3, width=7)", 3)
    want = as_configured(model, ["neighborhood(kh=2, kw=3, width=7)"] * 3)(x)
    torch.testing.assert_close(model(x, everywhere), want, rtol=0, atol=0)


@torch.no_grad()
def test_per_head_layouts_through_multihead():
    model = tiny()
    x = tokens()
    per_head = "multihead(local(l=3), axial(width=7))"
    chosen = Intervention.everywhere(per_head, 3)
    torch.testing.assert_close(model(x, chosen), as_configured(model, [per_head] * 3)(x))


@torch.no_grad()
@pytest.mark.parametrize("selection", [topk(4), moba(7, 2)], ids=repr)
def test_every_path_sees_the_intervention(selection):
    model = tiny()
    x = tokens(2)
    chosen = Intervention(attention={1: selection, 2: parse_layout("local(l=5)")})
    full = model(x, chosen)  # [2, 35, 256]
    caches = model.new_caches(2)
    torch.testing.assert_close(prefill(model, x, 12, caches, chosen), full[:, 12])
    for i in range(13, 20):  # cached decoding, one query at a time
        torch.testing.assert_close(decode_one_token(model, x, i, caches, chosen), full[:, i])
    cached = sample(model, n_samples=2, seed=3, intervention=chosen)
    uncached = sample(model, n_samples=2, seed=3, use_cache=False, intervention=chosen)
    assert torch.equal(cached, uncached)
    # capture: the layer's attention as it ran, rows sum to 1 and vanish outside the selection
    probs = model.capture(x, layers=[1, 2], form="full", intervention=chosen)
    assert torch.allclose(probs[1].probs.sum(-1), torch.ones(2, 2, 35))
    kept = (probs[1].probs > 0).sum(-1)  # [B, H, N]: keys kept by each query
    if selection == topk(4):
        assert kept.max() == 4
    local = parse_layout("local(l=5)").dense_mask(35)[0]
    assert (probs[2].probs[:, :, ~local] == 0).all()
    plain = model.capture(x, layers=[2], form="full")[2].probs
    assert not torch.allclose(plain, probs[2].probs)


def test_bad_interventions_are_refused():
    model = tiny()
    x = tokens(1)
    with pytest.raises(ValueError, match="layer 3 is outside 0..2"):
        model(x, Intervention(attention={3: topk(2)}))
    with pytest.raises(ValueError, match="multiple of 3"):
        model(x, Intervention.everywhere("fixed(l=7, c=1, num_verts=3)", 3))
    with pytest.raises(ValueError, match="must be a layout or a selection"):
        model(x, Intervention(attention={0: "strided(l=7)"}))


@torch.no_grad()
def test_two_threads_on_one_model_see_only_their_own_attention():
    # two app sessions on one cached model: one browses intact, one runs under axial
    model = tiny()
    x = tokens()
    chosen = Intervention.everywhere("axial(width=7)", 3)
    intact, under = model(x), model(x, chosen)
    assert not torch.allclose(intact, under)
    results: dict[str, list[bool]] = {"intact": [], "under": []}
    go = threading.Barrier(2)

    def run(name: str, intervention, want) -> None:
        go.wait()
        for _ in range(25):
            got = model(x) if intervention is None else model(x, intervention)
            results[name].append(torch.equal(got, want))

    threads = [
        threading.Thread(target=run, args=("intact", None, intact)),
        threading.Thread(target=run, args=("under", chosen, under)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {"intact": [True] * 25, "under": [True] * 25}
    assert model.layouts == (parse_layout("dense"),) * 3


def test_shipped_dense_model_under_strided_equals_a_copy_configured_so():
    """The issue's check: the shipped dense model run under strided(l=28) through the seam gives
    the test bits/dim of a copy whose config names that layout (as tools.evaluate runs it)."""
    model = load_model(ROOT / "dense")
    images = load_images("fashion-mnist", "test", model.config.geometry)[:8]
    x = images_to_tokens(images)
    seam = evaluate_bpd(
        model, x, progress=False, intervention=Intervention.everywhere("strided(l=28)", 8)
    )
    configured = as_configured(model, ["strided(l=28)"] * model.config.n_layer)
    want = evaluate_bpd(configured, x, progress=False)
    assert abs(seam - want) < 1e-4
    assert seam > evaluate_bpd(model, x, progress=False) + 0.05  # restricting costs bits
