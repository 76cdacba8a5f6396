"""models/evaluation.py (and its command line, tools/evaluate.py): test bits/dim, the time of a
training step, and the pixel-histogram baseline."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from test_training import tiny_data  # noqa: F401 - a fixture

from models import ModelConfig, SparseTransformer, save_model
from models.evaluation import EVAL_FILE, evaluate_bpd, histogram_baseline_bpd
from tools.evaluate import main


def test_evaluate_bpd_matches_an_independent_computation():
    torch.manual_seed(0)
    model = SparseTransformer(ModelConfig.from_name("fmnist-tiny", layout="fixed(l=28, c=2)"))
    x = torch.randint(0, 256, (5, 784), dtype=torch.uint8)
    expected = 0.0
    with torch.no_grad():
        for img in x.long():  # one image at a time, log-softmax and gather by hand
            logp = torch.log_softmax(model(img[None])[0].double(), dim=-1)  # [784, 256]
            expected -= logp[torch.arange(784), img].sum().item()
    expected /= 5 * 784 * math.log(2)
    assert evaluate_bpd(model, x, batch_size=2, progress=False) == pytest.approx(expected, abs=1e-6)


def test_histogram_baseline():
    train_px = np.array([[0, 1], [0, 1], [0, 2]], dtype=np.uint8)
    test_px = np.array([[0, 2]], dtype=np.uint8)
    # position 0: value 0 seen 3 times -> (3 + 1) / (3 + 256); position 1: value 2 once -> 2 / 259
    expected = -(math.log2(4 / 259) + math.log2(2 / 259)) / 2
    assert histogram_baseline_bpd(train_px, test_px) == pytest.approx(expected)
    # tokens as tensors (what images_to_tokens gives) count the same
    as_tensors = histogram_baseline_bpd(torch.from_numpy(train_px), torch.from_numpy(test_px))
    assert as_tensors == pytest.approx(expected)
    uniform = np.zeros((0, 2), dtype=np.uint8)
    assert histogram_baseline_bpd(uniform, test_px) == pytest.approx(8.0)


def test_cli_writes_eval_json_and_the_baseline(tiny_data, tmp_path, capsys):  # noqa: F811
    torch.manual_seed(0)
    model_dir = tmp_path / "model"
    save_model(
        SparseTransformer(ModelConfig.from_name("fmnist-tiny", layout="strided(l=28)")), model_dir
    )
    argv = [str(model_dir), "--data", tiny_data, "--timing-iters", "1", "--threads", "1"]
    assert main([*argv, "--limit", "5", "--baseline", "--write"]) == 0
    out = capsys.readouterr().out
    assert "| test bits/dim |" in out and "`strided(l=28)`" in out
    assert "pixel-histogram baseline" in out and "uniform: 8.0000 bits/dim" in out
    row = json.loads((model_dir / EVAL_FILE).read_text())
    assert row["test_images"] == 5 and row["layout"] == "strided(l=28)"
    assert 0 < row["test_bpd"] < 9 and row["time_per_iter_s"] > 0


def test_cli_explains_a_missing_model(tmp_path, capsys):
    assert main([str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
