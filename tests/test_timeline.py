"""analysis/timeline.py: attention snapshots at log-spaced steps during training, on a tiny run
(tests/test_training.py's synthetic data), and the --timeline-probes flag."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from analysis.metrics import HEAD_TYPES
from analysis.timeline import (
    TIMELINE_JSON,
    TIMELINE_NPZ,
    TimelineError,
    TimelineRecorder,
    load_timeline,
    probe_indices,
    timeline_steps,
)
from models.training import train
from tests.test_training import cfg, tiny_data  # noqa: F401  (a fixture)


def recorder(probes: int = 3, points: int = 4) -> TimelineRecorder:
    return TimelineRecorder(probes, points=points)


def test_timeline_steps_are_log_spaced_and_end_at_the_last():
    steps = timeline_steps(300, 16)
    assert steps[0] == 0 and steps[1] == 1 and steps[-1] == 300
    assert steps == sorted(set(steps)) and len(steps) <= 17
    gaps = np.diff(steps[1:])
    assert gaps[-1] > gaps[0]  # denser early, where attention forms fastest
    assert timeline_steps(1, 16) == [0, 1]
    assert list(probe_indices(12, 3)) == [0, 5, 11]
    with pytest.raises(ValueError):
        probe_indices(12, 0)


def test_training_records_a_timeline_and_resumes_it(tiny_data, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    train(cfg(tiny_data, steps=6, eval_every=3), out, timeline=recorder(points=4))
    t = load_timeline(out)
    assert list(t.steps) == timeline_steps(6, 4) == [0, 1, 2, 3, 6]
    S, P, L, H, N = t.rows_u8.shape
    assert (S, P, L, H, N) == (5, 3, 2, 2, 784)
    assert t.probes.shape == (3, 784) and t.probes.dtype == np.uint8
    assert np.isnan(t.train_bpd[0]) and np.isfinite(t.train_bpd[1:]).all()
    assert (t.probe_bpd > 0).all()
    # rows: one softmax row of the probe pixel (14, 14) per head, nothing after its token
    rows = t.rows
    token = 14 * 28 + 14
    assert np.allclose(rows.sum(-1), 1, atol=0.15)  # to 1/255 of each row's max
    assert rows[..., token + 1 :].max() == 0
    assert t.pooled.shape == (5, 2, 2, 28, 28)
    for name in ("coverage_strided", "coverage_fixed", "entropy", "k90", "distance"):
        assert t.metrics[name].shape == (5, 2, 2)
    assert np.allclose(t.metrics["coverage_strided"], 1, atol=1e-4)  # a strided model
    meta = json.loads((out / TIMELINE_JSON).read_text())
    assert meta["probe_pixel"] == [14, 14] and meta["steps"] == [0, 1, 2, 3, 6]
    assert set(meta["head_types"]) <= set(HEAD_TYPES)
    assert t.types.max() < len(meta["head_types"])
    # kilobytes, not weights
    assert (out / TIMELINE_NPZ).stat().st_size < 200_000
    # snapshots run in eval mode and draw no random numbers: the weights are those of a run
    # without a timeline
    plain = tmp_path / "plain"
    train(cfg(tiny_data, steps=6, eval_every=3), plain)
    a, b = load_file(out / "model.safetensors"), load_file(plain / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # a run in pieces: snapshots up to the checkpoint are kept, the rest recorded on resume
    piece = tmp_path / "piece"
    train(cfg(tiny_data, steps=6, eval_every=3), piece, stop_at=3, timeline=recorder(points=4))
    assert list(load_timeline(piece).steps) == [0, 1, 2, 3]
    train(cfg(tiny_data, steps=6, eval_every=3), piece, resume=True, timeline=recorder(points=4))
    resumed = load_timeline(piece)
    assert list(resumed.steps) == [0, 1, 2, 3, 6]
    assert np.array_equal(resumed.rows_u8, t.rows_u8)


def test_load_timeline_absent_and_broken(tmp_path):
    assert load_timeline(tmp_path) is None
    (tmp_path / TIMELINE_NPZ).write_bytes(b"not a zip")
    with pytest.raises(TimelineError, match="not a readable timeline"):
        load_timeline(tmp_path)
    np.savez(tmp_path / TIMELINE_NPZ, steps=np.arange(3))
    with pytest.raises(TimelineError, match="lacks"):
        load_timeline(tmp_path)


def test_train_cli_timeline_flag(tiny_data, tmp_path):  # noqa: F811
    from tools.train import main, parse_args

    _, args = parse_args(["--out", str(tmp_path / "x")])
    assert args.timeline_probes == 0
    argv = [
        "--preset", "fmnist-tiny", "--layout", "fixed", "--data", tiny_data, "--steps", "3",
        "--batch-size", "4", "--warmup", "1", "--eval-every", "3", "--eval-images", "4",
        "--threads", "1", "--out", str(tmp_path / "cli"), "--timeline-probes", "2",
    ]  # fmt: skip
    assert main(argv) == 0
    t = load_timeline(tmp_path / "cli")
    assert t.probes.shape[0] == 2 and t.steps[0] == 0 and t.steps[-1] == 3
    assert main([*argv[:-2], "--timeline-probes", "-1"]) == 2


@pytest.mark.parametrize("name", [TIMELINE_NPZ, TIMELINE_JSON])
def test_a_fifo_or_a_huge_timeline_is_refused_not_read(tmp_path, name, monkeypatch):
    """timeline.npz and timeline.json are read through models/files.py: a FIFO there (reading
    it would block for ever) and a file over its bound are named, at once; an .npz whose
    arrays would decompress past their bound is refused before it is inflated."""
    import io
    import os
    import signal

    import analysis.timeline as timeline

    np.savez(tmp_path / TIMELINE_NPZ, steps=np.arange(3))
    (tmp_path / TIMELINE_JSON).write_text("{}")
    (tmp_path / name).unlink()
    os.mkfifo(tmp_path / name)
    old = signal.signal(signal.SIGALRM, lambda *a: pytest.fail("reading a FIFO hung"))
    signal.alarm(30)
    try:
        with pytest.raises(TimelineError, match="FIFO"):
            load_timeline(tmp_path)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    (tmp_path / name).unlink()
    buf = io.BytesIO()
    np.savez_compressed(buf, steps=np.zeros(2**20, np.uint8))  # 1 MiB of arrays, ~1 kB file
    (tmp_path / TIMELINE_NPZ).write_bytes(buf.getvalue())
    (tmp_path / TIMELINE_JSON).write_text("{}")
    monkeypatch.setattr(timeline, "MAX_TIMELINE_ARRAYS", 2**19)
    with pytest.raises(TimelineError, match="bytes of arrays, more than"):
        load_timeline(tmp_path)
    monkeypatch.setattr(timeline, "MAX_TIMELINE_NPZ", 100)
    with pytest.raises(TimelineError, match="too large"):
        load_timeline(tmp_path)
