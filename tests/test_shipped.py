"""The shipped models load, are valid, differ only in layout, and their card is their records."""

import json

import pytest
import torch
from PIL import Image

from kernels import layouts as L
from models import load_model
from tools.card import MODELS, ROOT, render_card

EXPECTED_LAYOUTS = {"dense": L.dense(), "strided": L.strided(28), "fixed": L.fixed(28, 2)}


@pytest.mark.parametrize("name", MODELS)
def test_shipped_model_loads_and_predicts(name):
    model = load_model(ROOT / name)
    assert set(model.layouts) == {EXPECTED_LAYOUTS[name]}
    x = torch.randint(0, 256, (2, 784), generator=torch.Generator().manual_seed(0))
    logits = model(x)
    assert logits.shape == (2, 784, 256) and torch.isfinite(logits).all()
    run = json.loads((ROOT / name / "run.json").read_text())
    assert run["model_config"] == model.config.to_dict()
    assert run["data"]["train_images"] == 60000 and run["final"]["test_images"] == 10000
    ev = json.loads((ROOT / name / "eval.json").read_text())
    assert ev["test_images"] == 10000
    # the card's evaluation and the training run's own final evaluation agree
    assert abs(ev["test_bpd"] - run["final"]["test_bpd"]) < 0.01


def test_shipped_models_differ_only_in_layout():
    configs = [load_model(ROOT / m).config.to_dict() for m in MODELS]
    for c in configs:
        c.pop("layout")
    assert configs[0] == configs[1] == configs[2]


def test_shipped_models_fit_in_git():
    total = sum(p.stat().st_size for p in ROOT.rglob("*") if p.is_file())
    assert total <= 25 * 2**20


def test_card_is_formatted_from_the_records():
    assert (ROOT / "README.md").read_text() == render_card(ROOT)
    for png in ("unconditional.png", "completions.png"):
        with Image.open(ROOT / "img" / png) as im:
            assert im.width > 300 and im.height > 100
