"""models/training.py and models/run_folder.py (and the command line, tools/train.py): training,
resuming exactly and DDP,
on tiny synthetic Fashion-MNIST-shaped data."""

from __future__ import annotations

import gzip
import json
import os
import struct
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from kernels import parse_layout
from kernels.layouts import image_layout_spec
from models import CheckpointError, ModelConfig, SparseTransformer, load_model
from models.training import (
    TrainConfig,
    batch_indices,
    check_same_settings,
    check_train_config,
    lr_at,
    model_config,
    train,
)

ROOT = Path(__file__).resolve().parents[1]


def write_idx(folder: Path, prefix: str, images: np.ndarray) -> None:
    n = len(images)
    with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">IIII", 0x803, n, 28, 28) + images.tobytes())
    with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">II", 0x801, n) + (np.arange(n) % 10).astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> str:
    """Synthetic 28x28 'garments': a bright rectangle of random size on black, learnable fast."""
    folder = tmp_path_factory.mktemp("fmnist")
    rng = np.random.default_rng(0)

    def make(n):
        imgs = np.zeros((n, 28, 28), dtype=np.uint8)
        for k in range(n):
            top, left = rng.integers(2, 8, size=2)
            imgs[k, top : 28 - top, left : 28 - left] = rng.integers(150, 255)
        return imgs

    write_idx(folder, "train", make(64))
    write_idx(folder, "t10k", make(12))
    return f"fashion-mnist:{folder}"


def cfg(data: str, **kw) -> TrainConfig:
    base = dict(
        preset="fmnist-tiny",
        layout="strided",
        data=data,
        steps=6,
        batch_size=4,
        warmup=2,
        eval_every=3,
        eval_images=4,
        lr=3e-3,
        threads=1,
    )
    base.update(kw)
    return TrainConfig(**base)


def test_training_decreases_the_loss(tiny_data, tmp_path):
    record = train(cfg(tiny_data, steps=40, eval_every=20), tmp_path / "run")
    curve = [h["train_bpd"] for h in record.history]
    assert np.mean(curve[-5:]) < np.mean(curve[:5]) - 1.0
    tests = [h["test_bpd"] for h in record.history if "test_bpd" in h]
    assert tests[-1] < tests[0]
    # the run directory is a loadable model with a complete record
    model = load_model(tmp_path / "run")
    assert repr(model.layouts[0]) == "strided(l=28)"
    saved = json.loads((tmp_path / "run" / "run.json").read_text())
    assert saved["steps"] == 40 and saved["final"]["test_images"] == 12
    assert saved["data"] == {"source": tiny_data, "train_images": 64, "test_images": 12}
    assert saved["wall_time_s"] > 0 and saved["device"].startswith("cpu")


def test_resume_continues_exactly(tiny_data, tmp_path):
    whole = train(cfg(tiny_data), tmp_path / "whole")
    train(cfg(tiny_data), tmp_path / "parts", stop_at=3)
    assert not (tmp_path / "parts" / "run.json").read_text().count('"final"')
    parts = train(cfg(tiny_data), tmp_path / "parts", resume=True)
    assert parts.train_bpds() == whole.train_bpds()
    a = load_file(tmp_path / "whole" / "model.safetensors")
    b = load_file(tmp_path / "parts" / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    assert len(parts.commands) == 2


def test_a_resumed_run_records_what_an_uninterrupted_run_does(tiny_data, tmp_path):
    """Its history, and its final numbers: the last-100 window reaches back before the
    checkpoint (not only the steps after resuming), the final evaluation is the same."""
    whole = train(cfg(tiny_data, steps=8, eval_every=2), tmp_path / "whole")
    train(cfg(tiny_data, steps=8, eval_every=2), tmp_path / "parts", stop_at=6)
    parts = train(cfg(tiny_data, steps=8, eval_every=2), tmp_path / "parts", resume=True)
    assert parts.history == whole.history
    assert parts.final == whole.final
    window = [h["train_bpd"] for h in whole.history][-100:]
    assert len(window) == 8 and parts.final["train_bpd_last100"] == round(np.mean(window), 4)
    saved = json.loads((tmp_path / "parts" / "run.json").read_text())
    assert saved["final"] == whole.final and saved["history"] == whole.history


def test_resume_leaves_a_finished_run_alone(tiny_data, tmp_path, monkeypatch, capsys):
    """--resume on a finished run: no second 10,000-image evaluation, the record untouched
    (its final numbers kept, not nulled), exit status 0 with one line saying so."""
    import models.training as training
    import tools.train

    out = tmp_path / "run"
    c = cfg(tiny_data, steps=4, eval_every=2)
    first = train(c, out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}

    def no_evaluation(*a, **k):
        raise AssertionError("a finished run was evaluated again")

    monkeypatch.setattr(training, "evaluate_bpd", no_evaluation)
    again = train(cfg(tiny_data, steps=4, eval_every=2), out, resume=True)
    assert again.final == first.final and again.final["train_bpd_last100"] is not None
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert "is finished" in capsys.readouterr().err
    argv = ["--preset", c.preset, "--layout", c.layout, "--steps", "4", "--batch-size", "4"]
    argv += ["--warmup", "2", "--eval-every", "2", "--eval-images", "4", "--threads", "1"]
    argv += ["--lr", str(c.lr)]
    argv += ["--data", tiny_data, "--out", str(out), "--resume"]
    assert tools.train.main(argv) == 0
    captured = capsys.readouterr()
    assert "is finished" in captured.err and "left alone" in captured.err
    assert json.loads(captured.out.strip().splitlines()[-1]) == first.final
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_schedule_and_batches():
    c = TrainConfig(steps=100, warmup=10, lr=1.0, min_lr_ratio=0.1)
    assert lr_at(0, c) == pytest.approx(0.1) and lr_at(9, c) == pytest.approx(1.0)
    assert lr_at(10, c) == pytest.approx(1.0) and lr_at(100, c) == pytest.approx(0.1)
    assert all(lr_at(s, c) >= lr_at(s + 1, c) for s in range(10, 100))
    # consecutive batches cover each epoch exactly once, and are a function of (seed, step)
    seen = torch.cat([batch_indices(s, batch_size=7, n=21, seed=3) for s in range(3)])
    assert sorted(seen.tolist()) == list(range(21))

    def batch(step, seed):
        return batch_indices(step, batch_size=7, n=21, seed=seed)

    assert torch.equal(batch(5, seed=3), batch(5, seed=3))
    assert not torch.equal(batch(0, seed=3), batch(0, seed=4))


def test_layout_shorthands_use_one_image_row():
    c = ModelConfig.from_name("fmnist-small")
    assert image_layout_spec("strided", c.row_stride, c.block_size) == "strided(l=28)"
    # c is the smallest summary width whose density reaches strided's at 784 tokens
    assert image_layout_spec("fixed", c.row_stride, c.block_size) == "fixed(l=28, c=2)"
    assert image_layout_spec("fixed(l=56, c=4)", c.row_stride, c.block_size) == "fixed(l=56, c=4)"
    # the model a run trains: the preset, with the shorthand read against its own row
    assert model_config(TrainConfig(preset="fmnist-small", layout="strided")).layout == (
        "strided(l=28)"
    )
    cifar = model_config(TrainConfig(preset="cifar-small", layout="fixed", dropout=0.1))
    assert cifar.layout == image_layout_spec("fixed", 96, 3072) and cifar.dropout == 0.1


def test_ddp_two_ranks_end_with_identical_weights(tiny_data, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    train_args = "--preset fmnist-tiny --layout strided --steps 4 --batch-size 4 --warmup 2"
    train_args += " --eval-every 4 --eval-images 4 --threads 1 --lr 3e-3"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone"]
    # tools.train, each rank's final weights saved beside the run (tests/train_ranks.py)
    cmd += [str(ROOT / "tests" / "train_ranks.py"), *train_args.split(), "--data", tiny_data]
    cmd += ["--out", str(out)]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    w0 = load_file(out / "rank0.safetensors")
    w1 = load_file(out / "rank1.safetensors")
    assert w0.keys() == w1.keys()
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    record = json.loads((out / "run.json").read_text())
    assert record["world_size"] == 2
    # two ranks with half the batch each take the same steps as one process with the whole batch
    train(cfg(tiny_data, steps=4, eval_every=4), tmp_path / "single")
    s = load_file(tmp_path / "single" / "model.safetensors")
    for k in s:
        torch.testing.assert_close(w0[k], s[k], rtol=1e-4, atol=1e-5)


# --- the recipe: --dtype, --compile, the deeper presets ------------------------------------


def test_bf16_autocast_trains_on_the_cpu(tiny_data, tmp_path, capsys):
    record = train(cfg(tiny_data, dtype="bf16", steps=3, eval_every=3), tmp_path / "bf16")
    assert "slower than fp32" in capsys.readouterr().err  # allowed on a CPU, and said to be slow
    assert record.precision == "bf16" and record.train_config["dtype"] == "bf16"
    assert all(np.isfinite(h["train_bpd"]) for h in record.history)
    # the weights and the optimizer stay float32: only the products ran in bf16
    model = load_model(tmp_path / "bf16")
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    # auto is fp32 on the CPU (bf16 on CUDA), what runs did before the setting existed
    assert train(cfg(tiny_data, steps=1, eval_every=1), tmp_path / "auto").precision == "fp32"


def test_compile_trains_the_same_model(tiny_data, tmp_path):
    """torch.compile with the attention call outside the graph (a tiny model compiles in about
    20 s on a CPU core): the same losses as eager, to float32 rounding."""
    eager = train(cfg(tiny_data, steps=2, eval_every=2), tmp_path / "eager")
    compiled = train(cfg(tiny_data, steps=2, eval_every=2, compile=True), tmp_path / "compiled")
    a = eager.train_bpds()
    b = compiled.train_bpds()
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-3)
    assert compiled.train_config["compile"] is True
    # the saved weights are the plain model's (no "_orig_mod." prefix): it loads as any other
    assert load_model(tmp_path / "compiled").config == load_model(tmp_path / "eager").config


def test_recipe_flags_are_parsed_and_checked():
    from tools.train import parse_args

    c, _ = parse_args(["--out", "x", "--dtype", "bf16", "--compile", "--preset", "fmnist-deep"])
    assert (c.dtype, c.compile, c.preset) == ("bf16", True, "fmnist-deep")
    c, _ = parse_args(["--out", "x"])
    assert (c.dtype, c.compile) == ("auto", False)
    with pytest.raises(ValueError, match="dtype must be one of"):
        check_train_config(TrainConfig(dtype="fp16"))
    with pytest.raises(ValueError, match="compile must be"):
        check_train_config(TrainConfig(compile="yes"))


def test_runs_saved_before_the_recipe_settings_resume(tmp_path):
    """A run.json written before --dtype and --compile existed holds neither: it trained with
    their defaults, so resuming it with the defaults is allowed, and with others refused."""
    old = {k: v for k, v in asdict(TrainConfig()).items() if k not in ("dtype", "compile")}
    check_same_settings(TrainConfig(), old, tmp_path)
    with pytest.raises(CheckpointError, match="--dtype bf16"):
        check_same_settings(TrainConfig(dtype="bf16"), old, tmp_path)


def test_deeper_presets():
    sizes = {"fmnist-deep": 7_227_648, "fmnist-deep-narrow": 3_245_568}
    sizes["cifar-strided-96"] = 2_194_176
    for name, params in sizes.items():
        model = SparseTransformer(ModelConfig.from_name(name))
        assert model.num_params() == params, name
        assert 2 * params < 20e6  # bf16 bytes: three Fashion-MNIST models + colour in 60 MB
    deep = ModelConfig.from_name("fmnist-deep")
    assert deep.n_layer == 16 and 128 <= deep.n_embd <= 192 and 4 <= deep.n_head <= 8
    colour = ModelConfig.from_name("cifar-strided-96")
    assert colour.block_size == 3072 and colour.row_stride == 96
    assert colour.layouts[0] == parse_layout("strided(l=96)")
    # a training run of it reads "strided" as one row of 96 tokens
    assert model_config(TrainConfig(preset="cifar-strided-96", layout="strided")) == colour
