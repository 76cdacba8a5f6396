"""The Export page tells what an export takes before it starts (files, size, memory) without a
guessed time (it said ~5 s for 25 s on a busy server), and its progress bar tells the time left
from the pace measured as it runs."""

from __future__ import annotations

import re
from pathlib import Path

from streamlit.testing.v1 import AppTest

from app_pages.export_panel import export_progress
from tests.test_app import tiny_models

APP = str(Path(__file__).resolve().parents[1] / "app.py")


def test_the_time_left_is_the_pace_measured_so_far():
    assert export_progress(3, 10, "a.png", 100.0, now=106.0) == (
        "3 of 10 files (6 s so far, about 14 s left): a.png"
    )
    assert export_progress(10, 10, "z.npz", 100.0, now=125.0) == "10 of 10 files (25 s): z.npz"
    # slower files later: the estimate follows the measured pace
    assert "about 36 s left" in export_progress(4, 10, "b.png", 100.0, now=124.0)


def test_the_export_page_states_no_guessed_time_and_reports_its_pace(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSE_EXPLORER_MODELS", str(tiny_models(tmp_path)))
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    at.switch_page("app_pages/export_page.py").run()
    assert not at.exception, at.exception
    (told,) = [c.value for c in at.caption if c.value.startswith("This export:")]
    assert "files, about" in told and "MB of memory" in told and "measured as it runs" in told
    assert not re.search(r"~\s*\d+(\.\d+)?\s*(s|min)\b", told), told  # no guessed duration
    at.multiselect(key="exp_layers").set_value([1]).run()
    at.multiselect(key="exp_formats").set_value(["png", "npz"]).run()
    at.button(key="exp_run").click().run()
    assert not at.exception, at.exception
    task = at.session_state["exp_job"].task
    assert task.result[1] == (1 + 2 + 1) * 2 + 1  # and index.md
    assert re.fullmatch(r"8 of 8 files \(\d+ s\): .+", task.text), task.text
