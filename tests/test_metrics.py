"""analysis/metrics.py: the metrics and head types of hand-built heads with known answers."""

import math

import numpy as np
import pytest

from analysis.metrics import aggregate, default_queries, head_metrics, head_type, shared_mass
from kernels import layouts as L
from models.tokens import Geometry

G = Geometry(8, 10, 1)  # 80 tokens, one row = 10
N = G.n_tokens
Q = default_queries(G)  # 10 .. 79


def head(rule) -> np.ndarray:
    """A hand-built head [1, 1, Q, N]: row i spreads its mass evenly over rule(i)."""
    p = np.zeros((1, 1, len(Q), N), dtype=np.float64)
    for r, i in enumerate(Q.tolist()):
        keys = rule(i)
        p[0, 0, r, keys] = 1 / len(keys)
    return p


def metrics(p, layout=None):
    m = head_metrics(p, Q, G, layout)
    return {k: float(v[0, 0]) for k, v in m.items()}


def test_pixel_above_head_is_column_shared_and_covered_by_strided():
    m = metrics(head(lambda i: [i - 10]), L.strided(10))
    assert m["same_col"] == pytest.approx(1) and m["same_row"] == 0
    assert m["coverage"] == pytest.approx(1) and m["coverage_column"] == pytest.approx(1)
    assert m["coverage_local"] == 0  # i - j = l is outside the window of l keys
    assert m["distance"] == pytest.approx(1) and m["k90"] == 1 and m["entropy"] == 0
    assert head_type(m) == "local"  # a single key right above: a neighbourhood, not a column


def test_uniform_head_has_the_known_entropy_and_is_global():
    m = metrics(head(lambda i: list(range(i + 1))), L.strided(10))
    assert m["entropy"] == pytest.approx(np.mean([math.log2(i + 1) for i in Q.tolist()]))
    assert m["k90"] == pytest.approx(np.mean([math.ceil(0.9 * (i + 1)) for i in Q.tolist()]))
    density = np.mean([(min(i + 1, 10) + i // 10) / (i + 1) for i in Q.tolist()])
    assert m["coverage"] == pytest.approx(density)  # uniform mass: coverage = density per row
    assert head_type(m) == "global"


def test_row_column_local_sparse_heads():
    row = metrics(head(lambda i: list(range(i - i % 10, i + 1))))
    assert row["same_row"] == pytest.approx(1) and head_type(row) == "row"
    col = metrics(head(lambda i: list(range(i % 10, i + 1, 10))))
    assert col["same_col"] == pytest.approx(1) and head_type(col) == "column"
    local = metrics(head(lambda i: [i - 1, i - 2, i - 3] if i % 10 >= 3 else [i - 10]))
    assert local["distance"] <= 2.5 and head_type(local) == "local"
    # many keys close by is not local: the whole previous row and more
    wide = metrics(head(lambda i: list(range(max(0, i - 60), i + 1))))
    assert wide["k90"] > 32 and head_type(wide) == "global"
    sparse = metrics(head(lambda i: [0, 5]))
    assert sparse["k90"] == 2 and head_type(sparse) == "sparse"


def test_fixed_coverage_parts_are_exclusive():
    # own block up to i and the last key of every earlier block: all inside fixed(10, 1)
    p = head(lambda i: list(range(i - i % 10, i + 1)) + [b * 10 + 9 for b in range(i // 10)])
    m = metrics(p, L.fixed(10, 1))
    assert m["coverage"] == pytest.approx(1)
    assert m["coverage_block"] + m["coverage_summary"] == pytest.approx(1)
    assert m["coverage_summary"] > 0 and m["coverage_block"] > 0


def test_aggregate_mean_and_spread():
    per_image = {"coverage": np.array([[0.2, 1.0], [0.4, 1.0]])}
    mean, std = aggregate(per_image)["coverage"]
    np.testing.assert_allclose(mean, [0.3, 1.0])
    np.testing.assert_allclose(std, [0.1, 0.0], atol=1e-12)
    mean, std = aggregate({"coverage": np.array([[0.2, 1.0]])})["coverage"]  # one image
    np.testing.assert_array_equal(std, [0.0, 0.0])


def test_shared_mass_of_two_rows_by_hand():
    p = np.array([0.5, 0.5, 0.0, 0.0])
    q = np.array([0.0, 0.25, 0.25, 0.5])
    assert shared_mass(p, q) == pytest.approx(0.25)  # only key 1 is shared, min(0.5, 0.25)
    assert shared_mass(p, p) == pytest.approx(1.0)
    assert shared_mass(p, np.array([0, 0, 1.0, 0])) == 0.0  # disjoint keys
    # 1 minus the total variation distance, over leading dims
    rng = np.random.default_rng(0)
    a, b = rng.dirichlet(np.ones(9), size=(2, 3)), rng.dirichlet(np.ones(9), size=(2, 3))
    np.testing.assert_allclose(shared_mass(a, b), 1 - 0.5 * np.abs(a - b).sum(-1))
