"""What the model predicts and where it is surprised (analysis/prediction.py, analysis/maps.py):
a hand-built model with a known distribution, the evaluator's bits/dim, the image placement."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from analysis.maps import token_map
from analysis.prediction import (
    entropy_bits,
    mean_pixel_bits,
    pixel_bits,
    predicted_probs,
    token_bits,
)
from models import ModelConfig, SparseTransformer, load_model
from models.evaluation import evaluate_bpd
from models.tokens import Geometry, image_to_tokens, images_to_tokens, pixel_to_token

ROOT = Path(__file__).resolve().parents[1]


def tiny(height=3, width=4, channels=1, scale=1.0) -> SparseTransformer:
    torch.manual_seed(0)
    config = ModelConfig(
        height=height, width=width, channels=channels, n_layer=2, n_head=2, n_embd=16
    )
    model = SparseTransformer(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)  # scale > 1: predictions far from uniform
    return model


def fixed_distribution_model(q: torch.Tensor) -> SparseTransformer:
    """A model whose prediction is q at every position, whatever the image.

    ln_f with weight 0 and bias e_0 outputs e_0 for every token, so the logits are column 0 of
    the head's weight; setting that column to log q makes the softmax exactly q."""
    model = tiny()
    with torch.no_grad():
        model.ln_f.weight.zero_()
        model.ln_f.bias.zero_()
        model.ln_f.bias[0] = 1.0
        model.head.weight.zero_()
        model.head.weight[:, 0] = torch.log(q.float())
    return model


def test_hand_built_distribution_gives_hand_computed_bits_map():
    # p(0) = 1/2, p(1) = 1/4, every other value (1/4) / 254
    q = torch.full((256,), 0.25 / 254, dtype=torch.float64)
    q[0], q[1] = 0.5, 0.25
    model = fixed_distribution_model(q)
    image = np.full((3, 4, 1), 7, dtype=np.uint8)
    image[0, 0, 0] = 0
    image[1, 2, 0] = 1
    bits = pixel_bits(model, image_to_tokens(image)[None])  # [1, 3, 4, 1]
    want = torch.full((1, 3, 4, 1), 2 + math.log2(254), dtype=torch.float64)
    want[0, 0, 0, 0] = 1.0  # -log2(1/2)
    want[0, 1, 2, 0] = 2.0  # -log2(1/4)
    torch.testing.assert_close(bits, want, rtol=0, atol=1e-6)
    probs = predicted_probs(model, image_to_tokens(image)[None])  # [1, 12, 256]
    torch.testing.assert_close(probs, q.expand(1, 12, 256), rtol=0, atol=1e-7)


def test_uniform_prediction_is_eight_bits_everywhere():
    model = fixed_distribution_model(torch.full((256,), 1 / 256))
    x = torch.randint(0, 256, (3, 12), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(token_bits(model, x), torch.full((3, 12), 8.0, dtype=torch.float64))
    ent = entropy_bits(predicted_probs(model, x))  # [3, 12]
    torch.testing.assert_close(ent, torch.full((3, 12), 8.0, dtype=torch.float64))


def test_entropy_of_a_point_mass_is_zero_and_of_two_values_one_bit():
    p = torch.zeros(2, 256, dtype=torch.float64)
    p[0, 5] = 1.0
    p[1, :2] = 0.5
    torch.testing.assert_close(entropy_bits(p), torch.tensor([0.0, 1.0], dtype=torch.float64))


def test_bits_map_mean_is_the_evaluators_bits_per_dim():
    model = tiny(scale=8.0)
    x = torch.randint(0, 256, (3, 12), generator=torch.Generator().manual_seed(1))
    bits = pixel_bits(model, x, batch_size=2)  # [3, 3, 4, 1]
    assert bits.dtype == torch.float64 and bits.shape == (3, 3, 4, 1)
    for b in range(3):
        bpd = evaluate_bpd(model, x[b : b + 1], progress=False)
        assert abs(float(bits[b].mean()) - bpd) < 1e-6
    mean = mean_pixel_bits(model, x, batch_size=2)  # [3, 4, 1]
    torch.testing.assert_close(mean, bits.mean(0), rtol=0, atol=1e-12)
    assert abs(float(mean.mean()) - evaluate_bpd(model, x, progress=False)) < 1e-6


def test_predicted_probs_are_the_models_softmax_and_sum_to_one():
    model = tiny(scale=8.0)
    x = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(2))
    p = predicted_probs(model, x, batch_size=1)
    assert p.shape == (2, 12, 256) and p.dtype == torch.float64
    torch.testing.assert_close(p.sum(-1), torch.ones(2, 12, dtype=torch.float64))
    with torch.no_grad():
        want = torch.softmax(model(x).double(), -1)
    torch.testing.assert_close(p, want)


def test_token_map_places_every_token_where_models_tokens_says():
    g = Geometry(2, 3, 3)
    values = torch.arange(g.n_tokens)
    grid = token_map(values, g)  # [2, 3, 3]
    for r in range(2):
        for c in range(3):
            for ch in range(3):
                assert int(grid[r, c, ch]) == pixel_to_token(r, c, ch, g)
    # the inverse of images_to_tokens, for numpy batches too
    images = np.arange(2 * 18, dtype=np.uint8).reshape(2, 2, 3, 3)
    np.testing.assert_array_equal(token_map(images_to_tokens(images).numpy(), g), images)
    with pytest.raises(ValueError, match="tokens"):
        token_map(torch.zeros(5), g)


def test_empty_batch_is_refused():
    with pytest.raises(ValueError, match="no images"):
        token_bits(tiny(), torch.zeros(0, 12, dtype=torch.long))


@pytest.mark.skipif(
    not (ROOT / "assets/models/dense/model.safetensors").is_file()
    or not Path("/usr/share/datasets/fashion-mnist").is_dir(),
    reason="needs the shipped dense model and Fashion-MNIST",
)
def test_shipped_dense_model_bits_map_matches_the_evaluator_on_a_test_image():
    from models.datasets import load_fashion_mnist

    model = load_model(ROOT / "assets/models/dense")
    images, _ = load_fashion_mnist("test")
    x = image_to_tokens(images[0])[None]  # [1, 784]
    bits = pixel_bits(model, x)  # [1, 28, 28, 1]
    assert bits.shape == (1, 28, 28, 1)
    assert abs(float(bits.mean()) - evaluate_bpd(model, x, progress=False)) < 1e-6
