"""Every command line refuses bad input as one ``error: ...`` line and exit status 2, before any
work, leaving no output behind (README, "Command line"; the shared pieces are tools/cli.py).

Each row runs a CLI's ``main`` in-process with its expensive work replaced by a function that
fails the test if it is reached, so a check that comes after the work shows up as a failure, not
as a slow pass. A few rows also run as ``python -m`` subprocesses, the way a person meets them.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import models.completion
import tools.ablate
import tools.analyze
import tools.bench_app
import tools.bench_kernels
import tools.bench_load
import tools.bench_sampling
import tools.card
import tools.complete
import tools.evaluate
import tools.export
import tools.fuzz_uploads
import tools.train
from models import ModelConfig, SparseTransformer, save_model

ROOT = Path(__file__).resolve().parents[1]
HUGE = "99999999999999999999999"
ROOT_USER = hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """A tiny model, one with an impossible layout in its config.json, an image, a plain file,
    a read-only folder and a model folder whose eval.json is a directory."""
    base = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    config = ModelConfig(height=6, width=6, n_layer=1, n_head=2, n_embd=16, layout="strided(l=6)")
    model = save_model(SparseTransformer(config), base / "model")
    huge = save_model(SparseTransformer(config), base / "huge_layout")
    raw = json.loads((huge / "config.json").read_text())
    raw["config"]["layout"] = f"strided(l={HUGE})"
    (huge / "config.json").write_text(json.dumps(raw))
    evaldir = save_model(SparseTransformer(config), base / "evaldir")
    (evaldir / "eval.json").mkdir()
    image = base / "x.png"
    buf = io.BytesIO()
    Image.fromarray(np.full((6, 6), 200, dtype=np.uint8)).save(buf, format="PNG")
    image.write_bytes(buf.getvalue())
    (base / "file").write_text("not a folder")
    (base / "readonly").mkdir()
    (base / "readonly").chmod(0o500)
    (base / "adir.png").mkdir()
    # issue 33: an MLP far too wide or of no units; a FIFO config.json; /dev/zero as an image
    mlp = {}
    for name, ratio in (("wide_mlp", 1e12), ("empty_mlp", 1e-9)):
        folder = save_model(SparseTransformer(config), base / name)
        raw = json.loads((folder / "config.json").read_text())
        raw["config"]["mlp_ratio"] = ratio
        (folder / "config.json").write_text(json.dumps(raw))
        mlp[name] = folder
    fifo = save_model(SparseTransformer(config), base / "fifo")
    (fifo / "config.json").unlink()
    os.mkfifo(fifo / "config.json")
    return {
        "base": base,
        "model": model,
        "huge": huge,
        "evaldir": evaldir,
        "image": image,
        "file": base / "file",
        "fifo": fifo,
        **mlp,
    }


def _no_work(*args, **kwargs):
    raise AssertionError("the work started before the arguments were checked")


@pytest.fixture
def no_work(monkeypatch):
    """The expensive parts of every CLI fail the test when they are reached."""
    monkeypatch.setattr(models.completion, "complete", _no_work)
    monkeypatch.setattr(tools.analyze, "analyze_model", _no_work)
    monkeypatch.setattr(tools.analyze, "pick_images", _no_work)
    monkeypatch.setattr(tools.evaluate, "evaluate_bpd", _no_work)
    monkeypatch.setattr(tools.evaluate, "load_images", _no_work)
    monkeypatch.setattr(tools.export, "write_all", _no_work)
    monkeypatch.setattr(tools.train, "train", _no_work)
    monkeypatch.setattr(tools.ablate, "rank_heads", _no_work)
    monkeypatch.setattr(tools.ablate, "load_model", _no_work)
    monkeypatch.setattr(tools.bench_sampling, "load_model", _no_work)
    monkeypatch.setattr(tools.card, "render_card", _no_work)
    monkeypatch.setattr(tools.bench_kernels, "attention_rows", _no_work)
    monkeypatch.setattr(tools.bench_kernels, "capture_rows", _no_work)
    monkeypatch.setattr(tools.bench_kernels, "training_step_rows", _no_work)
    monkeypatch.setattr(tools.fuzz_uploads, "run", _no_work)
    monkeypatch.setattr(tools.bench_app, "measure", _no_work)  # browser, servers, AppTest
    monkeypatch.setattr(tools.bench_load, "streamlit_server", _no_work)


MAINS = {
    "complete": tools.complete.main,
    "analyze": tools.analyze.main,
    "evaluate": tools.evaluate.main,
    "export": tools.export.main,
    "train": tools.train.main,
    "ablate": tools.ablate.main,
    "card": tools.card.main,
    "bench_sampling": tools.bench_sampling.main,
    "bench_kernels": tools.bench_kernels.main,
    "fuzz_uploads": tools.fuzz_uploads.main,
    "bench_app": tools.bench_app.main,
    "bench_load": tools.bench_load.main,
}

# (cli, arguments with {placeholders}, a phrase the error must hold, the output that must not
# appear). {out} is a fresh path in the test's folder.
CASES = [
    # tools.complete
    ("complete", "{image} --model {huge} --out {out}/c.png", "out of range", "{out}/c.png"),
    ("complete", "{image} --model {model} --temperature nan", "finite", None),
    ("complete", "{image} --model {model} --temperature inf", "finite", None),
    ("complete", "{image} --model {model} --temperature -1", "must be in", None),
    ("complete", "{image} --model {model} --samples 100000 --out {out}/c.png", "too many", None),
    ("complete", "{image} --model {model} --samples 0", "between 1", None),
    ("complete", "{image} --model {model} --top-k 0", "between 1 and 256", None),
    ("complete", "{image} --model {model} --top-p 0", "must be in (0, 1]", None),
    ("complete", "{image} --model {model} --top-p nan", "finite", None),
    ("complete", "{image} --model {model} --seed -1", "between 0", None),
    ("complete", "{image} --model {model} --keep-rows 99", "keep_rows", None),
    ("complete", "{image} --model {model} --out {file}/c.png", "is a file", "{file}/c.png"),
    ("complete", "{image} --model {model} --out {base}/adir.png", "is a directory", None),
    ("complete", "{image} --model {model} --out {out}/c.xyz", "must end in", "{out}/c.xyz"),
    ("complete", "{image} --model {model} --out /proc/c.png", "cannot write", "/proc/c.png"),
    ("complete", "{image} --model {model} --samples many", "whole number", None),
    ("complete", "{image} --model {wide_mlp} --out {out}/c.png", "parameters", "{out}/c.png"),
    ("complete", "{image} --model {empty_mlp} --out {out}/c.png", "MLP of 0 units", None),
    ("complete", "{image} --model {fifo} --out {out}/c.png", "named pipe", "{out}/c.png"),
    ("complete", "/dev/zero --model {model} --out {out}/c.png", "character device", None),
    ("complete", "{base} --model {model} --out {out}/c.png", "is a folder", None),
    # tools.analyze
    ("analyze", "--model {wide_mlp} --out {out}", "parameters", "{out}"),
    ("analyze", "--model {fifo} --out {out}", "named pipe", "{out}"),
    (
        "analyze",
        f"--model {{model}} --layout strided(l={HUGE}) --out {{out}}",
        "out of range",
        "{out}",
    ),
    ("analyze", "--model {huge} --out {out}", "out of range", "{out}"),
    ("analyze", "--model {model} --out {file}", "is not a folder", None),
    ("analyze", "--model {model} --out {file}/a", "is a file", "{file}/a"),
    ("analyze", "--model {model} --out /proc/analysis", "cannot write", "/proc/analysis"),
    ("analyze", "--model {model} --threads -1 --out {out}", "between 1", "{out}"),
    ("analyze", "--model {model} --images 0 --out {out}", "between 1", "{out}"),
    ("analyze", "--model {model} --layout nonsense(3) --out {out}", "unknown layout", "{out}"),
    # tools.export
    ("export", "--model {model} --image {image} --dpi 0 --out {out}", "between 10", "{out}"),
    ("export", "--model {model} --image {image} --dpi -5 --out {out}", "between 10", "{out}"),
    ("export", "--model {model} --image {image} --dpi 20000 --out {out}", "between 10", "{out}"),
    ("export", "--model {model} --image {image} --out {file}/f", "is a file", "{file}/f"),
    ("export", "--model {model} --image {image} --out {file}", "is not a folder", None),
    ("export", "--model {model} --image {image} --out /proc/figs", "cannot write", "/proc/figs"),
    ("export", "--model {empty_mlp} --image {image} --out {out}", "MLP of 0 units", "{out}"),
    ("export", "--model {model} --image /dev/zero --out {out}", "character device", "{out}"),
    ("export", "--model {model} --image {image} --query 6 0 --out {out}", "row 0..5", "{out}"),
    # tools.evaluate
    ("evaluate", "{wide_mlp}", "parameters", None),
    ("evaluate", "{fifo}", "named pipe", None),
    ("evaluate", "{model} --limit 0", "between 1", None),
    ("evaluate", "{model} --batch-size 0", "between 1", None),
    ("evaluate", "{model} --timing-iters 0", "between 1", None),
    ("evaluate", "{model} --timing-batch -3", "between 1", None),
    ("evaluate", "{model} --threads 0", "between 1", None),
    ("evaluate", "{evaldir} --write", "is a directory", None),
    ("evaluate", "{huge}", "out of range", None),
    # tools.train
    ("train", "--out {out}/r --grad-clip nan", "finite", "{out}/r"),
    ("train", "--out {out}/r --lr inf", "finite", "{out}/r"),
    ("train", "--out {out}/r --lr 0", "must be in (0", "{out}/r"),
    ("train", "--out {out}/r --stop-at 0", "between 1", "{out}/r"),
    ("train", "--out {out}/r --eval-images 0", "between 1", "{out}/r"),
    ("train", "--out {out}/r --steps 0", "between 1", "{out}/r"),
    ("train", "--out {out}/r --batch-size 0", "between 1", "{out}/r"),
    ("train", "--out {out}/r --warmup -1", "between 0", "{out}/r"),
    ("train", "--out {out}/r --dropout 1.5", "must be in [0", "{out}/r"),
    ("train", "--out {out}/r --minutes nan", "finite", "{out}/r"),
    ("train", "--out {out}/r --weight-decay -1", "must be in [0", "{out}/r"),
    ("train", f"--out {{out}}/r --layout strided(l={HUGE})", "out of range", "{out}/r"),
    ("train", "--out {out}/r --minutes 5 --warmup 10", "needs --warmup >= 60", "{out}/r"),
    ("train", "--out {file}/r", "is a file", "{file}/r"),
    ("train", "--out /proc/run", "cannot write", "/proc/run"),
    ("train", "--out {out}/r --preset huge", "invalid choice", "{out}/r"),
    ("train", "--out {out}/r --minutes 1e300", "must be in (0, 10080]", "{out}/r"),
    ("train", "--out {out}/r --batch-size 65536", "needs about", "{out}/r"),
    ("ablate", "--model {fifo}", "named pipe", None),
    ("ablate", "--model {model} --types /dev/zero", "character device", None),
    # tools.ablate, tools.card, tools.bench_sampling
    ("ablate", "--model {model} --images 0", "between 1", None),
    ("ablate", "--model {model} --threads 0", "between 1", None),
    ("ablate", "--model {model} --out /proc/r.json", "cannot write", "/proc/r.json"),
    ("ablate", "--model {model} --out {file}/r.json", "is a file", "{file}/r.json"),
    ("card", "--root {out}/nothing", "no such folder", None),
    ("card", "--root {file}", "no such folder", None),
    ("bench_sampling", "--samples 0", "between 1", None),
    ("bench_sampling", "--samples 100000", "between 1", None),
    ("bench_sampling", "--device nonsense", "not a torch device", None),
    # tools.bench_kernels (refused before the CUDA check: the same on a machine without a GPU)
    ("bench_kernels", "--sizes 0", "between 1", None),
    ("bench_kernels", "--sizes -3072", "between 1", None),
    ("bench_kernels", "--sizes nan", "whole number", None),
    ("bench_kernels", f"--sizes {HUGE}", "between 1", None),
    ("bench_kernels", "--sizes 4096", "not among 3072, 16384, 65536", None),
    ("bench_kernels", "--device cpu --sizes 3072", "not among 1024, 2048", None),
    ("bench_kernels", "--device tpu", "invalid choice", None),
    ("bench_kernels", "--heads 0", "between 1", None),
    ("bench_kernels", "--heads -1", "between 1", None),
    ("bench_kernels", "--heads nan", "whole number", None),
    ("bench_kernels", f"--heads {HUGE}", "between 1", None),
    ("bench_kernels", "--dim 0", "between 1", None),
    ("bench_kernels", "--dim nan", "whole number", None),
    ("bench_kernels", f"--dim {HUGE}", "between 1", None),
    ("bench_kernels", "--dim 48", "invalid choice", None),
    # tools.fuzz_uploads
    ("fuzz_uploads", "--cases 0", "between 1", None),
    ("fuzz_uploads", "--cases -5", "between 1", None),
    ("fuzz_uploads", "--cases nan", "whole number", None),
    ("fuzz_uploads", f"--cases {HUGE}", "between 1", None),
    ("fuzz_uploads", "--seed -1", "between 0", None),
    ("fuzz_uploads", "--seed nan", "whole number", None),
    ("fuzz_uploads", f"--seed {HUGE}", "between 0", None),
    ("fuzz_uploads", "--geometry 0x28x1", "sides 1-", None),
    ("fuzz_uploads", "--geometry=-28x28x1", "must look like", None),
    ("fuzz_uploads", f"--geometry {HUGE}x28x1", "sides 1-", None),
    ("fuzz_uploads", "--geometry 28x28x2", "HxWx1 or HxWx3", None),
    ("fuzz_uploads", "--geometry nanx28x1", "must look like", None),
    ("fuzz_uploads", "--save-crashes {file}", "is not a folder", None),
    ("fuzz_uploads", "--save-crashes {file}/c", "is a file", "{file}/c"),
    ("fuzz_uploads", "--save-crashes /proc/crashes", "cannot write", "/proc/crashes"),
    # tools.bench_app (no browser, no server: refused while parsing)
    ("bench_app", "--repeats 0", "between 1", None),
    ("bench_app", "--repeats -2", "between 1", None),
    ("bench_app", "--repeats nan", "whole number", None),
    ("bench_app", f"--repeats {HUGE}", "between 1", None),
    ("bench_app", "--servers -1", "between 0", None),
    ("bench_app", "--servers nan", "whole number", None),
    ("bench_app", f"--servers {HUGE}", "between 0", None),
    ("bench_app", "--learned -1", "between 0", None),
    ("bench_app", "--learned nan", "whole number", None),
    ("bench_app", f"--learned {HUGE}", "between 0", None),
    ("bench_app", "--parts attention,nonsense", "unknown part nonsense", None),
    ("bench_app", "--parts ,", "unknown part", None),
    ("bench_app", "--timeline /tmp", "not inside the project", None),
    ("bench_app", "--timeline assets", "no timeline.json", None),
    ("bench_app", "--baseline nonsense", "not a commit of this repository", None),
    ("bench_app", "--baseline --help", "expected one argument", None),
    ("bench_app", "--baseline 0000000000", "not a commit of this repository", None),
    # tools.bench_load (no server, no browser: refused while parsing)
    ("bench_load", "--contexts 0", "is no load (add --playground or --frontier)", None),
    ("bench_load", "--contexts 17", "between 0", None),
    ("bench_load", "--samples nan", "whole number", None),
    ("bench_load", "--switches -1", "between 1", None),
    ("bench_load", "--seconds nan", "finite", None),
    ("bench_load", "--seconds inf", "finite", None),
    ("bench_load", "--seconds 0", "must be in [1, 3600]", None),
    ("bench_load", "--workers 0", "between 1", None),
]
if ROOT_USER:  # root writes into a read-only folder: only a read-only mount stops it
    READ_ONLY = []
else:
    READ_ONLY = [
        ("complete", "{image} --model {model} --out {base}/readonly/c.png", "cannot write", None),
        ("analyze", "--model {model} --out {base}/readonly/a", "cannot write", None),
        ("export", "--model {model} --image {image} --out {base}/readonly/f", "cannot", None),
        ("train", "--out {base}/readonly/r", "cannot write", None),
        ("fuzz_uploads", "--save-crashes {base}/readonly/c", "cannot write", None),
    ]


def _fill(text: str, world: dict[str, Path], out: Path) -> str:
    return text.format(**{k: str(v) for k, v in world.items()}, out=out)


def _ids(case) -> str:
    return f"{case[0]}:{case[1]}".replace("{", "").replace("}", "")[:60]


@pytest.mark.parametrize("case", CASES + READ_ONLY, ids=_ids)
def test_bad_input_is_one_error_line_before_any_work(case, world, tmp_path, capsys, no_work):
    cli, args, phrase, output = case
    argv = _fill(args, world, tmp_path / "o").split()
    rc = MAINS[cli](argv)
    captured = capsys.readouterr()
    err = captured.err
    assert rc == 2, (rc, err, captured.out)
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert phrase in err, err
    if output is not None:
        assert not Path(_fill(output, world, tmp_path / "o")).exists()
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").rglob("*"))


@pytest.mark.parametrize(
    "cli, args, phrase",
    [
        ("complete", "{image} --model {model} --temperature nan", "finite"),
        ("analyze", f"--model {{model}} --layout strided(l={HUGE}) --out {{out}}", "out of range"),
        ("train", "--out {out}/r --grad-clip nan", "finite"),
        ("export", "--model {model} --image {image} --dpi 20000 --out {out}", "between 10"),
        ("fuzz_uploads", "--cases nan --save-crashes {out}", "whole number"),
        ("bench_app", "--repeats 0", "between 1"),
    ],
)
def test_as_a_person_runs_them(cli, args, phrase, world, tmp_path):
    argv = _fill(args, world, tmp_path / "o").split()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [sys.executable, "-m", f"tools.{cli}", *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    assert phrase in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()


def test_an_output_error_after_the_work_is_one_line_naming_the_path(world, tmp_path, capsys):
    """A folder that stops being writable while the samples are drawn: one error line naming
    the path, and no partial file."""
    out = tmp_path / "c.png"

    def complete_then_block(*args, **kwargs):
        out.mkdir()  # the place the grid should go is taken
        return np.zeros((1, 6, 6, 1), dtype=np.uint8)

    import models.completion as completion

    original = completion.complete
    completion.complete = complete_then_block
    try:
        rc = tools.complete.main(
            [str(world["image"]), "--model", str(world["model"]), "--out", str(out)]
        )
    finally:
        completion.complete = original
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert str(out) in err and "Traceback" not in err
    assert [p.name for p in tmp_path.iterdir()] == ["c.png"]  # the folder; no stray temp file


@pytest.mark.parametrize(
    "spec",
    [
        f"strided(l={HUGE})",
        f"strided(l=-{HUGE})",
        f"fixed(l=28, c={HUGE})",
        f"multihead(dense(), local({HUGE}))",
        f"local({2**20 + 1})",
    ],
)
def test_layout_spec_integers_are_bounded_before_any_arithmetic(spec):
    from kernels.layouts import parse_layout

    with pytest.raises(ValueError, match="out of range"):
        parse_layout(spec)
    assert parse_layout(f"local({2**20})").l == 2**20


def test_sampling_refuses_non_finite_settings_and_bounds_the_samples():
    from models.sampling import MAX_SAMPLES, bytes_per_sample, logits_to_probs, max_samples

    logits = torch.zeros(2, 256)
    for bad in (float("nan"), float("inf"), -1.0):
        with pytest.raises(ValueError, match="temperature"):
            logits_to_probs(logits, temperature=bad)
    with pytest.raises(ValueError, match="top_p"):
        logits_to_probs(logits, top_p=float("nan"))
    shipped = ModelConfig.from_name("fmnist-medium")
    assert 16 <= max_samples(shipped) <= MAX_SAMPLES  # the app's 1-16 always fit
    assert max_samples(shipped) * bytes_per_sample(shipped) <= 4 * 2**30
    assert max_samples(ModelConfig.from_name("cifar-small")) < max_samples(shipped)
