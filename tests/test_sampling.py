"""The plain sampler: prefixes are kept, seeds reproduce, temperature 0 is argmax."""

import pytest
import torch

from models import ModelConfig, SparseTransformer
from models.sampling import logits_to_probs, sample


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = ModelConfig(height=4, width=5, n_layer=2, n_head=2, n_embd=16, layout="strided(l=5)")
    return SparseTransformer(config).eval()


def test_prefix_is_kept_and_seed_reproduces(model):
    prefix = torch.arange(7) * 30
    a = sample(model, n_samples=3, prefix=prefix, seed=1)
    b = sample(model, n_samples=3, prefix=prefix, seed=1)
    assert a.shape == (3, 20) and torch.equal(a, b)
    assert torch.equal(a[:, :7], prefix.expand(3, 7))
    assert not torch.equal(a, sample(model, n_samples=3, prefix=prefix, seed=2))


def test_temperature_zero_is_argmax_decoding(model):
    got = sample(model, n_samples=2, temperature=0.0, seed=5)
    x = torch.zeros(1, 20, dtype=torch.long)
    for i in range(20):  # greedy decoding by hand
        x[0, i] = model(x[:, : i + 1])[0, i].argmax()
    assert torch.equal(got, x.expand(2, 20))


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
