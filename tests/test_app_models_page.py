"""The Models & speed page: the speed chart first (not behind a tab), every file it reads read
through models/files.py (a FIFO or a folder named as a file is one message, never a traceback or
a hang), and no deprecated Streamlit argument in the pages this checks."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from streamlit.testing.v1 import AppTest

from tests.test_app import errors, warnings


def said(text: str) -> str:
    return text.replace("\\", "")  # as_text escapes ":" and "_"


ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")


def models_page(monkeypatch, **env: str) -> AppTest:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    at.switch_page("app_pages/models_page.py").run()
    assert not at.exception, at.exception
    return at


def test_the_speed_chart_comes_first_outside_the_tabs(monkeypatch):
    at = models_page(monkeypatch)
    kinds = [type(e).__name__ for e in at.main]
    chart = at.get_by_key("speed_chart")
    assert chart is not None
    assert [t.label for t in at.tabs] == ["Model card", "Benchmarks"]
    for tab in at.tabs:  # not inside a tab
        assert all(getattr(e, "key", None) != "speed_chart" for e in tab)
    assert kinds.index("Block") > 0  # the tabs come after the title, caption and chart
    caption = "\n".join(c.value for c in at.caption)
    assert "--device cpu --device cpu" not in caption and "--device cpu" in caption


def test_files_that_cannot_be_read_are_one_message(tmp_path, monkeypatch):
    bench = tmp_path / "cpu_attention.json"
    os.mkfifo(bench)  # a plain read would block the page for ever
    models = tmp_path / "models"
    shutil.copytree(ROOT / "assets" / "models" / "dense", models / "dense")
    (models / "README.md").write_text("# Card\n\n![a sample](missing.png)\n\n![dir](.)\n")
    at = models_page(
        monkeypatch,
        SPARSE_EXPLORER_CPU_BENCH=str(bench),
        SPARSE_EXPLORER_MODELS=str(models),
    )
    assert "cannot be read" in said(errors(at)) and "not a regular file" in said(errors(at))
    assert "a sample: not shown" in said(warnings(at)) and "does not exist" in said(warnings(at))
    assert "dir: not shown" in said(warnings(at)) and "is a folder" in said(warnings(at))
    (models / "README.md").unlink()
    (models / "README.md").mkdir()
    at.run()
    assert not at.exception, at.exception
    assert "README.md cannot be shown" in said(errors(at))


def test_no_use_container_width_in_these_pages():
    """Deprecated: it warns in the server log at every view."""
    for name in ("models_page.py", "complete.py", "export_page.py", "pickers.py"):
        text = (ROOT / "app_pages" / name).read_text()
        assert not re.search(r"use_container_width", text), name


def test_a_kernel_that_failed_its_check_is_noted(monkeypatch):
    from kernels import dispatch

    note = (
        "The Triton band kernel (float16, cuda:0) failed its check against the composed path: "
        'it raised RuntimeError: boom. backend="auto" uses the composed path instead.'
    )
    monkeypatch.setattr(dispatch, "_notes", [note])
    at = models_page(monkeypatch)
    assert "Triton band kernel (float16, cuda:0) failed its check" in said(warnings(at))
    monkeypatch.setattr(dispatch, "_notes", [])
    at.run()
    assert "Triton" not in said(warnings(at))
