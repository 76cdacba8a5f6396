"""kernels/composed.py against the reference: outputs, log-sum-exp and gradients of q, k, v on
fresh random inputs, for every layout it composes (tails shorter than l, l = 1, l >= N, several
summary sets), on torch's fused CPU pieces and on the float32 matmul pieces that other devices
get; bf16 within the format's own error; and how the dispatch chooses it."""

from __future__ import annotations

import math

import pytest
import torch

import kernels
import kernels.layouts as L
from kernels import composed as K
from kernels.reference import reference_attention
from tests.triton_util import assert_within_low_precision_error

LAYOUTS = [
    L.dense(),
    L.local(1),
    L.local(5),
    L.local(64),
    L.column(1),
    L.column(5),
    L.column(64),
    L.strided(1),
    L.strided(2),
    L.strided(5),
    L.strided(7),
    L.strided(64),
    L.fixed(1, 1),
    L.fixed(6, 2),
    L.fixed(5, 5),
    L.fixed(6, 2, num_verts=3),
    L.fixed(4, 1, num_verts=4),
    L.fixed(64, 3),
    # axial: the row so far + the column above; width 1 and width >= N are dense
    L.axial(1),
    L.axial(5),
    L.axial(7),
    L.axial(64),
    # dilated: column(r) where w * r >= N (65 >= every length here), local(w) at r = 1, the key
    # j = i alone at w = 1
    L.dilated(13, 5),
    L.dilated(3, 1),
    L.dilated(1, 4),
]
# 1 token; tails of every length; a whole number of blocks and of fixed's chunks of blocks
LENGTHS = [1, 23, 30, 37, 64]
PIECES = ("fused", "matmul")  # matmul: what non-CPU tensors get, forced on the CPU


def _inputs(n: int, seed: int, b: int = 2, h: int = 4, d: int = 16, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, n, d, generator=g).to(dtype).requires_grad_() for _ in range(4)]


@pytest.mark.parametrize("pieces", PIECES)
@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("layout", LAYOUTS, ids=repr)
def test_equals_the_float64_reference(layout, n, pieces, monkeypatch):
    """float32 outputs, lse and gradients (of a random dout) to 1e-5 / 1e-4 of float64."""
    h = 4 if layout.period == 1 else 2 * layout.period
    q, k, v, dout = _inputs(n, seed=n * 131 + len(repr(layout)), h=h)
    if pieces == "matmul":
        monkeypatch.setattr(K, "_fused", lambda q: False)
    out, lse = kernels.attention(q, k, v, layout, backend="composed", return_lse=True)
    grads = torch.autograd.grad(out, (q, k, v), dout.detach())
    up = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref = reference_attention(*up, layout, return_lse=True)
    ref_grads = torch.autograd.grad(ref.out, up, dout.detach().double())
    assert out.dtype == torch.float32 and lse.shape == (2, h, n)
    torch.testing.assert_close(out.double(), ref.out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse.double(), ref.lse, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "layout",
    [L.strided(7), L.fixed(8, 2), L.fixed(8, 2, 3), L.local(9), L.column(6), L.axial(9)],
    ids=repr,
)
def test_bfloat16_within_the_formats_own_error(layout):
    """bf16 output and gradients no further from float64 than twice the bf16 reference is."""
    q, k, v, dout = _inputs(101, seed=7, h=6, dtype=torch.bfloat16)
    assert_within_low_precision_error(
        q, k, v, dout.detach(), layout, torch.float64, backend="composed"
    )


def test_float64_runs_on_the_matmul_pieces():
    q, k, v, _ = _inputs(29, seed=3, dtype=torch.float64)
    out, lse = kernels.attention(q, k, v, L.strided(6), backend="composed", return_lse=True)
    ref = reference_attention(q, k, v, L.strided(6), return_lse=True)
    assert lse.dtype == torch.float64
    torch.testing.assert_close(out, ref.out, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("width", [6, 14])
def test_axial_float64_tight_and_float32_within_its_own_error(width):
    """axial(W) at N = 101 (not a multiple of W): float64 on the matmul pieces to 1e-12 of the
    float64 reference, outputs and gradients; float32 on the fused pieces no further from it
    than twice the float32 reference is."""
    q, k, v, dout = _inputs(101, seed=width, h=3, dtype=torch.float64)
    layout = L.axial(width)
    out, lse = kernels.attention(q, k, v, layout, backend="composed", return_lse=True)
    grads = torch.autograd.grad(out, (q, k, v), dout.detach())
    ref = reference_attention(q, k, v, layout, return_lse=True)
    ref_grads = torch.autograd.grad(ref.out, (q, k, v), dout.detach())
    torch.testing.assert_close(out, ref.out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lse, ref.lse, rtol=1e-12, atol=1e-12)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    low = [t.detach().float().requires_grad_() for t in (q, k, v)]
    assert_within_low_precision_error(
        *low, dout.detach().float(), layout, torch.float64, backend="composed"
    )


def test_axial_is_the_row_and_the_column_pieces():
    """axial(W) runs fixed's own block and strided's column piece (no key j = i), nothing
    else; dilated(w, r) with w * r >= N runs column(r)'s one piece."""
    plan = K._Plan(L.axial(8), 100, 1, 1.0)
    assert (plan.kind, plan.l, plan.n_pad) == ("axial", 8, 104)
    frames = [(p.frame, p.causal, p.first) for p in plan.pieces()]
    assert frames == [("blocks", True, True), ("runs", True, False)]
    assert K._reduced(L.dilated(10, 10), 100) == ("column", 10)
    assert K._reduced(L.dilated(7, 1), 100) == ("local", 7)
    assert K._reduced(L.axial(100), 100) == ("dense", 1)


@pytest.mark.parametrize(
    ("layout", "why"),
    [
        (L.dilated(4, 3), "w \\* r = 12 < N"),
        (L.sinks(2, 5), "sink keys"),
        (L.neighborhood(3, 3, 8), "clipped at the image"),
        (L.block_sparse(4, 2, 3), "vertical-stride blocks"),
        (L.bigbird(4, 2, 1, 1), "random blocks"),
    ],
    ids=repr,
)
def test_the_other_families_stay_on_the_masked_path_and_say_why(layout, why):
    q, k, v, _ = _inputs(40, seed=2)
    assert K.composed_misfit(layout, 40) is not None
    with pytest.raises(ValueError, match=why):
        kernels.attention(q, k, v, layout, backend="composed")
    # "auto" takes the masked SDPA for them at any length, and the reference for the lse
    big = torch.zeros(1, 1, 1 << 14, 8)
    assert kernels.resolve_backend(big, layout) == "sdpa"
    assert kernels.resolve_backend(big, layout, return_lse=True) == "reference"


def test_dilated_fits_where_it_reaches_every_key_of_its_class():
    """dilated(w, r) is composed where w * r >= N (column(r)) and refused below that length."""
    layout = L.dilated(28, 28)
    assert K.composed_misfit(layout, 784) is None
    assert "w * r = 784 < N" in K.composed_misfit(layout, 785)
    at = torch.zeros(1, 1, 784, 8)
    assert kernels.resolve_backend(at, layout) == "composed"  # at the crossover: 784
    assert kernels.resolve_backend(torch.zeros(1, 1, 785, 8), layout) == "sdpa"


def test_takes_strided_views_like_the_models_projections():
    """q, k, v sliced out of one [B, N, 3C] projection (as the model's are): same as contiguous."""
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(2, 50, 3 * 32, generator=g)
    q, k, v = (t.unflatten(-1, (4, 8)).transpose(1, 2) for t in qkv.chunk(3, dim=-1))
    assert not q.is_contiguous()
    got = kernels.attention(q, k, v, L.strided(7), backend="composed")
    want = kernels.attention(q.contiguous(), k.contiguous(), v.contiguous(), L.strided(7))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_the_lse_carries_no_gradient():
    q, k, v, _ = _inputs(20, seed=1)
    out, lse = kernels.attention(q, k, v, L.strided(4), backend="composed", return_lse=True)
    assert out.requires_grad and not lse.requires_grad


def test_refuses_a_mixture_of_patterns_with_the_reason():
    q, k, v, _ = _inputs(20, seed=1)
    mixed = L.multihead(L.local(3), L.column(3))
    with pytest.raises(ValueError, match="mixes patterns across heads"):
        kernels.attention(q, k, v, mixed, backend="composed")
    # "auto" does not choose it for such a layout, at any length
    assert kernels.resolve_backend(torch.zeros(1, 2, 1 << 16, 8), mixed) == "sdpa"


@pytest.mark.parametrize(
    "layout", [L.strided(32), L.fixed(32, 4), L.local(32), L.column(32), L.axial(32)], ids=repr
)
def test_auto_takes_it_on_the_cpu_from_the_measured_crossover_on(layout):
    at = K.crossover(layout)
    assert at == K.CROSSOVER_N[type(layout).__name__.lower()]
    below, above = torch.zeros(1, 1, at - 1, 8), torch.zeros(1, 1, at, 8)
    assert kernels.resolve_backend(below, layout) == "sdpa"
    assert kernels.resolve_backend(below, layout, return_lse=True) == "reference"
    assert kernels.resolve_backend(above, layout) == "composed"
    assert kernels.resolve_backend(above, layout, return_lse=True) == "composed"
    with kernels.use_backend("sdpa"):  # forcing still wins
        assert kernels.resolve_backend(above, layout) == "sdpa"


def test_dense_goes_to_composed_only_for_the_lse():
    """Dense causal SDPA is the same fused kernel; composed adds its log-sum-exp."""
    big = torch.zeros(1, 1, K.crossover(L.strided(8)), 8)
    assert kernels.resolve_backend(big, L.dense()) == "sdpa"
    assert kernels.resolve_backend(big, L.dense(), return_lse=True) == "composed"


def test_the_crossovers_are_written_in_one_place():
    """Every layout kind the backend composes has its measured crossover, and nothing else."""
    kinds = {"dense", "local", "column", "strided", "fixed", "axial", "dilated"}
    assert set(K.CROSSOVER_N) == kinds
    for layout in (
        L.dense(), L.local(3), L.column(3), L.strided(3), L.fixed(3, 1), L.axial(3),
        L.dilated(3, 1),
    ):  # fmt: skip
        assert K.composed_misfit(layout) is None
        assert K.crossover(layout) >= 1


def test_a_model_trains_through_it():
    """A model on backend="composed": loss and every parameter's gradient as on the reference,
    for strided and fixed layers and a tail (7 x 5 image, l = 4)."""
    from models.model import ModelConfig, SparseTransformer

    for layout in ("strided(l=4)", "fixed(l=4, c=2)"):
        config = ModelConfig(
            height=7, width=5, n_layer=2, n_head=2, n_embd=16, layout=layout,
            attention_backend="composed",
        )  # fmt: skip
        torch.manual_seed(0)
        model = SparseTransformer(config).double()
        x = torch.randint(0, 256, (3, config.block_size))
        loss = model.loss(x)
        grads = torch.autograd.grad(loss, list(model.parameters()))
        for block in model.blocks:
            block.attn.backend = "reference"
        ref_loss = model.loss(x)
        ref_grads = torch.autograd.grad(ref_loss, list(model.parameters()))
        torch.testing.assert_close(loss, ref_loss, rtol=1e-10, atol=1e-10)
        for got, want in zip(grads, ref_grads, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10)


def test_work_is_the_pieces_not_n_squared():
    """The pieces' full rectangles for strided(l) (each block's window of the block before and
    its own, l x 2l, and the runs, N/l x N/l each): N (2l + N / l) pairs at most, not the
    N^2 / 2 of dense (the point of it)."""
    n, l = 4096, 64
    plan = K._Plan(L.strided(l), n, 1, 1.0)
    x = torch.zeros(1, 1, plan.n_pad, 1)
    pairs = 0
    for p in plan.pieces():
        framed = plan.framed(x, p.frame)
        rows, keys = p.rows(framed), p.keys(framed)
        pairs += math.prod(rows.shape[:-1]) * keys.shape[-2]
    assert pairs <= n * (2 * l + n // l) and pairs < n * n / 20
