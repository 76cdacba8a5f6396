"""The benchmark's anchors (tools/flex_anchors.py) are exact: FlexAttention with the exact mask,
and composed into strided / fixed from dense pieces joined through their log-sum-exp."""

import pytest
import torch

from kernels import layouts as L
from kernels import reference_attention
from tools.flex_anchors import composed, flex_exact, merge


@pytest.mark.parametrize(
    "layout", [L.strided(7), L.strided(16), L.fixed(7, 2), L.fixed(16, 3)], ids=repr
)
@pytest.mark.parametrize("n", [50, 64])
def test_composed_and_exact_flex_equal_the_reference(layout, n):
    g = torch.Generator().manual_seed(n)
    q, k, v = (torch.randn(1, 2, n, 16, generator=g) for _ in range(3))
    ref = reference_attention(q, k, v, layout, return_lse=True)
    for out, lse in (composed(q, k, v, layout), flex_exact(q, k, v, layout)):
        torch.testing.assert_close(out, ref.out, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(lse, ref.lse, rtol=1e-5, atol=1e-5)


def test_merge_with_an_empty_part():
    o = torch.randn(1, 1, 3, 4)
    lse = torch.randn(1, 1, 3)
    out, m = merge(o, lse, torch.zeros_like(o), torch.full_like(lse, float("-inf")))
    torch.testing.assert_close(out, o)
    torch.testing.assert_close(m, lse)
