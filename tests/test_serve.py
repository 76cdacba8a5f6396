"""app_pages/serve.py, the app's server: what scripts/app.sh, the browser tests and the app
benchmark start (the browser tests are its end-to-end check)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tools.browser import ROOT, streamlit_command


def test_the_app_is_served_as_scripts_app_sh_serves_it(tmp_path):
    """This checkout by app_pages/serve.py; an older one without it (a benchmark's baseline)
    by `streamlit run app.py`, as that commit served it."""
    here = streamlit_command(8600)
    assert here[1:3] == ["-m", "app_pages.serve"] and "app.py" not in here
    assert "-m app_pages.serve" in (ROOT / "scripts" / "app.sh").read_text()
    older = streamlit_command(8600, tmp_path)
    assert older[1:5] == ["-m", "streamlit", "run", "app.py"]
    assert here[3:] == older[5:]  # the same options


def test_the_server_imports_the_first_page_before_it_listens():
    """pandas (app.py's reason) and the first page's figure modules are imported by the
    launcher itself, before the server starts: it runs `streamlit run app.py` with the rest."""
    code = (
        "import sys; import app_pages.serve as s; "
        "print(all(m in sys.modules for m in ('pandas', 'plotly.graph_objects', 'viz.maps'))); "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=Path(ROOT), capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["True", "False"]  # torch waits for the warm-up: a second of start-up
