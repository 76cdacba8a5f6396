"""The export popover: formats, resolution and an estimate first, the files made in the worker
pool (progress, Cancel), then the downloads."""

from __future__ import annotations

import io
import json
import time

import streamlit as st

from app_pages.pool_ui import JobWords, pool_job

EXPORT_WORDS = JobWords("export", "The export")


def export_progress(done: int, total: int, name: str, t0: float, now: float | None = None) -> str:
    """An export's progress line: files made, and the time left at the pace measured so far
    (this server, its load now), not a guess made before it started."""
    spent = (time.monotonic() if now is None else now) - t0
    left = spent / max(1, done) * max(0, total - done)
    pace = f"{spent:.0f} s so far, about {left:.0f} s left" if done < total else f"{spent:.0f} s"
    return f"{done} of {total} files ({pace}): {name}"


def export_job(key: str, items, formats, *, dpi: int, heavy: bool, start: bool):
    """The export of ``items`` kept under ``{key}_job``: started in the pool when ``start``
    (Refused is explained), followed while it runs (with Cancel), and returned once it has
    ended and is for these items and settings (else None). Its result is (zip bytes, files)."""
    from app_pages.jobs import Cancelled
    from viz.export import ExportCancelled, estimate, export_zip

    signature = [(it.name, json.dumps(it.meta, sort_keys=True, default=str)) for it in items]
    params = (signature, tuple(formats), dpi, heavy)
    guess = estimate(items, formats, dpi=dpi, heavy=heavy)
    total = max(1, guess.files)

    def work(task):
        done = []
        t0 = time.monotonic()

        def made(name: str) -> None:
            done.append(name)
            task.report(len(done) / total, export_progress(len(done), total, name, t0))

        try:
            return export_zip(
                items,
                formats,
                dpi=dpi,
                heavy=heavy,
                on_file=made,
                cancelled=lambda: task.cancelled,
            )
        except ExportCancelled:
            raise Cancelled(task.reason or "cancelled") from None

    return pool_job(key, params, work, start=start, memory=guess.memory, words=EXPORT_WORDS)


def export_choices(items, key: str, default=("png", "svg", "pdf", "html", "npz")):
    """The formats, resolution and heavy-format widgets of an export, and its estimate shown
    before it starts; returns (formats, dpi, heavy, refusal or None)."""
    from app_pages.jobs import over_budget
    from viz.export import FORMATS, HEAVY_FORMATS, estimate

    fmts = st.multiselect("Formats", FORMATS, default=list(default), key=f"{key}_formats")
    dpi = st.slider("PNG resolution (dpi)", 72, 600, 150, step=6, key=f"{key}_dpi")
    heavy = False
    big = [it for it in items if it.heavy]
    if big and any(f in HEAVY_FORMATS for f in fmts):
        heavy = st.checkbox(
            f"Also {', '.join(HEAVY_FORMATS).upper()} of the {len(big)} largest figures (N x N "
            "maps: ~6 MB each, plotly.js inlined)",
            key=f"{key}_heavy",
        )
    guess = estimate(items, fmts, dpi=dpi, heavy=heavy)
    st.caption(f"This export: {guess.describe()}.")
    return fmts, dpi, heavy, over_budget("This export", guess.memory)


def export_panel(
    items,
    key: str,
    label: str = "Export figures and data",
    default=("png", "svg", "pdf", "html", "npz"),
) -> None:
    """Download buttons for figures (viz.export.Exportable): one zip, and each file when few.

    The files are made only when asked for, in the server's worker pool (a progress bar and
    Cancel while it runs; the size, time and memory estimated first), and kept until the figures
    or the choices change.
    """
    import zipfile

    with st.popover(label):
        fmts, dpi, heavy, refusal = export_choices(items, key, default)
        if refusal:
            st.error(refusal)
        start = st.button("Prepare files", key=f"{key}_prepare", disabled=not fmts)
        job = export_job(key, items, fmts, dpi=dpi, heavy=heavy, start=start)
        if job is None:
            return
        data, count = job.result
        st.download_button(
            f"All {count - 1} files (zip)",
            data,
            file_name=f"{key}.zip",
            mime="application/zip",
            key=f"{key}_zip",
            on_click="ignore",  # no rerun: quick clicks on several downloads all arrive
        )
        if count - 1 <= MAX_FILE_BUTTONS:
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                for name in z.namelist():
                    if name != "index.md":
                        st.download_button(
                            name,
                            z.read(name),
                            file_name=name,
                            key=f"{key}_dl_{name}",
                            on_click="ignore",
                        )


MAX_FILE_BUTTONS = 12  # more files: the zip alone (each button holds its file in memory)
