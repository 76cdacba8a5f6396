"""The Training page through AppTest, on a tiny run trained here with a timeline
(tests/test_training.py's synthetic data), and on a folder without one."""

import json
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from analysis.timeline import TimelineRecorder
from models.training import train
from tests.figure_util import image_values
from tests.test_app import chart, title, trace, values
from tests.test_training import cfg, tiny_data  # noqa: F401  (a fixture)

APP = str(Path(__file__).resolve().parents[1] / "app.py")


def test_training_page_scrubs_a_timeline(tiny_data, tmp_path, monkeypatch):  # noqa: F811
    models = tmp_path / "models"
    models.mkdir()
    recorder = TimelineRecorder(2, points=4)
    train(cfg(tiny_data, steps=6, eval_every=3), models / "run", timeline=recorder)
    (models / "plain").mkdir()
    (models / "plain" / "config.json").write_text("{}")
    monkeypatch.setenv("SPARSE_EXPLORER_MODELS", str(models))
    at = AppTest.from_file(APP, default_timeout=120)
    at.switch_page("app_pages/training.py").run()
    assert not at.exception, at.exception
    folders = at.selectbox(key="trn_folder").options
    assert folders[0].endswith("run") and any(f.endswith("plain") for f in folders)
    assert at.select_slider(key="trn_step").value == 6
    mosaic = image_values(trace(chart(at, "trn_grid"), "heads"))
    assert mosaic.shape == (2 * 29 - 1, 2 * 29 - 1)  # fmnist-tiny: 2 layers x 2 heads
    assert np.nanmax(mosaic) == pytest.approx(1.0, abs=0.005)  # each head scaled to its max
    metric = chart(at, "trn_metric_fig")
    assert len([t for t in metric["data"] if t["name"].startswith("L")]) == 4
    types = values(trace(chart(at, "trn_types"), "types")["z"])
    assert types.shape == (4, 5)  # 4 heads x 5 snapshots (steps 0, 1, 2, 3, 6)
    probe = values(trace(chart(at, "trn_bpd"), "probe images (snapshots)")["y"])
    assert probe.shape == (5,) and probe[-1] < probe[0]
    at.select_slider(key="trn_step").set_value(0).run()
    assert not at.exception
    assert title(chart(at, "trn_grid")).startswith("step 0:")
    at.selectbox(key="trn_probe").set_value(1).run()
    at.selectbox(key="trn_metric").set_value("entropy").run()
    assert not at.exception
    # a folder without a timeline says so; a path outside the project is refused
    plain = [f for f in folders if f.endswith("plain")][0]
    at.selectbox(key="trn_folder").set_value(plain).run()
    assert not at.exception
    assert "has no timeline" in "\n".join(i.value for i in at.info)
    at.text_input(key="trn_path").set_value("/etc").run()
    assert not at.exception
    assert "outside the project" in "\n".join(e.value for e in at.error)


def test_training_settings_come_from_the_url_and_stay(tiny_data, tmp_path, monkeypatch):  # noqa: F811
    """A link opens the run, step, probe and metric it names; a step the run lacks, a metric it
    did not record and a typed path are not taken, and a typed path is never written to it."""
    models = tmp_path / "models"
    models.mkdir()
    recorder = TimelineRecorder(2, points=4)
    for name in ("a_run", "b_run"):
        train(cfg(tiny_data, steps=6, eval_every=3), models / name, timeline=recorder)
    monkeypatch.setenv("SPARSE_EXPLORER_MODELS", str(models))
    at = AppTest.from_file(APP, default_timeout=120)
    b_run = str(models / "b_run")
    for key, value in {
        "trn_folder": b_run,
        "trn_step": "3",
        "trn_probe": "1",
        "trn_metric": "entropy",
        "trn_path": "/etc",  # not a setting: a typed path is not read from a link
    }.items():
        at.query_params[key] = value
    at.switch_page("app_pages/training.py").run()
    assert not at.exception, at.exception

    def same() -> None:
        assert at.selectbox(key="trn_folder").value == b_run
        assert at.select_slider(key="trn_step").value == 3
        assert at.selectbox(key="trn_probe").value == 1
        assert at.selectbox(key="trn_metric").value == "entropy"
        assert at.text_input(key="trn_path").value == ""

    same()
    assert at.query_params["trn_folder"] == b_run and at.query_params["trn_step"] == "3"
    assert at.query_params["trn_metric"] == "entropy"
    at.text_input(key="trn_path").set_value(str(models / "a_run")).run()
    assert "trn_path" not in at.query_params
    at.text_input(key="trn_path").set_value("").run()
    at.switch_page("app_pages/layouts.py").run()
    at.switch_page("app_pages/training.py").run()
    assert not at.exception, at.exception
    same()

    bad = AppTest.from_file(APP, default_timeout=120)
    for key, value in {
        "trn_folder": "/etc",  # not a listed run
        "trn_step": "5",  # no snapshot at step 5
        "trn_probe": "-1",
        "trn_metric": "nonsense",
    }.items():
        bad.query_params[key] = value
    bad.switch_page("app_pages/training.py").run()
    assert not bad.exception, bad.exception
    assert bad.selectbox(key="trn_folder").value == str(models / "a_run")
    assert bad.select_slider(key="trn_step").value == 6  # the last snapshot
    assert bad.selectbox(key="trn_probe").value == 0
    assert bad.selectbox(key="trn_metric").value == "coverage_strided"  # the first


def test_the_shipped_run_is_shown_out_of_the_box(tmp_path, monkeypatch):
    """With no runs of one's own, the Training page opens the run shipped in assets/runs/:
    a CPU-trained 14 x 14 model with its timeline, small, without optimizer state."""
    shipped = Path(APP).parent / "assets" / "runs" / "mini-dense-14"
    files = {p.name for p in shipped.iterdir()}
    assert files == {
        "README.md",
        "config.json",
        "model.safetensors",
        "run.json",
        "timeline.json",
        "timeline.npz",
    }
    assert sum(p.stat().st_size for p in shipped.iterdir()) < 4 * 2**20
    monkeypatch.setenv("SPARSE_EXPLORER_RUNS", str(tmp_path / "runs"))
    at = AppTest.from_file(APP, default_timeout=120)
    at.switch_page("app_pages/training.py").run()
    assert not at.exception, at.exception
    assert at.selectbox(key="trn_folder").value == "assets/runs/mini-dense-14"
    record = json.loads((shipped / "run.json").read_text())
    assert at.select_slider(key="trn_step").value == record["steps"]  # the last snapshot
    mosaic = image_values(trace(chart(at, "trn_grid"), "heads"))
    assert mosaic.shape == (4 * 15 - 1, 4 * 15 - 1)  # fmnist-mini: 4 x 4 heads of 14 x 14
    probe = values(trace(chart(at, "trn_bpd"), "probe images (snapshots)")["y"])
    assert probe[-1] < probe[0] - 3  # it learned: from about 8 bits/dim to about 3


def test_a_typed_path_that_cannot_be_a_folder_is_named_not_raised(tiny_data, tmp_path, monkeypatch):  # noqa: F811
    """A 300-character name (OSError: File name too long), a NUL byte (ValueError) and a path
    of 5,000 characters are each one message; a folder whose name is Markdown and that has no
    timeline is named as typed (escaped), not rendered."""
    monkeypatch.setenv("SPARSE_EXPLORER_RUNS", str(tmp_path / "runs"))
    at = AppTest.from_file(APP, default_timeout=120)
    at.switch_page("app_pages/training.py").run()
    assert not at.exception, at.exception
    for typed, says in [
        ("runs/" + "x" * 300, "a file name has at most 255"),
        ("runs/a\x00b", "NUL"),
        ("runs/" + "a/" * 2500, "this page reads paths of at most"),
    ]:
        at.text_input(key="trn_path").set_value(typed).run()
        assert not at.exception, (typed[:20], at.exception)
        errors = "\n".join(e.value for e in at.error)
        assert says in errors and "it is not read" in errors, errors
    name = "**bold** [x](y)"
    folder = tmp_path / "runs" / name  # inside runs/: a folder the page may read
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    at.text_input(key="trn_path").set_value(str(folder)).run()
    assert not at.exception, at.exception
    info = "\n".join(i.value for i in at.info)
    assert "has no timeline" in info
    assert "\\*\\*bold\\*\\*" in info and "\\[x\\]" in info  # escaped: shown as typed
