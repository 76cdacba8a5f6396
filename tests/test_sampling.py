"""Sampling: the KV cache changes nothing, kept pixels stay, seeds reproduce, rows stream."""

import pytest
import torch

from kernels.decode import row_keys
from kernels.layouts import parse_layout
from models import ModelConfig, SparseTransformer
from models.sampling import SamplingCancelled, logits_to_probs, sample

ROW = 5  # images of 4 rows x 5 columns = 20 tokens
LAYOUTS = [
    "dense()",
    f"local(l={ROW})",
    f"strided(l={ROW})",
    f"fixed(l={ROW}, c=2)",
    "fixed(l=4, c=1, num_verts=2)",
    f"multihead(local(l={ROW}), column(l={ROW}))",
    [f"strided(l={ROW})", f"local(l={ROW})"],
]


def make(layout, channels=1):
    torch.manual_seed(0)
    c = ModelConfig(
        height=4, width=ROW, channels=channels, n_layer=2, n_head=2, n_embd=16, layout=layout
    )
    # float64 so that cached and uncached logits agree to ~1e-15 and draw the same tokens
    return SparseTransformer(c).double().eval()


@pytest.fixture(scope="module")
def model():
    return make(f"strided(l={ROW})")


@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
def test_cached_sampling_equals_uncached(layout):
    m = make(layout)
    prefix = torch.tensor([10, 200, 30])
    a = sample(m, n_samples=3, prefix=prefix, seed=7, use_cache=True)
    b = sample(m, n_samples=3, prefix=prefix, seed=7, use_cache=False)
    assert torch.equal(a, b)
    assert torch.equal(
        sample(m, n_samples=2, seed=1), sample(m, n_samples=2, seed=1, use_cache=False)
    )


def test_cached_sampling_equals_uncached_rgb():
    m = make("strided(l=15)", channels=3)
    assert torch.equal(
        sample(m, n_samples=2, seed=3), sample(m, n_samples=2, seed=3, use_cache=False)
    )


@pytest.mark.parametrize("layout", LAYOUTS[:-1], ids=str)
def test_decode_touches_only_the_layout_row(layout):
    lay = parse_layout(layout)
    for i in [0, 3, 11, 19]:
        idx, head_mask = row_keys(lay, i, 2)
        mask = lay.dense_mask(20, 2)[:, i]  # [H, 20]
        assert torch.equal(idx, mask.any(0).nonzero().flatten())  # exactly the union, no more
        if head_mask is not None:
            assert torch.equal(head_mask, mask[:, idx])


def test_prefix_is_kept_and_seed_reproduces(model):
    prefix = torch.arange(7) * 30
    a = sample(model, n_samples=3, prefix=prefix, seed=1)
    assert a.shape == (3, 20) and torch.equal(a, sample(model, n_samples=3, prefix=prefix, seed=1))
    assert torch.equal(a[:, :7], prefix.expand(3, 7))
    assert not torch.equal(a, sample(model, n_samples=3, prefix=prefix, seed=2))


def test_known_rectangle_is_kept(model):
    image = torch.randint(0, 256, (20,), generator=torch.Generator().manual_seed(0))
    known = torch.zeros(4, ROW, dtype=torch.bool)
    known[1:3, 1:4] = True  # a 2x3 rectangle in the middle
    known = known.flatten()
    out = sample(model, n_samples=4, prefix=image, known=known, seed=0)
    assert torch.equal(out[:, known], image[known].expand(4, -1))
    assert not (out[:, ~known] == image[~known]).all()
    ref = sample(model, n_samples=4, prefix=image, known=known, seed=0, use_cache=False)
    assert torch.equal(out, ref)


def test_temperature_zero_is_argmax_decoding(model):
    got = sample(model, n_samples=2, temperature=0.0, seed=5)
    x = torch.zeros(1, 20, dtype=torch.long)
    for i in range(20):  # greedy decoding by hand
        x[0, i] = model(x[:, : i + 1])[0, i].argmax()
    assert torch.equal(got, x.expand(2, 20))


def test_progress_once_per_row_and_rows_are_complete(model):
    calls = []

    def on_row(row, tokens):
        calls.append((row, tokens[:, row * ROW : (row + 1) * ROW].clone()))

    out = sample(model, n_samples=2, prefix=torch.arange(8), seed=0, on_row=on_row)
    assert [r for r, _ in calls] == [1, 2, 3]  # row 0 was given whole; row 1 partly
    for row, values in calls:
        assert torch.equal(values, out[:, row * ROW : (row + 1) * ROW])


def test_cancel_stops_within_one_row(model):
    rows = []
    with pytest.raises(SamplingCancelled) as e:
        sample(
            model,
            n_samples=2,
            seed=0,
            on_row=lambda r, t: rows.append(r),
            cancel=lambda: len(rows) >= 2,
        )
    assert rows == [0, 1]
    assert e.value.position == 2 * ROW  # stopped right at the start of the next row


def test_top_k_and_top_p_filter_the_distribution():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    assert (logits_to_probs(logits, top_k=2)[0, 2:] == 0).all()
    p = torch.softmax(logits, -1)[0]
    probs = logits_to_probs(logits, top_p=float(p[0] + p[1] / 2))[0]  # needs the top two
    assert (probs[:2] > 0).all() and (probs[2:] == 0).all()
    torch.testing.assert_close(probs.sum(), torch.tensor(1.0))
    with pytest.raises(ValueError, match="temperature"):
        logits_to_probs(logits, temperature=-1)
    with pytest.raises(ValueError, match="top_p"):
        logits_to_probs(logits, top_p=0)


def test_one_prefix_per_sample(model):
    prefixes = torch.tensor([[1, 2, 3], [200, 201, 202]])
    out = sample(model, n_samples=2, prefix=prefixes, seed=0)
    assert torch.equal(out[:, :3], prefixes)
    with pytest.raises(ValueError, match="2 prefixes for 3 samples"):
        sample(model, n_samples=3, prefix=prefixes)


# --- the float edges: any positive temperature or top-p the CLIs accept samples (issue 33) ----

EDGE_TEMPERATURES = [5e-324, 1e-320, 1e-300, 1e-100, 1e-38, 1e-37, 1e-9, 1e-3, 1.0, 100.0]


@pytest.mark.parametrize("temperature", EDGE_TEMPERATURES)
def test_any_positive_temperature_gives_a_distribution(temperature):
    torch.manual_seed(0)
    logits = torch.randn(4, 256) * 30
    logits[1] = 0.0  # a flat row: every token tied
    logits[2, :] = -1e30  # one token far above the rest, the others tied far below
    logits[2, 7] = 1e30
    probs = logits_to_probs(logits, temperature=temperature)
    assert probs.dtype == torch.float32 and probs.shape == (4, 256)
    assert torch.isfinite(probs).all() and (probs >= 0).all()
    assert torch.allclose(probs.double().sum(-1), torch.ones(4, dtype=torch.float64), atol=1e-5)
    torch.multinomial(probs, 1)  # what crashed: "probability tensor contains inf, nan or < 0"
    if temperature <= 1e-9:  # tiny: greedy (the flat row keeps all its tied tokens)
        assert (probs[[0, 2, 3]].argmax(-1) == logits[[0, 2, 3]].argmax(-1)).all()
        assert torch.equal(probs[0], torch.nn.functional.one_hot(logits[0].argmax(), 256).float())
        assert torch.allclose(probs[1], torch.full((256,), 1 / 256))


@pytest.mark.parametrize("top_p", [5e-324, 1e-300, 1e-45, 1e-9, 0.3, 1.0])
@pytest.mark.parametrize("temperature", [1e-300, 1.0])
def test_any_positive_top_p_keeps_the_top_token(top_p, temperature):
    torch.manual_seed(1)
    logits = torch.randn(3, 256)
    probs = logits_to_probs(logits, temperature=temperature, top_p=top_p, top_k=50)
    assert torch.isfinite(probs).all() and (probs >= 0).all()
    assert (probs.argmax(-1) == logits.argmax(-1)).all()
    if top_p < 1e-9:
        assert torch.equal(probs, torch.nn.functional.one_hot(logits.argmax(-1), 256).float())
    torch.multinomial(probs, 1)


def test_sampling_a_model_at_a_tiny_temperature_is_greedy(model):
    """sample() end to end with the settings that crashed it: a temperature far below float32's
    range behaves like temperature 0, top-p 1e-300 like top-k 1."""
    greedy = sample(model, n_samples=2, temperature=0.0, seed=0)
    tiny = sample(model, n_samples=2, temperature=1e-300, seed=3)
    nucleus = sample(model, n_samples=2, temperature=1.0, top_p=1e-300, seed=4)
    assert torch.equal(tiny, greedy) and torch.equal(nucleus, greedy)
