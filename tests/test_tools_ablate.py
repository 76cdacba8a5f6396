"""The head-ablation command line (tools/ablate.py) on a tiny saved model and a folder of images;
bad arguments give one error line and exit 2 before any work starts."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import tools.ablate
from models import ModelConfig, SparseTransformer, save_model
from tools.ablate import main


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, str]:
    """A saved tiny model (6 x 7 gray, 2 layers, 2 heads) and a folder of three images."""
    root = tmp_path_factory.mktemp("ablate")
    torch.manual_seed(0)
    config = ModelConfig(height=6, width=7, n_layer=2, n_head=2, n_embd=16, layout="strided(l=7)")
    model = SparseTransformer(config)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(6.0)  # heads whose removal shows in the bits
    save_model(model, root / "m")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        pixels = rng.integers(0, 256, (6, 7), dtype=np.uint8)
        Image.fromarray(pixels, mode="L").save(images / f"{i}.png")
    return root / "m", f"folder:{images}"


def run(setup, *extra: str) -> list[str]:
    model, data = setup
    return ["--model", str(model), "--data", data, "--images", "3", "--reference", "2", *extra]


def test_ranking_is_printed_and_written_as_json(setup, tmp_path, capsys):
    out = tmp_path / "ranking.json"
    assert main(run(setup, "--out", str(out))) == 0
    printed = capsys.readouterr().out
    assert "| rank | layer | head | type | bits/dim without it | rise | mode |" in printed
    result = json.loads(out.read_text())
    assert result["mode"] == "mean" and result["images"] == 3 and result["reference_images"] == 2
    rows = result["heads"]
    assert len(rows) == 4 and {(r["layer"], r["head"]) for r in rows} == {
        (0, 0), (0, 1), (1, 0), (1, 1)
    }  # fmt: skip
    assert [r["rise"] for r in rows] == sorted((r["rise"] for r in rows), reverse=True)
    assert all(r["type"] in ("row", "column", "local", "sparse", "global") for r in rows)
    assert all(abs(r["bpd"] - r["bpd_intact"] - r["rise"]) < 1e-5 for r in rows)


def test_zero_mode_as_csv_without_types(setup, tmp_path, capsys):
    out = tmp_path / "ranking.csv"
    assert main(run(setup, "--mode", "zero", "--types", "none", "--out", str(out))) == 0
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and {r["mode"] for r in rows} == {"zero"}
    assert {r["type"] for r in rows} == {""}
    assert "| - |" in capsys.readouterr().out


def test_types_from_a_tools_analyze_json(setup, tmp_path, capsys):
    heads = [{"layer": i, "head": h, "type": "column"} for i in range(2) for h in range(2)]
    types = tmp_path / "analysis.json"
    types.write_text(json.dumps({"heads": heads}))
    assert main(run(setup, "--mode", "zero", "--types", str(types))) == 0
    assert capsys.readouterr().out.count("| column |") == 4


@pytest.mark.parametrize(
    "args, message",
    [
        (["--images", "0"], "--images must be between 1 and 10,000"),
        (["--images", "10001"], "--images must be between 1 and 10,000"),
        (["--images", "many"], "invalid int value"),
        (["--reference", "0"], "--reference must be between 1 and 10,000"),
        (["--mode", "half"], "invalid choice"),
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--out", "ranking.txt"], "must end in .json or .csv"),
        (["--out", "{tmp}/no/such/folder/r.json"], "does not exist"),
        (["--out", "{tmp}/folder.json"], "is a directory"),
        (["--types", "{tmp}/missing.json"], "no such file"),
        (["--unknown"], "unrecognized arguments"),
    ],
)
def test_bad_arguments_give_one_error_line_before_any_work(
    setup, tmp_path, capsys, monkeypatch, args, message
):
    def no_work(*a, **k):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(tools.ablate, "load_model", no_work)
    (tmp_path / "folder.json").mkdir()
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert main(run(setup, *args)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err and "Traceback" not in err


def test_missing_model_and_bad_data_are_one_line_errors(setup, tmp_path, capsys):
    assert main(["--model", str(tmp_path / "nothing"), "--images", "1"]) == 2
    assert "no such model directory" in capsys.readouterr().err
    not_a_model = tmp_path / "empty"
    not_a_model.mkdir()
    assert main(["--model", str(not_a_model), "--images", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    model, _ = setup
    assert main(["--model", str(model), "--images", "1", "--data", "folder:/nonexistent"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not found" in err
