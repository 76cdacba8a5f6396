"""Eight sessions at once in one process (AppTest instances in 8 threads): no cross-talk, no
exception, bounded memory. The models (st.cache_resource) are shared; everything else is not.

AppTest is made for one run at a time: each run installs a mock Runtime as *the* global one,
patches the config, and removes both when it ends, which would pull them from under the other
seven, and compiles the pages afresh in a ScriptCache of its own (CPython 3.11's compiler is
not safe in parallel threads: "AST constructor recursion depth mismatch", cpython#106905). Here
one mock Runtime, one config patch and one ScriptCache serve the whole test, as a real server has
one Runtime and one ScriptCache for all its sessions; each session still has its own session
state, script thread and upload manager.
"""

from __future__ import annotations

import contextlib
import io
import threading
import time
import traceback
from collections.abc import Iterator
from unittest.mock import MagicMock

import numpy as np
import pytest
import streamlit.testing.v1.app_test as app_test
import streamlit.testing.v1.local_script_runner as local_script_runner
from PIL import Image
from streamlit.runtime import Runtime
from streamlit.runtime.scriptrunner.script_cache import ScriptCache
from streamlit.testing.v1 import AppTest
from streamlit.testing.v1.util import patch_config_options
from test_app import APP, tiny_models

from app_pages.completion_job import CompletionJob
from tools.memory import current_rss

SESSIONS = 8
PEAK_RSS_LIMIT_MB = 3000  # generous: torch + streamlit + 8 sessions measure ~1 GB on a 2-core CPU


def rss_mb() -> float:
    """This process's resident set size now (Linux /proc)."""
    return current_rss() / 2**20


class PeakRss:
    """Samples the resident set size every 20 ms while the block runs; ``peak`` in MB."""

    def __enter__(self) -> PeakRss:
        self.peak = rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_mb())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())


class _KeepInstance(type):
    """A metaclass that ignores assignments to ``_instance`` (AppTest's per-run swap)."""

    def __setattr__(cls, name: str, value: object) -> None:
        if name != "_instance":
            super().__setattr__(name, value)


class PinnedRuntime(Runtime, metaclass=_KeepInstance):
    """What app_test sees as ``Runtime``: the real one stays installed for every session."""


@pytest.fixture
def one_runtime(monkeypatch) -> Iterator[None]:
    """One mock Runtime, config patch and ScriptCache for all sessions (see the docstring)."""
    from streamlit.runtime.caching.storage.dummy_cache_storage import MemoryCacheStorageManager
    from streamlit.runtime.dataframe_source_manager import DataframeSourceManager
    from streamlit.runtime.media_file_manager import MediaFileManager
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage

    runtime = MagicMock(spec=Runtime)
    runtime.media_file_mgr = MediaFileManager(MemoryMediaFileStorage("/mock/media"))
    runtime.dataframe_source_mgr = DataframeSourceManager()
    runtime.cache_storage_manager = MemoryCacheStorageManager()
    monkeypatch.setattr(app_test, "Runtime", PinnedRuntime)
    cache = ScriptCache()
    monkeypatch.setattr(app_test, "ScriptCache", lambda: cache)  # the pages
    monkeypatch.setattr(local_script_runner, "ScriptCache", lambda: cache)  # app.py
    monkeypatch.setattr(app_test, "patch_config_options", lambda _: contextlib.nullcontext())
    monkeypatch.setattr(Runtime, "_instance", runtime)
    with patch_config_options({"global.appTest": True}):
        yield
    monkeypatch.setattr(Runtime, "_instance", None)


def png(seed: int) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (30, 30), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def texts(at: AppTest) -> str:
    """Everything a session shows as text, and the names of the images in its state."""
    parts = []
    for kind in ("markdown", "caption", "error", "warning", "info", "title", "subheader"):
        parts += [str(e.value) for e in at.get(kind)]
    parts += [img.caption for e in at.get("image") for img in e.proto.imgs]
    for value in at.session_state.values():
        if hasattr(value, "file_id"):  # an UploadedFile
            parts.append(value.name)
        if isinstance(value, CompletionJob):  # the Complete page's job
            parts.append(value.request.image_name)
    return "\n".join(parts).replace("\\", "")  # names are shown escaped (text.as_text)


def completing(seed: int, upload: str | None):
    def run(at: AppTest, barrier: threading.Barrier) -> dict:
        at.switch_page("app_pages/complete.py").run()
        at.multiselect(key="cmp_models").set_value(["strided"]).run()
        if upload:
            at.radio(key="cmp_source").set_value("upload").run()
            at.file_uploader(key="cmp_upload").set_value((upload, png(seed), "image/png")).run()
        at.slider(key="cmp_rows").set_value(22).run()
        at.slider(key="cmp_samples").set_value(2).run()
        at.number_input(key="cmp_seed").set_value(seed).run()
        barrier.wait()
        at.button(key="cmp_run").click().run()
        job = at.session_state["cmp_job"]
        assert job.status == "done", job.status
        return {"seed": seed, "request": job.request, "samples": job.results["strided"]}

    return run


def browsing_attention(upload: str | None):
    def run(at: AppTest, barrier: threading.Barrier) -> dict:
        at.switch_page("app_pages/attention.py").run()
        if upload:
            at.radio(key="att_source").set_value("upload").run()
            at.file_uploader(key="att_upload").set_value((upload, png(99), "image/png")).run()
            assert not at.error, [e.value for e in at.error]
        barrier.wait()
        for layer, head, row in ((1, 1, 5), (0, 1, 20), (1, 0, 27)):
            at.button_group(key="att_layer").set_value(layer).run()
            at.button_group(key="att_head").set_value(head).run()
            at.number_input(key="att_row").set_value(row).run()
            title = f"layer {layer}, head {head}: where pixel ({row}, 14) looks"
            assert title in texts(at) or any(
                title in c.proto.spec for c in at.get("plotly_chart")
            ), title
        return {}

    return run


def browsing_layouts(at: AppTest, barrier: threading.Barrier) -> dict:
    at.run()
    barrier.wait()
    at.radio(key="lay_mode").set_value("side by side").run()
    at.radio(key="lay_mode").set_value("fixed").run()
    at.number_input(key="lay_c").set_value(40).run()  # impossible: explained, not raised
    assert "c * num_verts <= l" in "\n".join(e.value for e in at.error)
    return {}


def uploading_bad_files(at: AppTest, barrier: threading.Barrier) -> dict:
    at.switch_page("app_pages/attention.py").run()
    at.radio(key="att_source").set_value("upload").run()
    barrier.wait()
    noise = np.random.default_rng(7).bytes(5000)
    for name, data in (("noise.png", noise), ("empty.png", b""), ("half.png", png(5)[:60])):
        at.file_uploader(key="att_upload").set_value((name, data, "image/png")).run()
        shown = [e.value for e in at.error]
        assert any(f"{name} cannot be used" in e for e in shown), shown
    return {}


def test_eight_sessions_at_once(tmp_path, monkeypatch, record_property, one_runtime):
    monkeypatch.setenv("SPARSE_EXPLORER_MODELS", str(tiny_models(tmp_path)))
    scripts = [
        completing(11, None),
        completing(12, None),
        completing(11, None),  # the same seed as session 0: the same samples
        completing(13, "session3_secret.png"),
        browsing_attention(None),
        browsing_attention("session5_secret.png"),
        browsing_layouts,
        uploading_bad_files,
    ]
    assert len(scripts) == SESSIONS
    apps = [AppTest.from_file(APP, default_timeout=300) for _ in scripts]
    barrier = threading.Barrier(SESSIONS, timeout=300)
    outcomes: list[dict | BaseException | None] = [None] * SESSIONS

    def drive(i: int) -> None:
        try:
            outcomes[i] = scripts[i](apps[i], barrier)
        except BaseException as e:  # reported below, with the session it happened in
            e.add_note(f"session {i}: " + texts(apps[i])[-1500:])
            outcomes[i] = e
            barrier.abort()

    t0 = time.time()
    with PeakRss() as rss:
        threads = [threading.Thread(target=drive, args=(i,)) for i in range(SESSIONS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    seconds = time.time() - t0
    record_property("peak_rss_mb", round(rss.peak))
    print(f"{SESSIONS} sessions in {seconds:.1f} s, peak RSS {rss.peak:.0f} MB")

    failures = {
        i: "".join(traceback.format_exception(o))
        for i, o in enumerate(outcomes)
        if isinstance(o, BaseException) and not isinstance(o, threading.BrokenBarrierError)
    }
    assert not failures, failures
    for i, at in enumerate(apps):
        assert not at.exception, (i, at.exception)

    # no cross-talk: each session's samples come from its own request
    done = [o for o in outcomes if o and "samples" in o]
    assert [o["request"].seed for o in done] == [11, 12, 11, 13]  # the seed it asked for
    assert np.array_equal(done[0]["samples"], done[2]["samples"])  # same seed, same samples
    assert not np.array_equal(done[0]["samples"], done[1]["samples"])
    assert done[3]["request"].image_name == "session3_secret.png"
    assert all(o["request"].image_name != "session3_secret.png" for o in done[:3])
    image_bytes = [o["request"].image_bytes for o in done]
    assert image_bytes[0] == image_bytes[1] != image_bytes[3]
    # a session's upload never appears in another session
    for i, at in enumerate(apps):
        shown = texts(at)
        for j, secret in ((3, "session3_secret.png"), (5, "session5_secret.png")):
            assert (secret in shown) == (i == j), (i, secret)
    assert rss.peak < PEAK_RSS_LIMIT_MB, f"peak RSS {rss.peak:.0f} MB"
