"""scripts/gpu_train.sh, the prepared training run of a session with a GPU, in its CPU dry run
(--dry: tiny presets, three steps, fp32, no compile): every step runs, the packed models load as
bf16 weights upcast to float32, each with its run record, evaluation and timeline."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from models import load_model

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_train.sh"
needs_timeout = pytest.mark.skipif(shutil.which("timeout") is None, reason="needs timeout")


def run_script(*args: str, out: Path, timeout: float = 90) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(out), "WORK": str(out.parent / "w")}
    env.pop("SPARSE_EXPLORER_PHOTO_PATCHES", None)
    return subprocess.run(
        ["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def data(tmp_path) -> tuple[Path, Path]:
    """A tiny Fashion-MNIST folder and a folder of three colour 'photos'."""
    sys.path.insert(0, str(ROOT / "tests"))
    from test_training import write_idx

    fm, photos = tmp_path / "fm", tmp_path / "photos"
    fm.mkdir()
    photos.mkdir()
    rng = np.random.default_rng(0)
    write_idx(fm, "train", rng.integers(0, 256, (32, 28, 28), dtype=np.uint8))
    write_idx(fm, "t10k", rng.integers(0, 256, (12, 28, 28), dtype=np.uint8))
    for i, colour in enumerate([(200, 20, 20), (20, 200, 20), (20, 20, 200)]):
        Image.new("RGB", (80, 90), colour).save(photos / f"p{i}.png")
    return fm, photos


def test_the_script_parses():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0


@needs_timeout
@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the script trains for minutes")
def test_without_cuda_it_asks_for_dry_and_checks_its_arguments(data, tmp_path):
    r = run_script(str(data[0]), out=tmp_path / "out")
    assert r.returncode == 2 and "no CUDA" in r.stderr and "--dry" in r.stderr
    r = run_script(str(data[0]), "--frobnicate", out=tmp_path / "out")
    assert r.returncode == 2 and "unknown option --frobnicate" in r.stderr
    r = run_script(str(tmp_path / "nope"), "--dry", out=tmp_path / "out")
    assert r.returncode == 2 and "Fashion-MNIST folder" in r.stderr


@needs_timeout
def test_the_dry_run_trains_ships_and_packs_every_model(data, tmp_path):
    fm, photos = data
    out = tmp_path / "out"
    r = run_script(str(fm), "--dry", "--colour", "--colour-data", f"photos:{photos}", out=out)
    assert r.returncode == 0, r.stdout + r.stderr
    summary = (out / "summary.txt").read_text()
    status = {line.split()[0]: line.split()[1] for line in summary.splitlines() if line.strip()}
    names = ["dense", "strided", "fixed", "colour"]
    for step in [f"train-{n}" for n in names] + ["ship", "eval-fmnist", "eval-colour"]:
        assert status.get(step) == "ok", summary
    # what comes back from a device machine: at most 8 files, no folders
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{n}.tar" for n in names] + ["logs.tar.gz", "summary.txt", "timelines.tar.gz"]
    )
    unpacked = tmp_path / "unpacked"
    for name in names:
        with tarfile.open(out / f"{name}.tar") as tar:
            tar.extractall(unpacked, filter="data")
        folder = unpacked / name
        assert {p.name for p in folder.iterdir()} == {
            "config.json",
            "model.safetensors",
            "run.json",
            "eval.json",
        }
        with safe_open(folder / "model.safetensors", "pt") as f:  # stored as bf16
            assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
        model = load_model(folder)  # checksums checked, upcast to float32
        assert {p.dtype for p in model.parameters()} == {torch.float32}
        record = json.loads((folder / "run.json").read_text())
        assert record["steps"] == 3 and record["train_config"]["dtype"] == "fp32"
        # --limit 8 test images; the dry run's photos source has 4 test patches
        want = 4 if name == "colour" else 8
        assert json.loads((folder / "eval.json").read_text())["test_images"] == want
    colour = load_model(unpacked / "colour")
    assert colour.config.block_size == 3072 and repr(colour.layouts[0]) == "strided(l=96)"
    assert (
        "test_photos" in json.loads((unpacked / "colour" / "run.json").read_text())["data_source"]
    )
    with tarfile.open(out / "timelines.tar.gz") as tar:
        assert "strided/timeline.npz" in tar.getnames()


@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="dataset-fashion-mnist"
)
def test_prepare_copies_fashion_mnist(tmp_path):
    dest = tmp_path / "fashion-mnist"
    r = subprocess.run(
        ["bash", str(SCRIPT), "--prepare", str(dest)], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in dest.iterdir()) == sorted(
        f"{s}-{k}-ubyte.gz" for s in ("train", "t10k") for k in ("images-idx3", "labels-idx1")
    )
