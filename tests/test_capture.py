"""Capture forms agree with each other and with the attention the model actually computes."""

import pytest
import torch

import kernels
import models.model
from kernels import capture as C
from kernels import layouts as L
from kernels.decode import decode_attention
from models import ModelConfig, SparseTransformer
from models.sampling import sample

LAYOUTS = [
    L.dense(),
    L.strided(7),
    L.fixed(7, 2),
    L.fixed(8, 2, num_verts=2),
    L.multihead(L.local(5), L.column(5)),
]


def qk(N=45, H=2, B=2, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, H, N, D, generator=g), torch.randn(B, H, N, D, generator=g)


@pytest.mark.parametrize("layout", LAYOUTS, ids=repr)
def test_full_map_is_the_reference_probabilities(layout):
    q, k = qk()
    full = C.capture_full(q, k, layout).probs
    ref = kernels.reference_attention(q, k, k, layout, return_probs=True).probs
    torch.testing.assert_close(full, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layout", LAYOUTS, ids=repr)
def test_forms_agree_with_the_full_map(layout, monkeypatch):
    monkeypatch.setattr(C, "ROW_BLOCK", 16)  # several row blocks, the last one partial
    q, k = qk()
    full = C.capture_full(q, k, layout).probs  # [B, H, N, N]
    queries = [0, 7, 44, 20]
    torch.testing.assert_close(C.capture_rows(q, k, layout, queries).probs, full[:, :, queries])
    for block in (5, 7, 16):  # 45 is not a multiple of any of them
        pooled = C.capture_pooled(q, k, layout, block)
        nb = -(-45 // block)
        for a in range(nb):
            for b in range(nb):
                tile = full[:, :, a * block : (a + 1) * block, b * block : (b + 1) * block]
                torch.testing.assert_close(pooled.mean[:, :, a, b], tile.mean(dim=(2, 3)))
                torch.testing.assert_close(pooled.max[:, :, a, b], tile.amax(dim=(2, 3)))
    sparse = C.capture_sparse(q, k, layout)
    torch.testing.assert_close(sparse.to_dense(), full)
    assert sparse.indptr[-1] == len(sparse.indices) == layout.dense_mask(45, 2).any(0).sum()


def test_sparse_on_another_support_gives_its_coverage():
    q, k = qk()
    full = C.capture_full(q, k, L.dense()).probs
    sparse = C.capture_sparse(q, k, L.dense(), support=L.strided(7))
    mask = L.strided(7).dense_mask(45)
    torch.testing.assert_close(sparse.to_dense(), full * mask)
    assert sparse.support == "strided(l=7)"


@pytest.mark.parametrize("layout", LAYOUTS[:4], ids=repr)
@pytest.mark.parametrize("support", [None, L.dense(), L.strided(5)], ids=repr)
def test_sparse_from_the_composed_lse_is_the_reference(layout, support, monkeypatch):
    """The CPU's O(nnz) sparse capture (the composed forward's lse, then only the support's
    pairs, in chunks) against the reference probabilities; pairs the layout lacks are 0."""
    monkeypatch.setattr(C, "PAIR_CHUNK", 50)  # several chunks, the last one partial
    q, k = qk()
    full = C.capture_full(q, k, layout).probs
    sparse = C.capture_sparse(q, k, layout, support=support, backend="composed")
    mask = (support or layout).dense_mask(45, 2)
    torch.testing.assert_close(sparse.to_dense(), full * mask, rtol=1e-5, atol=1e-6)


def test_full_map_refuses_large_n():
    q, k = qk(N=4097, B=1, H=1, D=2)
    with pytest.raises(ValueError, match="rows, pooled or sparse"):
        C.capture_full(q, k, L.dense())


def make_model(layout="strided(l=7)"):
    torch.manual_seed(0)
    config = ModelConfig(height=5, width=7, n_layer=3, n_head=2, n_embd=16, layout=layout)
    return SparseTransformer(config).double().eval()


@pytest.mark.parametrize("layout", ["dense()", "strided(l=7)", "fixed(l=7, c=1, num_verts=2)"])
def test_model_capture_is_the_attention_it_computes(layout):
    model = make_model(layout)
    x = torch.randint(0, 256, (2, 35), generator=torch.Generator().manual_seed(1))
    caps = model.capture(x, layers=[0, 2], heads=[1], form="full")
    assert sorted(caps) == [0, 2] and caps[2].probs.shape == (2, 1, 35, 35)
    h = model.embed(x)
    for i, block in enumerate(model.blocks):
        if i == 2:
            q, k, v = block.attn.heads_qkv(block.ln_1(h))
            out = kernels.attention(q, k, v, block.attn.layout)  # what the forward computes
            torch.testing.assert_close(caps[2].probs[:, 0] @ v[:, 1], out[:, 1])
        h = block(h)


def test_model_capture_validates():
    model = make_model()
    x = torch.zeros(1, 35, dtype=torch.long)
    with pytest.raises(ValueError, match="layers"):
        model.capture(x, layers=[3])
    with pytest.raises(ValueError, match="heads"):
        model.capture(x, heads=[2])
    with pytest.raises(ValueError, match="capture form"):
        model.capture(x, form="heatmap")
    with pytest.raises(ValueError, match="needs queries"):
        model.capture(x, form="rows")


def test_capture_during_generation_equals_capture_of_the_result(monkeypatch):
    """Where the model looked while it decoded each token (its decode attention, wrapped here to
    keep the probabilities) is what capture finds in the finished images."""
    model = make_model()
    looked: dict[int, list[torch.Tensor]] = {}  # position -> one row [B, H, N] per layer

    def keeping_probs(q, k_cache, v_cache, layout, pos):
        out, probs, idx = decode_attention(q, k_cache, v_cache, layout, pos, return_probs=True)
        row = probs.new_zeros(*probs.shape[:2], k_cache.shape[2])  # [B, H, N]
        row[:, :, idx] = probs  # [B, H, K] over the layout's keys
        looked.setdefault(pos, []).append(row)
        return out, probs, idx

    monkeypatch.setattr(models.model, "decode_attention", keeping_probs)
    tokens = sample(model, n_samples=3, prefix=torch.arange(9), seed=0)  # 0..9 in one pass
    generated = list(range(10, 35))  # then one token at a time
    assert sorted(looked) == generated
    after = model.capture(tokens, form="rows", queries=generated)
    for layer in range(3):
        during = torch.stack([looked[p][layer] for p in generated], dim=2)  # [B, H, Q, N]
        torch.testing.assert_close(during, after[layer].probs, rtol=1e-9, atol=1e-12)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_capture_of_a_gpu_model_comes_back_where_the_tokens_were():
    """The app keeps tokens on the CPU and its models on the GPU when there is one."""
    torch.manual_seed(0)
    model = SparseTransformer(ModelConfig.from_name("fmnist-tiny", layout="strided(l=28)"))
    tokens = torch.randint(0, 256, (1, model.config.block_size))
    want = model.eval().capture(tokens, layers=[1], form="rows", queries=[5, 400])[1]
    got = model.cuda().capture(tokens, layers=[1], form="rows", queries=[5, 400])[1]
    assert got.probs.device.type == "cpu"
    torch.testing.assert_close(got.probs, want.probs, rtol=2e-3, atol=2e-4)


def test_auto_scores_only_the_pairs_where_the_layout_is_sparse_enough():
    """capture_sparse's pair walk on "auto": strided at 4,096 (2 % of the pairs) yes; strided
    at 784, fixed at 4,096 (7 %) and dense no (the row walk is faster there: kernels/capture.py,
    PAIR_DENSITY); backend="composed" always."""

    def pays(n, layout, backend="auto"):
        return C._pairs_pay(torch.zeros(1, 4, n, 8), layout, layout, backend)

    assert pays(4096, L.strided(64))
    assert not pays(784, L.strided(28)) and not pays(4096, L.fixed(64, 8))
    assert not pays(4096, L.dense())
    assert pays(784, L.strided(28), backend="composed")
    assert not pays(4096, L.strided(64), backend="reference")
