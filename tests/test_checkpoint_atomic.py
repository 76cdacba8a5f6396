"""A training checkpoint is one atomic unit (models/run_folder.py): a crash at any write resumes
from the last complete checkpoint and ends with the weights of an uninterrupted run; --resume
refuses what it cannot continue exactly; a NaN loss stops the run and keeps the last good
checkpoint. On tiny synthetic data (tests/test_training.py's fixture)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import faults
import pytest
import torch
from safetensors.torch import load, load_file, save
from test_training import ROOT, cfg, tiny_data  # noqa: F401 - tiny_data is a fixture

import models.run_folder as run_folder
import models.training as training
import tools.train
from models import CheckpointError, load_model, save_model
from models.run_folder import CHECKPOINTS_DIR, MANIFEST_FILE, RUN_FILE, STATE_FILE
from models.training import TrainingDiverged, train

STEPS = dict(steps=4, eval_every=2)


class Crash(BaseException):
    """Stands for SIGKILL in-process: nothing catches it, nothing is cleaned up."""


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def whole(tiny_data, tmp_path_factory) -> dict[str, torch.Tensor]:  # noqa: F811
    out = tmp_path_factory.mktemp("whole") / "run"
    train(cfg(tiny_data, **STEPS), out)
    return weights(out)


def crash_at(n: int, monkeypatch) -> None:
    """A Crash at write point n of this process (tests/faults.py: three points a file)."""

    def crash(label: str) -> None:
        raise Crash(label)

    faults.install(n, crash, monkeypatch)


def test_a_crash_at_every_write_resumes_to_the_same_weights(
    tiny_data,  # noqa: F811
    whole,
    tmp_path,
    monkeypatch,
    capsys,
):
    labels, said = [], []
    n = 0
    while True:
        n += 1
        out = tmp_path / f"crash{n}"
        crash_at(n, monkeypatch)
        try:
            train(cfg(tiny_data, **STEPS), out)
        except Crash as e:
            labels.append(str(e))
        else:
            break  # n is past the last write point of a whole run
        monkeypatch.undo()
        # whatever a crash left beside checkpoints/ is a model that loads, or no model at all
        if (out / "model.safetensors").exists() and (out / "config.json").exists():
            load_model(out)
        capsys.readouterr()
        train(cfg(tiny_data, **STEPS), out, resume=True)
        said.append(capsys.readouterr().err)
        assert_same_weights(weights(out), whole)
        assert_same_weights(weights(out / CHECKPOINTS_DIR / "step-00000004"), whole)
        assert run_folder.read_run_record(out).final["test_images"] == 12
        assert [p.name for p in (out / CHECKPOINTS_DIR).iterdir()] == ["step-00000004"]
    # every file of both checkpoints was interrupted half-written, before and after its rename
    assert len(labels) >= 2 * 3 * 8
    for name in ("config.json", "model.safetensors", STATE_FILE, RUN_FILE, MANIFEST_FILE):
        assert any(f"{name}.tmp half written" in x for x in labels), name
    assert any("resuming from" in s and "passed over step-00000004" in s for s in said)
    assert any("no complete checkpoint" in s and "starting from step 0" in s for s in said)


@pytest.mark.parametrize("at", [4, 30])
def test_sigkill_while_a_checkpoint_is_written(tiny_data, whole, tmp_path, at):  # noqa: F811
    """The real thing: the training process is killed (SIGKILL) at write ``at``
    (tests/faults.py runs tools.train)."""
    out = tmp_path / "run"
    c = cfg(tiny_data, **STEPS)
    args = f"--preset {c.preset} --layout {c.layout} --steps {c.steps} --batch-size {c.batch_size}"
    args += f" --warmup {c.warmup} --eval-every {c.eval_every} --eval-images {c.eval_images}"
    args += f" --lr {c.lr} --threads 1"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(ROOT / "tests" / "faults.py"), str(at), *args.split()]
    cmd += ["--data", tiny_data]
    cmd += ["--out", str(out)]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    train(c, out, resume=True)
    assert_same_weights(weights(out), whole)


def test_resume_refuses_a_model_folder_no_resumable_run_wrote(tiny_data, tmp_path):  # noqa: F811
    """`cp -r assets/models/strided runs/s` then --resume --out runs/s: refused, untouched."""
    out = tmp_path / "run"
    train(cfg(tiny_data, steps=2, eval_every=2), out)
    shipped = tmp_path / "shipped"
    save_model(load_model(out), shipped)
    (shipped / RUN_FILE).write_text((out / RUN_FILE).read_text())
    before = {p.name: p.read_bytes() for p in shipped.iterdir()}
    with pytest.raises(CheckpointError, match="not written by a resumable run"):
        train(cfg(tiny_data, steps=2, eval_every=2), shipped, resume=True)
    with pytest.raises(CheckpointError, match="already holds a model"):
        train(cfg(tiny_data, steps=2, eval_every=2), shipped)
    assert {p.name: p.read_bytes() for p in shipped.iterdir()} == before


def test_resume_with_other_settings_says_what_changed(tiny_data, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    train(cfg(tiny_data, **STEPS), out, stop_at=2)
    with pytest.raises(CheckpointError) as e:
        train(cfg(tiny_data, steps=5, eval_every=2, batch_size=8, seed=3), out, resume=True)
    msg = str(e.value)
    for change in ("--steps 5 (the run has 4)", "--batch-size 8 (the run has 4)", "--seed 3"):
        assert change in msg, msg
    assert "--lr" not in msg and "--threads" not in msg
    train(cfg(tiny_data, **STEPS, threads=2), out, resume=True)  # threads may change
    with pytest.raises(ValueError, match="already at step 4"):
        train(cfg(tiny_data, **STEPS), out, resume=True, stop_at=3)


def _rewrite(folder: Path, name: str, data: bytes) -> None:
    """Replace a checkpoint file and its manifest entry: complete, but wrong inside."""
    (folder / name).write_bytes(data)
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    manifest["files"][name] = hashlib.sha256(data).hexdigest()
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))


def test_a_mismatched_run_record_or_train_state_names_the_file(tiny_data, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    train(cfg(tiny_data, **STEPS), out, stop_at=2)
    folder = out / CHECKPOINTS_DIR / "step-00000002"
    good_record = (folder / RUN_FILE).read_bytes()
    record = json.loads(good_record)
    record["wall_time_s"] = "soon"
    _rewrite(folder, RUN_FILE, json.dumps(record).encode())
    with pytest.raises(CheckpointError, match=f"{folder / RUN_FILE}.*wall_time_s"):
        train(cfg(tiny_data, **STEPS), out, resume=True)
    _rewrite(folder, RUN_FILE, good_record)

    data = (folder / STATE_FILE).read_bytes()
    tensors = load(data)
    meta = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])["__metadata__"]
    without = {k: v for k, v in tensors.items() if not k.startswith("exp_avg_sq.")}
    _rewrite(folder, STATE_FILE, save(without, metadata=meta))
    with pytest.raises(CheckpointError, match=f"{folder / STATE_FILE}.*exp_avg_sq.* missing"):
        train(cfg(tiny_data, **STEPS), out, resume=True)
    _rewrite(folder, STATE_FILE, save(tensors, metadata={**meta, "step": "1"}))
    with pytest.raises(CheckpointError, match="state of step 1"):
        train(cfg(tiny_data, **STEPS), out, resume=True)
    # a file changed without its manifest: the checkpoint is incomplete, never loaded
    (folder / STATE_FILE).write_bytes(data[:-10])
    with pytest.raises(CheckpointError, match="does not match the SHA-256"):
        train(cfg(tiny_data, **STEPS), out, resume=True)


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(
    tiny_data,  # noqa: F811
    tmp_path,
    monkeypatch,
    capsys,
):
    original = training.train_step

    def poisoned(run, *args):
        if run.step == 2:  # the third step: its loss is NaN
            with torch.no_grad():
                next(run.model.parameters()).fill_(float("nan"))
        return original(run, *args)

    monkeypatch.setattr(training, "train_step", poisoned)
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match="at step 3.*last good checkpoint \\(step 2\\)"):
        train(cfg(tiny_data, **STEPS), out)
    good = weights(out / CHECKPOINTS_DIR / "step-00000002")
    assert_same_weights(weights(out), good)
    assert all(torch.isfinite(t).all() for t in good.values())
    assert load_model(out) is not None
    # the command line: one error line, exit status 1
    c = cfg(tiny_data, **STEPS)
    argv = ["--preset", c.preset, "--steps", "4", "--batch-size", "4", "--warmup", "2"]
    argv += ["--eval-every", "2", "--eval-images", "4", "--threads", "1", "--data", tiny_data]
    assert tools.train.main([*argv, "--out", str(tmp_path / "cli")]) == 1
    err = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()  # after the bar
    assert err[-1].startswith("error: the loss is nan"), err


def test_resume_on_a_copy_of_a_shipped_model_changes_nothing(tmp_path, capsys):
    """`cp -r assets/models/strided runs/s`, then `tools.train --resume --out runs/s`."""
    import shutil

    copy = tmp_path / "s"
    shutil.copytree(ROOT / "assets" / "models" / "strided", copy)
    before = {p.name: p.read_bytes() for p in copy.iterdir()}
    argv = ["--preset", "fmnist-medium", "--layout", "strided", "--out", str(copy)]
    assert tools.train.main([*argv, "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --resume: ") and err.count("\n") == 1, err
    assert "not written by a resumable run" in err
    assert tools.train.main(argv) == 2
    assert "already holds a model" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in copy.iterdir()} == before


@pytest.mark.parametrize(
    "bad",
    [
        {"grad_clip": float("nan")},
        {"lr": float("inf")},
        {"lr": 0.0},
        {"eval_images": 0},
        {"steps": 0},
        {"min_lr_ratio": 2.0},
        {"dropout": float("nan")},
        {"minutes": -1.0},
    ],
)
def test_train_refuses_unusable_settings_before_anything(tiny_data, tmp_path, bad):  # noqa: F811
    with pytest.raises(ValueError, match=next(iter(bad))):
        train(cfg(tiny_data, **bad), tmp_path / "run")
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="stop_at"):
        train(cfg(tiny_data), tmp_path / "run", stop_at=0)


@pytest.mark.parametrize("name", [MANIFEST_FILE, RUN_FILE, STATE_FILE, "model.safetensors"])
def test_a_fifo_in_a_checkpoint_is_refused_not_read(tiny_data, tmp_path, name):  # noqa: F811
    """A named pipe where a checkpoint file should be (reading it would block for ever): the
    checkpoint is not complete, and --resume says why, at once (an alarm fails a hang)."""
    out = tmp_path / "run"
    train(cfg(tiny_data, **STEPS), out, stop_at=2)
    folder = out / CHECKPOINTS_DIR / "step-00000002"
    (folder / name).unlink()
    os.mkfifo(folder / name)
    old = signal.signal(signal.SIGALRM, lambda *a: pytest.fail("reading a FIFO hung"))
    signal.alarm(60)
    try:
        assert run_folder.checkpoint_problem(folder) is not None
        assert "FIFO" in run_folder.checkpoint_problem(folder)
        # no complete checkpoint is left beside the model: refused, naming the FIFO
        with pytest.raises(CheckpointError, match="no complete training checkpoint.*FIFO"):
            train(cfg(tiny_data, **STEPS), out, resume=True)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_run_files_are_read_with_a_bound(tiny_data, tmp_path, monkeypatch):  # noqa: F811
    """run.json, the manifest and the train state are read through models/files.py: a file
    larger than its bound is refused by name before it is read."""
    out = tmp_path / "run"
    train(cfg(tiny_data, **STEPS), out, stop_at=2)
    folder = out / CHECKPOINTS_DIR / "step-00000002"
    monkeypatch.setitem(run_folder.FILE_LIMITS, RUN_FILE, 100)
    problem = run_folder.checkpoint_problem(folder)
    assert f"{folder / RUN_FILE}" in problem and "too large" in problem
    with pytest.raises(CheckpointError, match="too large"):
        run_folder.read_record(out / RUN_FILE)
    with pytest.raises(CheckpointError, match="too large"):
        run_folder.read_run_record(out)  # every reader of run.json: the same bound
    monkeypatch.setitem(run_folder.FILE_LIMITS, RUN_FILE, run_folder.MAX_RECORD_BYTES)
    monkeypatch.setattr(run_folder, "MAX_STATE_BYTES", 100)
    run = training.start_run(
        cfg(tiny_data, **STEPS),
        tmp_path / "other",
        training.Ranks(0, 1, torch.device("cpu")),
        resume=False,
    )
    with pytest.raises(CheckpointError, match="cannot resume from .*too large"):
        run_folder.load_state(
            folder / STATE_FILE, run.model, run.optimizer, step=2, device=torch.device("cpu")
        )
