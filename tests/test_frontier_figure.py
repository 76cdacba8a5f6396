"""viz/frontier_figure.py: the frontier drawn from a tools.frontier result (a small one made by
hand here), its checks, its click targets, its export arrays and its sentences."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from viz.frontier_figure import (
    OPEN_MODEL,
    OPEN_SPEC,
    FrontierError,
    at_density,
    check_frontier,
    clicked_target,
    coverage_bars,
    coverage_sentence,
    fitted_spec,
    frontier_arrays,
    frontier_figure,
    frontier_summary,
    read_frontier,
)

N = 784
PAIRS = N * (N + 1) / 2


def point(family: str, spec: str, keys: float, bpd: float, coverage: float | None) -> dict:
    return {
        "family": family,
        "spec": spec,
        "density": keys * N / PAIRS,
        "keys": keys,
        "bpd": bpd,
        "coverage": coverage,
    }


def small_result() -> dict:
    points = [
        point("strided", "strided(l=28)", 41.0, 3.10, 0.30),
        point("strided", "strided(l=14)", 30.0, 3.60, 0.20),  # beaten by nothing cheaper: kept
        point("strided", "strided(l=21)", 35.0, 3.70, 0.22),  # off the envelope
        point("strided", "strided(l=56)", 70.0, 2.95, 0.45),
        point("axial", "axial(width=28)", 28.0, 4.80, 0.29),
        point("axial", "axial(width=56)", 60.0, 3.00, 0.50),
        point("topk", "topk(k=16)", 16.0, 2.90, 0.59),
        point("topk", "topk(k=32)", 32.0, 2.82, 0.71),
    ]
    return {
        "n_tokens": N,
        "geometry": [28, 28, 1],
        "images": 8,
        "dense_bpd": 2.74,
        "points": points,
        "envelopes": {
            "strided": ["strided(l=14)", "strided(l=28)", "strided(l=56)"],
            "axial": ["axial(width=28)", "axial(width=56)"],
            "topk": ["topk(k=16)", "topk(k=32)"],
        },
        "trained": [
            {
                "model": "assets/models/strided",
                "spec": "strided(l=28)",
                "density": 0.105,
                "keys": 41.0,
                "bpd": 2.73,
            }
        ],
        "fitted": [
            {
                "budget": 0.1,
                "layers": ["local(l=14)", "multihead(local(l=14), axial(width=28))"],
                "density": 0.08,
                "keys": 31.4,
                "bpd": 3.01,
                "coverage": 0.47,
            }
        ],
        "model": "assets/models/dense",
    }


def by_name(fig, name: str):
    (found,) = [t for t in fig.data if t.name == name]
    return found


def test_figure_lines_markers_and_log_axis():
    result = small_result()
    fig = frontier_figure(result, "dense")
    assert fig.layout.xaxis.type == "log"
    strided = by_name(fig, "strided")
    assert list(strided.x) == [30.0, 41.0, 70.0]  # its envelope, by keys
    assert strided.mode == "lines+markers"
    off = by_name(fig, "strided: off its envelope")
    assert list(off.x) == [35.0] and off.opacity < 1 and off.mode == "markers"
    oracle = by_name(fig, "top-k (oracle)")
    assert oracle.line.width > strided.line.width  # highlighted
    dense = by_name(fig, "dense: 2.7400 bits/dim")
    assert list(dense.y) == [2.74, 2.74]  # a horizontal line
    assert dense.x[-1] == (N + 1) / 2  # to where dense is: every earlier key
    trained = by_name(fig, "trained under its layout")
    fitted = by_name(fig, "fitted per head")
    assert trained.marker.symbol == "star" and fitted.marker.symbol == "diamond"
    assert list(trained.text) == ["strided"]


def test_hover_names_spec_density_keys_bpd_coverage():
    fig = frontier_figure(small_result(), "dense")
    axial = by_name(fig, "axial")
    assert "%{customdata[3]}" in axial.hovertemplate  # the spec
    for word in ("density", "keys a query", "bits/dim", "coverage"):
        assert word in axial.hovertemplate
    row = list(axial.customdata[0])
    assert row[3] == "axial(width=28)" and row[5] == 28.0 and row[6] == 4.80
    assert row[7] == "29.0%"
    assert math.isclose(row[4], 28.0 * N / PAIRS)


def test_a_click_opens_the_model_under_the_point():
    fig = frontier_figure(small_result(), "dense")
    axial = list(by_name(fig, "axial").customdata[1])
    event = {"selection": {"points": [{"curve_number": 4, "point_index": 1, "customdata": axial}]}}
    assert clicked_target(event) == ("dense", "axial(width=56)")
    fitted = list(by_name(fig, "fitted per head").customdata[0])
    assert fitted[OPEN_SPEC] == "local(l=14); multihead(local(l=14), axial(width=28))"
    assert fitted[OPEN_MODEL] == "dense"
    trained = list(by_name(fig, "trained under its layout").customdata[0])
    assert (trained[OPEN_MODEL], trained[OPEN_SPEC]) == ("strided", "")  # as it is
    for nothing in (None, {}, {"selection": {"points": []}}, {"selection": {"points": [{}]}}):
        assert clicked_target(nothing) is None


def test_fitted_spec_one_or_per_layer():
    assert fitted_spec({"layers": ["local(l=14)", "local(l=14)"]}) == "local(l=14)"
    assert fitted_spec({"layers": ["a()", "b()"]}) == "a(); b()"


def test_arrays_hold_every_point():
    result = small_result()
    arrays = frontier_arrays(result)
    assert len(arrays["spec"]) == len(result["points"]) + 2  # + trained + fitted
    assert list(arrays["kind"]).count("envelope") == 7
    assert list(arrays["kind"][-2:]) == ["trained", "fitted"]
    assert np.isnan(arrays["coverage"][-2])  # a trained model has no coverage
    assert float(arrays["dense_bpd"]) == 2.74


def test_at_density_and_the_sentence():
    result = small_result()
    rows = at_density(result, 0.1)
    assert [r["family"] for r in rows] == ["topk", "strided", "axial"]  # most kept first
    near = {r["family"]: r["spec"] for r in rows}
    # 10 % of the pairs is 39.25 keys a query: each family's nearest
    assert near == {"strided": "strided(l=28)", "axial": "axial(width=28)", "topk": "topk(k=32)"}
    text = coverage_sentence(rows, 0.1)
    assert text == (
        "At about 10% of the keys, this model's attention is kept 71% by top-k (oracle), "
        "30% by strided and 29% by axial."
    )
    bars = coverage_bars(rows, "t")
    assert list(bars.data[0].y) == [0.71, 0.30, 0.29]


def test_summary_uses_the_numbers():
    lines = frontier_summary(small_result())
    assert lines[0].startswith("Dense attention (every earlier key): 2.7400 bits/dim on 8")
    assert any("strided(l=28)" in line and "+0.3600" in line for line in lines)
    assert any(line.startswith("Top-k") and "2.8200" in line for line in lines)
    assert any("The strided model" in line and "-0.0100" in line for line in lines)
    assert any(line.startswith("Fitted per head within 10%") for line in lines)


@pytest.mark.parametrize(
    "bad, words",
    [
        ([], "not a frontier result"),
        ({"points": []}, "no dense_bpd"),
        ({"dense_bpd": 1, "points": [], "envelopes": {}, "n_tokens": 4}, "no points"),
        (
            {"dense_bpd": 1, "points": [{"family": "x"}], "envelopes": {}, "n_tokens": 4},
            "point 0 lacks",
        ),
        (
            {
                "dense_bpd": 1,
                "n_tokens": 4,
                "envelopes": {},
                "points": [{"family": "x", "spec": "s", "density": 0.1, "keys": 1, "bpd": "a"}],
            },
            "not one",
        ),
    ],
)
def test_check_names_what_is_wrong(bad, words):
    with pytest.raises(FrontierError, match=words):
        check_frontier(bad)


def test_read_frontier_explains_files(tmp_path):
    with pytest.raises(FrontierError, match="does not exist"):
        read_frontier(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(FrontierError, match="bad.json is not JSON"):
        read_frontier(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text("[1, 2]")
    with pytest.raises(FrontierError, match="other.json: it is not a frontier"):
        read_frontier(tmp_path / "other.json")
    (tmp_path / "good.json").write_text(json.dumps(small_result()))
    assert read_frontier(tmp_path / "good.json")["dense_bpd"] == 2.74


def test_a_family_is_taken_at_its_best_choice_about_the_budget():
    from viz.frontier_figure import pick_at_density

    strided = [
        {"spec": "strided(l=21)", "density": 0.099, "coverage": 0.287, "bpd": 4.20},
        {"spec": "strided(l=28)", "density": 0.105, "coverage": 0.459, "bpd": 2.99},
        {"spec": "strided(l=56)", "density": 0.154, "coverage": 0.583, "bpd": 2.85},
    ]
    # the nearest to 10 % is the misaligned l = 21; the family is its best within the band
    assert pick_at_density(strided, 0.1)["spec"] == "strided(l=28)"
    # no coverage: the lowest bits/dim; nothing in the band: the nearest
    no_cov = [dict(p, coverage=None) for p in strided]
    assert pick_at_density(no_cov, 0.1)["spec"] == "strided(l=28)"
    assert pick_at_density(strided, 0.3)["spec"] == "strided(l=56)"
