"""Issue 33: what a path can be besides a small regular file, and the other ways a command line
ended in a hang, a traceback or lost work.

- every reader of a path (model configs and weights, images, data files, records) checks its kind
  and size before opening it (models/files.py): a FIFO is refused, never waited on; /dev/zero
  through a symlink is refused, never read until memory runs out;
- a config's size is bounded with the MLP counted before anything is allocated;
- Ctrl-C is one ``interrupted`` line and exit 130, a closed stdout loses nothing;
- files are written atomically with the umask's mode, a failed write names its file;
- tools.train estimates its memory and bounds --minutes; tools.export's default query is the
  centre of the model given.

Whatever could hang runs under a deadline (``deadline`` in-process, ``timeout=`` for
subprocesses), so a regression fails instead of blocking the suite.
"""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import models.completion
import tools.ablate
import tools.analyze
import tools.card
import tools.cli
import tools.complete
import tools.evaluate
import tools.export
import tools.train
from models import ModelConfig, SparseTransformer, save_model
from models.checkpoint import (
    MAX_PARAMETERS,
    CheckpointError,
    check_model_size,
    load_config,
    load_model,
    parameter_count,
)
from models.datasets import DatasetError, load_idx
from models.files import FileInputError, check_file, read_file
from models.uploads import ImageInputError, read_image_file

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs (POSIX)")


class Hung(BaseException):
    """Raised by ``deadline`` in the test's thread: a BaseException, so no CLI swallows it."""


@contextmanager
def deadline(seconds: float = 30.0):
    """Fail (instead of hanging the suite) when the body takes longer than ``seconds``."""

    def stop(signum, frame):
        raise Hung(f"still running after {seconds} s: it hung")

    old = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _png(path: Path, side: int = 6) -> Path:
    buf = io.BytesIO()
    Image.fromarray(np.full((side, side), 200, dtype=np.uint8)).save(buf, format="PNG")
    path.write_bytes(buf.getvalue())
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("special")
    torch.manual_seed(0)
    config = ModelConfig(height=6, width=6, n_layer=1, n_head=2, n_embd=16, layout="strided(l=6)")
    model = save_model(SparseTransformer(config), base / "model")
    fifo_config = save_model(SparseTransformer(config), base / "fifo_config")
    (fifo_config / "config.json").unlink()
    os.mkfifo(fifo_config / "config.json")
    zero_config = save_model(SparseTransformer(config), base / "zero_config")
    (zero_config / "config.json").unlink()
    (zero_config / "config.json").symlink_to("/dev/zero")
    fifo_weights = save_model(SparseTransformer(config), base / "fifo_weights")
    (fifo_weights / "model.safetensors").unlink()
    os.mkfifo(fifo_weights / "model.safetensors")
    zero_weights = save_model(SparseTransformer(config), base / "zero_weights")
    (zero_weights / "model.safetensors").unlink()
    (zero_weights / "model.safetensors").symlink_to("/dev/zero")
    os.mkfifo(base / "fifo.png")
    (base / "zero.png").symlink_to("/dev/zero")
    return {
        "base": base,
        "model": model,
        "fifo_config": fifo_config,
        "zero_config": zero_config,
        "fifo_weights": fifo_weights,
        "zero_weights": zero_weights,
        "image": _png(base / "x.png"),
        "fifo_image": base / "fifo.png",
        "zero_image": base / "zero.png",
    }


def _with_config(world, name: str, **changes) -> Path:
    """A copy of the tiny model whose config.json holds ``changes`` (unbound weights are fine:
    the size checks come first)."""
    folder = world["base"] / name
    if not folder.exists():
        save_model(SparseTransformer(load_config(world["model"])), folder)
        raw = json.loads((folder / "config.json").read_text())
        raw["config"].update(changes)
        (folder / "config.json").write_text(json.dumps(raw))
    return folder


# --- the one check (models/files.py) -------------------------------------------------------


def test_read_file_refuses_every_special_file_before_opening_it(world, tmp_path):
    with deadline(10):
        for path, phrase in [
            (world["fifo_image"], "named pipe (FIFO)"),
            (world["zero_image"], "character device (through a symlink)"),
            (Path("/dev/zero"), "character device"),
            (tmp_path, "a folder"),
            (tmp_path / "missing", "does not exist"),
        ]:
            with pytest.raises(
                FileInputError, match=phrase.replace("(", r"\(").replace(")", r"\)")
            ):
                read_file(path, 2**20)
            with pytest.raises(FileInputError):
                check_file(path, 2**20)
    big = tmp_path / "big"
    big.write_bytes(b"x" * 101)
    with pytest.raises(FileInputError, match="101 bytes, too large: .* at most 100 bytes"):
        read_file(big, 100)
    assert read_file(big, 101) == b"x" * 101
    link = tmp_path / "link"
    link.symlink_to(big)  # a symlink to a regular file is that file
    assert read_file(link, 101) == b"x" * 101
    with pytest.raises(ValueError, match="through a symlink"):  # the caller's error type
        read_file(world["zero_image"], 10, error=ValueError)


@pytest.mark.parametrize("kind", ["fifo_config", "zero_config", "fifo_weights", "zero_weights"])
def test_a_model_folder_with_special_files_is_refused_at_once(world, kind):
    with deadline(10), pytest.raises(CheckpointError, match="not a regular file") as e:
        load_model(world[kind])
    name = "config.json" if "config" in kind else "model.safetensors"
    assert str(world[kind] / name) in str(e.value)


@pytest.mark.parametrize("kind", ["fifo_image", "zero_image"])
def test_an_image_path_that_is_a_special_file_is_refused(world, kind):
    with deadline(10), pytest.raises(ImageInputError, match="not a regular file"):
        read_image_file(world[kind])


def test_a_data_file_that_is_a_fifo_or_dev_zero_is_refused(world):
    with deadline(10):
        for path in (world["fifo_image"], world["zero_image"]):
            with pytest.raises(DatasetError, match="not a regular file"):
                load_idx(path)


# --- sizes bounded before allocation ---------------------------------------------------------


def test_parameter_count_is_the_model_s_own():
    for bias in (True, False):
        for ratio in (4.0, 2.0, 0.3):
            c = ModelConfig(
                height=5, width=7, channels=3, n_layer=2, n_head=2, n_embd=24, bias=bias,
                mlp_ratio=ratio, layout="dense()",
            )  # fmt: skip
            assert parameter_count(c) == SparseTransformer(c).num_params()


@pytest.mark.parametrize(
    ("ratio", "phrase"),
    [(1e12, "parameters"), (1e300, "units per layer"), (1e-9, "MLP of 0 units"), (0.01, "MLP")],
)
def test_an_mlp_ratio_out_of_bounds_is_refused_before_allocation(ratio, phrase):
    config = ModelConfig(height=6, width=6, n_layer=1, n_head=2, n_embd=16, mlp_ratio=ratio)
    with pytest.raises(CheckpointError, match=phrase):
        check_model_size(config)


@pytest.mark.parametrize(
    ("changes", "phrase"),
    [
        ({"mlp_ratio": 1e12}, "parameters"),
        ({"mlp_ratio": 1e5}, "do not match"),  # within the bound: refused by the weights' size
        ({"mlp_ratio": 1e-9}, "MLP of 0 units"),
        ({"n_embd": 2**16, "n_head": 1}, "parameters"),
    ],
    ids=str,
)
@pytest.mark.parametrize("cli", ["complete", "analyze", "evaluate", "export", "ablate"])
def test_a_huge_or_empty_mlp_is_one_error_line_in_every_cli(world, changes, phrase, cli, capsys):
    folder = _with_config(
        world, "cfg_" + "_".join(f"{k}{v}" for k, v in changes.items()), **changes
    )
    out = world["base"] / f"out_{cli}"
    argv = {
        "complete": [str(world["image"]), "--model", str(folder), "--out", f"{out}.png"],
        "analyze": ["--model", str(folder), "--out", str(out)],
        "evaluate": [str(folder)],
        "export": ["--model", str(folder), "--image", str(world["image"]), "--out", str(out)],
        "ablate": ["--model", str(folder), "--images", "1"],
    }[cli]
    main = getattr(tools, cli).main
    with deadline(60), _no_warnings():
        rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert phrase in err and "Traceback" not in err and "Warning" not in err


@contextmanager
def _no_warnings():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's zero-element warning would raise here
        yield


# --- every CLI, as a person runs it, on a FIFO and on /dev/zero ------------------------------


def _run(args: list[str], timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=timeout, **kwargs,
    )  # fmt: skip


@pytest.mark.parametrize(
    "args",
    [
        "complete {image} --model {fifo_config} --out {base}/c.png",
        "complete {image} --model {zero_config} --out {base}/c.png",
        "complete {fifo_image} --model {model} --out {base}/c.png",
        "complete /dev/zero --model {model} --out {base}/c.png",
        "analyze --model {fifo_config} --out {base}/a",
        "evaluate {zero_config}",
        "export --model {fifo_config} --image {image} --out {base}/f",
        "export --model {model} --image {fifo_image} --out {base}/f",
        "export --model {model} --image {zero_image} --out {base}/f",
        "ablate --model {fifo_weights}",
    ],
)
def test_no_cli_hangs_or_reads_for_ever(world, args):
    cli, *rest = args.format(**{k: str(v) for k, v in world.items()}).split()
    r = _run(["-m", f"tools.{cli}", *rest], timeout=120)  # a hang fails here, after 2 minutes
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    assert "not a regular file" in r.stderr and "Traceback" not in r.stderr


# --- Ctrl-C and a closed stdout ----------------------------------------------------------------


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("cli", ["complete", "train", "export", "analyze", "evaluate"])
def test_ctrl_c_is_one_line_and_exit_130(world, cli, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(models.completion, "complete", _interrupt)
    monkeypatch.setattr(tools.train, "train", _interrupt)
    monkeypatch.setattr(tools.export, "export_files", _interrupt)
    monkeypatch.setattr(tools.analyze, "pick_images", _interrupt)
    monkeypatch.setattr(tools.evaluate, "load_images", _interrupt)
    argv = {
        "complete": [str(world["image"]), "--model", str(world["model"]), "--out", "{o}/c.png"],
        "train": ["--preset", "fmnist-mini", "--size", "14", "--out", "{o}/r"],
        "export": ["--model", str(world["model"]), "--image", str(world["image"]), "--out", "{o}"],
        "analyze": ["--model", str(world["model"]), "--out", "{o}"],
        "evaluate": [str(world["model"])],
    }[cli]
    rc = getattr(tools, cli).main([a.format(o=tmp_path / "o") for a in argv])
    captured = capsys.readouterr()
    # (tools.export's progress bar may stand above it)
    assert rc == 130 and captured.err.endswith("\ninterrupted\n") or captured.err == "interrupted\n"
    assert "Traceback" not in captured.err and "KeyboardInterrupt" not in captured.err
    assert not (tmp_path / "o").exists() or not any(
        p.is_file() for p in (tmp_path / "o").rglob("*")
    )


def test_a_real_sigint_is_one_line_and_exit_130():
    code = (
        "import sys, time; from tools.cli import run_main\n"
        "def main(argv):\n"
        "    print('ready', flush=True); time.sleep(60); return 0\n"
        "sys.exit(run_main(main, []))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert p.stdout.readline() == "ready\n"
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130 and err == "interrupted\n", err


def test_a_closed_stdout_loses_nothing(tmp_path):
    """``... | head -1``: the reader leaves after one line; the command still writes its file,
    prints no "Broken pipe" error and exits 0."""
    out = tmp_path / "result.json"
    code = (
        "import sys; from pathlib import Path; from tools.cli import run_main, write_atomic\n"
        "def main(argv):\n"
        "    for i in range(200_000): print('line', i)\n"
        f"    write_atomic(Path({str(out)!r}), '{{}}'); print('done'); return 0\n"
        "sys.exit(run_main(main, []))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run(
        f"{sys.executable} -c \"$CODE\" | head -1", shell=True, cwd=ROOT, capture_output=True,
        text=True, timeout=60, env={**env, "CODE": code}, executable="/bin/bash",
    )  # fmt: skip
    assert r.stdout == "line 0\n" and r.stderr == "", r.stderr
    assert out.read_text() == "{}"


def test_analyze_writes_its_files_before_printing(world, monkeypatch, tmp_path):
    """The files come first: a stdout that fails on the first print loses no analysis."""
    row = {"layer": 0, "head": 0, "coverage": 1.0, "type": "local"}
    monkeypatch.setattr(
        tools.analyze, "pick_images", lambda *a: torch.zeros(1, 36, dtype=torch.long)
    )
    monkeypatch.setattr(tools.analyze, "analyze_model", lambda *a: [row])
    monkeypatch.setattr(tools.analyze, "format_table", lambda *a: "table")

    class Closed(io.StringIO):
        def write(self, text):
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", Closed())
    monkeypatch.setattr(os, "dup2", lambda *a: None)  # leave the real fd 1 alone
    rc = tools.analyze.main(["--model", str(world["model"]), "--out", str(tmp_path / "a")])
    assert rc == 0
    assert sorted(p.suffix for p in (tmp_path / "a").iterdir()) == [".csv", ".json"]


# --- atomic writes ----------------------------------------------------------------------------


def test_atomic_writes_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        tools.cli.write_atomic(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o640
    old = os.umask(0o022)
    try:
        tools.cli.write_atomic(tmp_path / "b.txt", b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o644


def test_export_on_a_full_disk_leaves_no_truncated_file_and_names_it(
    world, monkeypatch, capsys, tmp_path
):
    writes = []
    real_fsync = os.fsync

    def full(fd):  # the third file finds the disk full
        writes.append(fd)
        if len(writes) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(tools.cli.os, "fsync", full)
    out = tmp_path / "figs"
    argv = ["--model", str(world["model"]), "--image", str(world["image"]), "--out", str(out)]
    rc = tools.export.main([*argv, "--formats", "npz", "--views", "grid,pixel"])
    err = capsys.readouterr().err.splitlines()[-1]  # under the progress bar
    assert rc == 2 and err.startswith("error: "), err
    assert "No space left on device" in err and str(out) in err and ".npz" in err
    names = sorted(p.name for p in out.iterdir())
    assert 1 <= len(names) < 3 and not any(n.startswith(".") or n.endswith(".tmp") for n in names)
    for name in names:  # the files written are whole
        with np.load(out / name) as z:
            assert z.files


def test_export_defaults_to_the_centre_of_the_model_given(world, tmp_path, capsys):
    out = tmp_path / "figs"
    argv = ["--model", str(world["model"]), "--image", str(world["image"]), "--out", str(out)]
    assert tools.export.main([*argv, "--formats", "npz", "--views", "pixel"]) == 0
    names = [p.name for p in out.iterdir() if p.suffix == ".npz"]
    assert names and all("_r3c3_" in n for n in names), names  # 6 x 6: row 3, column 3
    assert tools.export.main([*argv, "--query", "6", "0"]) == 2
    assert "row 0..5, column 0..5" in capsys.readouterr().err


def test_export_of_the_shipped_14x14_run_works_without_query(tmp_path):
    run = ROOT / "assets" / "runs" / "mini-dense-14"
    image = sorted((ROOT / "assets" / "samples").glob("*.png"))[0]
    out = tmp_path / "figs"
    argv = ["--model", str(run), "--image", str(image), "--out", str(out)]
    assert tools.export.main([*argv, "--formats", "npz", "--views", "pixel", "--layers", "0"]) == 0
    assert any("_r7c7_" in p.name for p in out.iterdir())


# --- tools.train: memory and time bounded -----------------------------------------------------


def test_train_refuses_a_batch_that_cannot_fit_with_its_estimate(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(tools.train, "train", _interrupt)  # never reached
    rc = tools.train.main(["--batch-size", "65536", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: --batch-size 65536 needs about ") and "GiB" in err
    assert err.count("\n") == 1 and not (tmp_path / "r").exists()
    cfg, _ = tools.train.parse_args(["--batch-size", "64", "--out", str(tmp_path / "r")])
    config = tools.train.model_config(cfg)
    need = tools.train.check_memory(cfg, config, (2**40, "a terabyte"))
    with pytest.raises(tools.cli.UsageError, match="would fit"):
        tools.train.check_memory(cfg, config, (need - 1, "one byte too few"))


def test_train_bounds_minutes(tmp_path, capsys):
    rc = tools.train.main(["--minutes", "1e300", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 2 and "must be in (0, 10080]" in err and not (tmp_path / "r").exists()


def test_max_parameters_is_far_above_the_presets():
    for name in ("fmnist-medium", "fmnist-deep", "cifar-small"):
        assert parameter_count(ModelConfig.from_name(name)) < MAX_PARAMETERS / 100


# --- sampling at the float edges, from the command line --------------------------------------


@pytest.mark.parametrize(
    "extra", [["--temperature", "1e-300"], ["--top-p", "1e-300"], ["--temperature", "5e-324"]]
)
def test_complete_samples_at_the_float_edges(world, tmp_path, capsys, extra):
    out = tmp_path / "c.png"
    argv = [
        str(world["image"]),
        "--model",
        str(world["model"]),
        "--samples",
        "2",
        "--out",
        str(out),
    ]
    with deadline(120):
        rc = tools.complete.main([*argv, *extra])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert out.is_file() and "Traceback" not in captured.err


def test_the_deadline_itself_works():
    with pytest.raises(Hung), deadline(0.2):
        time.sleep(5)
