"""The sparsity frontier (analysis/frontier.py, tools/frontier.py): every point's bits/dim is the
evaluator's for a model configured with that spec, coverage is the intact attention's mass on
the kept keys measured directly, envelopes and the fitted layout follow their definitions, and
the command line refuses bad input before any work."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
from selection_util import selection_mask

from analysis.frontier import (
    FAMILIES,
    attention_mass,
    family_candidates,
    fitted_layers,
    frontier_specs,
    lower_envelope,
    measure_frontier,
)
from kernels.layouts import parse_layout
from kernels.selection import parse_attention
from models import ModelConfig, SparseTransformer
from models.evaluation import evaluate_bpd
from models.tokens import Geometry

GEOMETRY = Geometry(6, 8, 1)  # N = 48, rows of 8


def tiny(layout: str = "dense") -> SparseTransformer:
    torch.manual_seed(0)
    config = ModelConfig(height=6, width=8, n_layer=2, n_head=2, n_embd=16, layout=layout)
    model = SparseTransformer(config).eval()
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight.mul_(8.0)
    return model


def tokens(batch: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (batch, 48), generator=torch.Generator().manual_seed(seed))


def configured(model: SparseTransformer, specs: list[str]) -> SparseTransformer:
    other = SparseTransformer(replace(model.config, layout=specs)).eval()
    other.load_state_dict(model.state_dict())
    return other


def test_every_family_spans_the_range_with_the_aligned_choices():
    g = Geometry(28, 28, 1)
    specs = frontier_specs(FAMILIES, g)
    for family in FAMILIES:
        assert len(specs[family]) >= 5, family
        for s in specs[family]:
            assert 0.015 <= parse_attention(s).density(784) <= 0.45
    for aligned in ("strided(l=28)", "axial(width=28)", "fixed(l=28, c=2)"):
        assert aligned in sum(specs.values(), [])
    assert "strided(l=21)" in specs["strided"]  # a badly aligned one, to show why envelopes
    with pytest.raises(ValueError, match="unknown frontier family"):
        family_candidates("nonsense", g)


def test_lower_envelope():
    pts = [
        {"density": 0.1, "bpd": 4.3},
        {"density": 0.105, "bpd": 3.1},
        {"density": 0.2, "bpd": 3.2},  # a costlier point that is worse: not on the envelope
        {"density": 0.3, "bpd": 2.9},
        {"density": 0.05, "bpd": 4.5},
    ]
    got = [(p["density"], p["bpd"]) for p in lower_envelope(pts)]
    assert got == [(0.05, 4.5), (0.1, 4.3), (0.105, 3.1), (0.3, 2.9)]


@torch.no_grad()
def test_coverage_is_the_intact_mass_on_the_kept_keys():
    model = tiny()
    x = tokens()
    mobas = ["moba(block=4, topk=2)", "moba(block=8, topk=3)"]
    mass = attention_mass(model, x, mobas, top_k=48, batch=2)
    full = model.capture(x, form="full")  # layer -> [B, H, N, N]
    for spec in ["strided(l=8)", "axial(width=8)", "topk(k=5)", *mobas, "dense()"]:
        attention = parse_attention(spec)
        want = torch.zeros(2, 2, dtype=torch.float64)
        for layer in range(2):
            p = full[layer].probs.double()
            if hasattr(attention, "mask_mod"):
                kept = attention.dense_mask(48)[None].expand_as(p)
            else:
                block = model.blocks[0]
                xx = model.embed(x)
                for b in model.blocks[:layer]:
                    xx = b(xx)
                block = model.blocks[layer]
                q, k, _ = block.attn.heads_qkv(block.ln_1(xx))
                kept = selection_mask(q, k, attention, torch.arange(48), 0.25)
            want[layer] = (p * kept).sum(-1).mean((0, 2))
        got = torch.from_numpy(mass.coverage(attention))
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert abs(mass.coverage(parse_attention("dense()")).mean() - 1) < 1e-6


def test_points_equal_the_evaluator_for_a_configured_model():
    model = tiny()
    x = tokens(4)
    result = measure_frontier(model, x, ["strided", "axial", "topk"], batch=3, fit_budgets=(0.4,))
    assert abs(result["dense_bpd"] - evaluate_bpd(model, x, batch_size=3, progress=False)) < 1e-9
    for p in result["points"]:
        attention = parse_attention(p["spec"])
        assert p["density"] == attention.density(48)
        assert math.isclose(p["keys"], attention.nnz(48) / 48)
        if p["family"] != "topk":  # static: a config can name it
            want = evaluate_bpd(configured(model, [p["spec"]] * 2), x, batch_size=3, progress=False)
            assert abs(p["bpd"] - want) < 1e-9, p
        assert 0 < p["coverage"] <= 1 + 1e-9
    for family, specs in result["envelopes"].items():
        points = {p["spec"]: p for p in result["points"] if p["family"] == family}
        assert specs and all(s in points for s in specs)
    (fit,) = result["fitted"]
    want = evaluate_bpd(configured(model, fit["layers"]), x, batch_size=3, progress=False)
    assert abs(fit["bpd"] - want) < 1e-9
    assert fit["density"] <= 0.4
    json.dumps(result)  # a record that can be written


def test_fitted_takes_each_heads_best_candidate_within_the_budget():
    model = tiny()
    mass = attention_mass(model, tokens(), top_k=8, batch=5)
    candidates = ["local(l=8)", "axial(width=8)", "strided(l=8)", "dense()"]
    layers, heads, density = fitted_layers(mass, candidates, 0.5, 48)
    allowed = [c for c in candidates if parse_layout(c).density(48) <= 0.5]
    for layer in range(2):
        for h in range(2):
            best = max(allowed, key=lambda c: mass.coverage(parse_layout(c))[layer, h])
            assert heads[layer][h] == best
        assert parse_layout(layers[layer]).period in (1, 2)
    assert density <= 0.5
    with pytest.raises(ValueError, match="no static candidate"):
        fitted_layers(mass, candidates, 0.01, 48)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--families", "strided,sliding"], "unknown sliding"),
        (["--images", "0"], "--images must be between 1"),
        (["--first", "-1"], "--first must be between 0"),
        (["--model", "/nonexistent"], "no such model directory"),
        (["--out", "/tmp/frontier.txt"], "must end in .json or .csv"),
        (["--trained", "/nonexistent"], "--trained /nonexistent: no such model directory"),
        (["--first", "9990", "--images", "20"], "past the 10,000 test images"),
    ],
)
def test_cli_refuses_bad_input_in_one_line(argv, message, capsys):
    from tools.frontier import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
