"""What the pages share: the models (loaded once per process), the sample images, uploads."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import streamlit as st
from PIL import Image
from streamlit.runtime.scriptrunner import get_script_run_ctx

from app_pages import limits
from kernels.layouts import FAMILY_PARAMS, MAX_SPEC_INT
from models.datasets import DatasetError
from models.tokens import Geometry
from models.uploads import ImageInputError, prepare_image, prepare_upload, read_image_file

if TYPE_CHECKING:  # torch and the model are imported when a page first needs a model: the
    # Layouts page draws with numpy and so the app's first page skips torch's import time
    from models.model import SparseTransformer

ROOT = Path(__file__).resolve().parents[1]
SAMPLES_DIR = ROOT / "assets" / "samples"
PREFERRED = ("dense", "strided", "fixed")
# an upload whose border is at least this bright (0..255) has a light background: Fashion-MNIST
# garments are light on black, so such a photo wants Invert
LIGHT_BORDER = 160


def models_dir() -> Path:
    """Where the models are: assets/models, or $SPARSE_EXPLORER_MODELS (read on every call, so
    tests and servers can point elsewhere)."""
    return Path(os.environ.get("SPARSE_EXPLORER_MODELS", ROOT / "assets" / "models"))


def runs_dir() -> Path:
    """Where training runs are: runs/, or $SPARSE_EXPLORER_RUNS (read on every call)."""
    return Path(os.environ.get("SPARSE_EXPLORER_RUNS", ROOT / "runs"))


# the Playground's races: runs_dir()/playground-<time>/<layout>/, each an ordinary run folder
PLAYGROUND_PREFIX = "playground-"


def trained_names() -> list[str]:
    """The models the Playground has trained and saved, as "playground-<time>/<layout>" names
    (relative to runs_dir()), the newest race first."""
    found = [
        p
        for p in runs_dir().glob(f"{PLAYGROUND_PREFIX}*/*")
        if (p / "config.json").is_file() and (p / "model.safetensors").is_file()
    ]
    found.sort(key=lambda p: (p.parent.name, p.name))
    return [f"{p.parent.name}/{p.name}" for p in reversed(found)]


def model_names() -> list[str]:
    """Model directories under models_dir(), the three shipped ones first, then the models the
    Playground trained (trained_names: a name with a "/" is a run under runs_dir())."""
    found = sorted(p.name for p in models_dir().glob("*") if (p / "config.json").is_file())
    shipped = [m for m in PREFERRED if m in found] + [m for m in found if m not in PREFERRED]
    return shipped + trained_names()


def model_path(name: str) -> Path:
    """The folder of model ``name`` (one of model_names())."""
    return runs_dir() / name if "/" in name else models_dir() / name


def require_model_names() -> list[str]:
    """model_names(), or an explanation and the end of this page's run when there are none."""
    names = model_names()
    if not names:
        st.error(
            f"No models found under {as_text(models_dir())} (each model is a folder with "
            "config.json and model.safetensors)."
        )
        st.stop()
    return names


WARM_UP_AFTER_S = 1.0
_warm = threading.Lock()
_warmed: list[threading.Thread] = []


def warm_up() -> None:
    """Once per server, after the first page is drawn: import torch and the modules that run
    the models, in a background thread. The first page needs none of them; the first page
    that shows a model then finds them imported (torch alone takes about a second here)."""

    def imports() -> None:
        with contextlib.suppress(OSError, AttributeError):  # not Linux: at normal priority
            # the lowest priority (Linux schedules each thread): the browser drawing the first
            # page, on the same cores, goes first
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        import torch  # noqa: F401

        import analysis.attention  # noqa: F401
        import models.checkpoint  # noqa: F401

    with _warm:
        if not _warmed:
            # after a pause: meanwhile the browser fetches the page's chart code (MBs) from this
            # server, whose threads the imports would slow (they hold the interpreter lock)
            _warmed.append(threading.Timer(WARM_UP_AFTER_S, imports))
            _warmed[0].daemon = True
            _warmed[0].start()


def model_device() -> str:
    """Where the models run: the GPU when there is one (its attention then goes through the
    Triton kernels), else the CPU; $SPARSE_EXPLORER_DEVICE=cpu keeps them on the CPU. Tokens
    and results stay on the CPU: model.capture and sample move them across."""
    import torch

    if os.environ.get("SPARSE_EXPLORER_DEVICE") == "cpu":
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


# every cache that holds arrays or models is bounded (max_entries, ttl): a long-running server
# with many models, images and sessions keeps at most this many
@st.cache_resource(max_entries=8, ttl=3600, show_spinner="Loading model...")
def get_model(path: str) -> SparseTransformer:
    """The model, loaded once for every session of this server (read-only after loading)."""
    import torch

    from models.checkpoint import load_model

    # One intra-op thread (process-wide): sessions already run in parallel threads and a
    # sampling step's ops are tiny, while an OpenMP team of 2 on a busy 2-core machine waits for
    # a descheduled worker at every op (measured: 7.8 ms instead of 0.03 ms per linear layer).
    torch.set_num_threads(1)
    return load_model(path, device=model_device())


# every query's rows of one image from one forward, when they fit in this many MB (784 tokens,
# 8 layers of 4 heads: 79 MB): the Attention page reads a query's rows and a layer's maps from
# it, Who looks here a key's column and its summaries, with no model run per click
EVERY_ROW_MB = 128


def fits_every_row(path: str) -> bool:
    """Whether the model's every_row_of for one image stays within EVERY_ROW_MB."""
    cfg = get_model(path).config
    return 4 * cfg.n_layer * cfg.n_head * cfg.geometry.n_tokens**2 <= EVERY_ROW_MB * 2**20


@st.cache_resource(max_entries=2, ttl=3600, show_spinner="Capturing every layer...")
def every_row_of(path: str, img_key: str, _image: np.ndarray, under: str = "") -> np.ndarray:
    """analysis.attention.every_row: [L, H, N, N] float32, read-only; a resource shared by the
    pages and sessions, not copied at every hit as cache_data would (bounded: two images).
    ``under``: the attention the model runs with (analysis.attention.run_under: a spec, or
    per-layer specs separated by ";"; "" = its own layouts), part of the cache key."""
    from analysis.attention import every_row, run_under
    from models.model import NO_INTERVENTION

    model = get_model(path)
    intervention = run_under(model, under) if under else NO_INTERVENTION
    rows = every_row(model, _image, intervention=intervention)
    rows.setflags(write=False)
    return rows


@dataclass(frozen=True)
class ChosenModel:
    """A model picked on a page: its folder name, its path (the cache key of what is computed
    with it: two folders may share a name) and the loaded model."""

    name: str
    path: str
    model: SparseTransformer


def choose_model(key: str, where=st) -> ChosenModel:
    """A model picker (in ``where``: st, a column...) and its loaded model; a model that cannot
    be loaded is explained and ends this page's run."""
    name = where.selectbox("Model", require_model_names(), key=key)
    model = load_or_explain(name)
    if model is None:
        st.stop()
    return ChosenModel(name, str(model_path(name)), model)


def choose_model_and_image(prefix: str) -> tuple[ChosenModel, str, np.ndarray]:
    """The model picker (key ``{prefix}_model``) and the image picker for it; the page's run
    ends while there is no usable image. Returns the model, the image's name and the image."""
    chosen = choose_model(f"{prefix}_model")
    picked = pick_image(prefix, chosen.model.config.geometry)
    if picked is None:
        st.stop()
    return chosen, *picked


def load_or_explain(name: str) -> SparseTransformer | None:
    from models.checkpoint import CheckpointError

    try:
        return get_model(str(model_path(name)))
    except CheckpointError as e:
        st.error(as_text(f"Model '{name}' cannot be loaded: {e}"))
        return None


@st.cache_data(max_entries=4, ttl=3600, show_spinner=False)
def read_samples(geometry: Geometry, folder: str) -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
    """The sample images in ``folder``, prepared for ``geometry``: ({name: uint8 [H, W, C]}, why
    each one that cannot be used is left out). Read through models.uploads.read_image_file: a
    missing, oversized or special file (a FIFO) is refused unread, never a traceback."""
    out, problems = {}, []
    for path in sorted(Path(folder).glob("*.png")):
        try:
            out[path.stem] = prepare_image(read_image_file(path), geometry)
        except (ImageInputError, DatasetError) as e:
            problems.append(f"{path.name} is left out: {e}")
    return out, tuple(problems)


def sample_images(geometry: Geometry) -> dict[str, np.ndarray]:
    """The shipped sample images that can be used, prepared for ``geometry``."""
    return read_samples(geometry, str(SAMPLES_DIR))[0]


def pick_image(prefix: str, geometry: Geometry) -> tuple[str, np.ndarray] | None:
    """A sample image or an upload, prepared for the model; explains unusable uploads."""
    samples, problems = read_samples(geometry, str(SAMPLES_DIR))
    source = st.radio("Image", ["test image", "upload"], horizontal=True, key=f"{prefix}_source")
    if source == "test image":
        for problem in problems:
            st.warning(as_text(problem))
        if not samples:
            where = SAMPLES_DIR.relative_to(ROOT) if SAMPLES_DIR.is_relative_to(ROOT) else ""
            st.error(
                f"No test image can be read from {as_text(str(where or SAMPLES_DIR))}: "
                "upload an image instead."
            )
            return None
        name = st.selectbox("Test image", list(samples), key=f"{prefix}_sample")
        return name, samples[name]
    upload = st.file_uploader("Any image (PNG, JPEG, ...)", key=f"{prefix}_upload")
    fit = st.radio("Fit", ["crop", "letterbox"], horizontal=True, key=f"{prefix}_fit")
    invert = st.checkbox(
        "Invert (Fashion-MNIST garments are light on black)", key=f"{prefix}_invert"
    )
    if upload is None:
        st.info("Upload an image, or pick a test image.")
        return None
    data = upload.getvalue()
    problem = limits.upload_problem(len(data))  # the pixel limit: prepare_upload, from the header
    if problem:
        st.error(as_text(f"{upload.name} cannot be used: it {problem}."))
        return None
    # letterbox padding and transparency become the model's background (black) in the image
    # the model sees: filled white when the image is inverted afterwards, black when not
    fill = (255, 255, 255) if invert else (0, 0, 0)
    try:
        image, notes, border = prepare_upload(data, geometry, fit=fit, background=fill)
    except ImageInputError as e:
        st.error(as_text(f"{upload.name} cannot be used: {e}"))
        return None
    for note in notes:  # e.g. an animated GIF: only its first frame is used
        st.info(as_text(f"{upload.name}: {note}"))
    size = shown_size(data)
    told = fit_note(size, geometry, fit) if size else None
    if told:
        surprising, text = told
        (st.info if surprising else st.caption)(as_text(f"{upload.name}: {text}"))
    if border >= LIGHT_BORDER and not invert:
        st.warning(
            f"{as_text(upload.name)} has a light background (its border averages {border:.0f} "
            "of 255). "
            "The models know light garments on black: tick Invert, or the completions and "
            "attention are of a picture unlike any they were trained on."
        )
    elif border < 255 - LIGHT_BORDER and invert:
        st.warning(
            f"{as_text(upload.name)} already has a dark background (its border averages "
            f"{border:.0f} "
            "of 255): inverted, it is dark on white, unlike the training images."
        )
    return upload.name, 255 - image if invert else image


def shown_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of an image file as it is shown (EXIF rotation applied), from its header;
    None when the header cannot be read (prepare_upload has said why by then)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
            turned = img.getexif().get(0x0112, 1) in (5, 6, 7, 8)  # EXIF orientation: 90 degrees
    except Exception:  # noqa: BLE001  (any unreadable header: nothing to tell)
        return None
    return (h, w) if turned else (w, h)


def fit_note(size: tuple[int, int], geometry: Geometry, fit: str) -> tuple[bool, str] | None:
    """What fitting an image of ``size`` (width, height) to ``geometry`` did, as (surprising,
    text): cropped or padded to the model's shape, or enlarged, is surprising; only reduced is
    not; the model's own size: None (nothing was done)."""
    w, h = size
    tw, th = geometry.width, geometry.height
    if (w, h) == (tw, th):
        return None
    said = [f"{w} x {h} pixels (width x height); the model sees {tw} x {th}"]
    other_shape = w * th != h * tw
    if fit == "crop":
        cw, ch = (h * tw / th, h) if w * th > h * tw else (w, w * th / tw)
        scale = tw / cw
        if other_shape:
            said.append(
                f"only its centre {cw:.0f} x {ch:.0f} is used, the rest is cropped "
                "(Fit: letterbox keeps all of it)"
            )
    else:
        scale = min(tw / w, th / h)
        if other_shape:
            nw, nh = max(1, min(tw, round(w * scale))), max(1, min(th, round(h * scale)))
            said.append(
                f"it fills {nw} x {nh} of it, padded with the background "
                "(Fit: crop fills the frame)"
            )
    if scale > 1:
        said.append(
            f"enlarged {scale:.3g} times: each of its pixels becomes a block of about "
            f"{scale:.0f} x {scale:.0f}"
            if scale >= 2
            else f"enlarged {scale:.3g} times"
        )
    elif scale < 1:
        said.append(f"reduced {1 / scale:.3g} times")
    return other_shape or scale > 1, "; ".join(said) + "."


def show_image(image: np.ndarray, caption: str, width: int = 140) -> None:
    pil = Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)
    st.image(
        pil.resize((image.shape[1] * 5, image.shape[0] * 5), Image.NEAREST),
        caption=as_text(caption),  # a caption is Markdown; an image's name is data
        width=width,
    )


def new_click(chart_key: str, read: Callable[[object], object | None]) -> object | None:
    """What the chart drawn with ``chart_key`` holds as clicked, read from its selection event
    by ``read`` (viz.figures.clicked_pixel, clicked_tile...), in the first run after the click
    only: the event stays in the session at every rerun, and applying it again would undo a
    later change of the inputs it set."""
    picked = read(st.session_state.get(chart_key))
    if picked is None or picked == st.session_state.get(f"{chart_key}_last"):
        return None
    st.session_state[f"{chart_key}_last"] = picked
    return picked


def pending_click(chart_key: str, read: Callable[[object], object | None]) -> bool:
    """Whether the chart ``chart_key`` holds a click that new_click has not yet taken: a
    fragment's rerun hands such a click to a run of the whole page."""
    picked = read(st.session_state.get(chart_key))
    return picked is not None and picked != st.session_state.get(f"{chart_key}_last")


def take_pixel_click(chart_key: str, row_key: str, col_key: str, width: int) -> None:
    """A new click on a pixel view (viz.figures.pixel_grid_figure, ``width`` pixels a row)
    sets the row and column inputs ``row_key`` and ``col_key``, before they are drawn."""
    from viz.pixels import clicked_pixel

    picked = new_click(chart_key, lambda event: clicked_pixel(event, width))
    if picked is not None:
        st.session_state[row_key], st.session_state[col_key] = picked


CHANNEL_NAMES = ("red", "green", "blue")


def channel_picker(key: str, geometry: Geometry, where=st, label: str = "Channel") -> int | None:
    """Which of a pixel's tokens a colour model's pixel maps show: one channel (its index) or
    "all" (None: the pixel's tokens together). A grey model has one token a pixel: 0, and no
    widget is drawn."""
    if geometry.channels == 1:
        return 0
    names = ["all", *CHANNEL_NAMES[: geometry.channels]]
    if st.session_state.get(key) not in names:
        st.session_state[key] = "all"  # a value kept from a link or another model
    picked = where.radio(
        label,
        names,
        horizontal=True,
        key=key,
        help="A colour pixel is three tokens (red, green, blue, in this order). Show one of "
        "them, or all three together.",
    )
    return None if picked == "all" else names.index(picked) - 1


def pixel_values_hover(image: np.ndarray, channel: int | None, first: int) -> tuple:
    """The image's values for a pixel view's hover: numbers [H, W, K] to append to its
    hover_values, and the words a hover_template shows them with, from customdata[first] on:
    the shown channel's value, or R, G, B when a colour pixel is shown whole."""
    if image.shape[2] == 1 or channel is not None:
        return image[..., [channel or 0]].astype(np.float32), f"pixel %{{customdata[{first}]}}"
    values = ", ".join(f"%{{customdata[{first + k}]}}" for k in range(image.shape[2]))
    return image.astype(np.float32), f"pixel {values}"


def as_text(value: object) -> str:
    """``value`` (a file name, a path, a layout spec, an error about them) as literal text in
    st.markdown, st.error, st.warning, st.info, st.caption: the characters that make Markdown,
    HTML, LaTeX, links and images are backslash-escaped, line breaks become spaces, and an
    invisible WORD JOINER (U+2060) breaks what would become a bare link ("http://", "www.",
    "a@b.c": Streamlit links them after escapes are read), so a name such as
    ``**x** [a](http://h/) ![i](http://h/i.png)`` shows as typed: no bold, no link, no image
    fetched. Names are data. Plain names (letters, digits, ". , ( ) - / =") are unchanged."""
    text = _MARKUP.sub(r"\\\1", " ".join(str(value).splitlines()))
    text = _BARE_LINK.sub("\\1\u2060\\2", text)
    return _LIST_START.sub(r"\1\\\2", text)  # "1. x" or "- x" would start a list


def markdown_table(rows: list[dict]) -> str:
    """Rows with the same keys as a Markdown table for st.markdown, the keys as its header and
    every cell literal text (as_text: a spec's "|" or "*" is not markup)."""
    columns = list(rows[0]) if rows else []
    lines = [
        "| " + " | ".join(as_text(c) for c in columns) + " |",
        "|" + " --- |" * len(columns),
        *("| " + " | ".join(as_text(row[c]) for c in columns) + " |" for row in rows),
    ]
    return "\n".join(lines)


_MARKUP = re.compile(r"([\\`*_{}\[\]<>!#|~$:@&])")
_BARE_LINK = re.compile(r"(?i)(\w)(\\:(?=//)|\\@|(?<=www)\.)")  # http\://, a\@b, www.
_LIST_START = re.compile(r"^(\s*\d*)([.)+\-])")


def session_alive() -> Callable[[], bool]:
    """A check that this run's session is still open, for work that outlives the run (the
    worker pool asks it every half second). Streamlit has no callback for a closed tab, but its
    runtime drops a disconnected session from its active sessions at once
    (Runtime.is_active_session); without a real runtime (AppTest, bare mode) it says yes."""
    from streamlit import runtime
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    session_id = ctx.session_id if ctx is not None else None

    def alive() -> bool:
        if session_id is None or not runtime.exists():
            return True
        answer = runtime.get_instance().is_active_session(session_id)
        return answer is not False  # a test's mock runtime answers a mock: alive

    return alive


def queue_place(pool, task, what: str) -> str | None:
    """The line telling a person where ``task`` waits in ``pool`` (an app_pages.jobs.WorkerPool)
    for a worker, or None once it runs (or ended)."""
    place = pool.position(task)
    if place is None or place < 1:
        return None
    running, waiting = pool.busy
    return (
        f"{what} is waiting for a worker: number {place} in the queue "
        f"({running} running, {waiting} waiting; {task.waited:.0f} s so far)."
    )


def follow(task, *, what: str, on_tick: Callable[[], None] | None = None, bar: bool = True):
    """Wait in this run for ``task`` (an app_pages.jobs.Task in the pool), showing its place
    in the queue and, with ``bar``, its progress; ``on_tick()`` draws more (the Complete page's
    rows). A rerun (a click) ends this wait and leaves the task to its page (Streamlit's fast
    reruns stop this run with StopException, so a stopped run is no sign that the session
    ended); the session's end is the pool watcher's to see (session_alive)."""
    from app_pages.jobs import POOL

    slot = st.empty()
    while True:
        ended = task.wait(0.2)
        waiting = queue_place(POOL, task, what)
        if waiting is not None:
            slot.info(waiting)
        elif bar and not ended:
            slot.progress(task.share, text=as_text(task.text or f"{what}: working..."))
        else:  # a message each tick: Streamlit checks for a rerun or a stop at each one
            slot.empty()
        if on_tick is not None:
            on_tick()
        if ended:
            break
    slot.empty()


@dataclass(frozen=True)
class JobWords:
    """What a page's pool job is called: ``noun`` ("export": its task's label in the server's
    log), ``what`` ("The export") in its messages, its ``stop`` button ("Cancel", key
    ``{key}_{stop.lower()}``, the reason it gives), and ``after`` ("nothing to download.") in
    the message shown when it was stopped."""

    noun: str
    what: str
    stop: str = "Cancel"
    reason: str = "cancelled"
    after: str = "nothing to download."
    hint: str = "Choose fewer items, formats or a lower resolution."  # when over the budget


def pool_job(
    key: str,
    params,
    work: Callable | None,
    *,
    start: bool,
    memory: int,
    words: JobWords,
    replace_stale: bool = False,
):
    """A page's work in the server's worker pool (app_pages/jobs.py), kept under ``{key}_job``
    with the ``params`` it is for: ``work(task)`` (needed only then) is submitted when
    ``start`` (over the memory budget or with the queue full: refused and explained), followed
    while it runs (queue place, progress, the stop button), and returned once it is done and
    for ``params`` (else None; a stopped or failed one is explained). With ``replace_stale`` a
    task still running for other params (another image, other settings) is cancelled: nothing
    would show its result."""
    from app_pages.jobs import CANCELLED, DONE, POOL, Refused, Task, over_budget

    made = st.session_state.get(f"{key}_job")
    if replace_stale and made is not None and made[0] != params:
        made[1].cancel("its settings changed")
    if start:
        refusal = over_budget(f"This {words.noun}", memory, words.hint)
        if refusal is not None:
            st.error(refusal)
        else:
            if made is not None:
                made[1].cancel(f"replaced by a new {words.noun}")
            task = Task(work, label=f"{words.noun} {key}", memory=memory, alive=session_alive())
            try:
                POOL.submit(task)
                st.session_state[f"{key}_job"] = (params, task)
            except Refused as e:
                st.error(as_text(e))
    made = st.session_state.get(f"{key}_job")
    if not made or made[0] != params:
        return None
    task = made[1]
    if not task.finished:
        stop = st.empty()  # shown only while it runs
        stop.button(
            words.stop,
            key=f"{key}_{words.stop.lower()}",
            on_click=task.cancel,
            args=(words.reason,),
        )
        follow(task, what=words.what)
        stop.empty()
    if task.status == DONE:
        return task
    if task.status == CANCELLED:
        st.warning(as_text(f"{words.what} was {task.reason or words.reason}; {words.after}"))
    elif task.error:
        st.error(as_text(f"{words.what} failed: {task.error}"))
    return None


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
            f"Also {', '.join(HEAVY_FORMATS).upper()} of the {len(big)} N x N maps "
            "(every cell as text: ~9 MB each)",
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
        task = export_job(key, items, fmts, dpi=dpi, heavy=heavy, start=start)
        if task is None:
            return
        data, count = task.result
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


# -- Settings: kept for the whole session across pages, and mirrored in the page's URL --------
# Streamlit forgets a widget's value when a run does not draw it (another page, or an early
# st.stop() such as "upload an image first"); re-assigning the key at the top of every run
# (keep_settings, called by app.py) keeps it. The settings of the page shown are written to
# st.query_params (share_settings), and a new session reads them back (settings_from_url), so a
# view can be shared as a link and survives a reload.


@dataclass(frozen=True)
class Setting:
    """One setting: its type, and the values it may take (a URL can hold anything)."""

    kind: type  # int, float, bool, str or list (of str)
    low: float | None = None  # for a list: the fewest items
    high: float | None = None  # for a list: the most items (a multiselect's max_selections)
    choices: tuple | None = None  # for str and list; None: any (the page checks)
    pattern: str | None = None  # for str and list: a regular expression each text must match
    models: bool = False  # model names, checked against model_names() when read
    besides: tuple = ()  # with models: other values it may take ("none")

    def parse(self, texts: list[str]):
        """The value of the URL's texts for this setting, or None when they are not one."""
        try:
            if self.kind is list:
                value = list(texts)
                ok = all(v in self.allowed() and self._matches(v) for v in value)
                ok = ok and len(set(value)) == len(value)  # a multiselect holds each once
                ok = ok and (self.low is None or len(value) >= self.low)
                ok = ok and (self.high is None or len(value) <= self.high)
                return value if ok else None
            (text,) = texts
            if self.kind is bool:
                return {"1": True, "0": False}.get(text)
            value = self.kind(text)
        except (TypeError, ValueError):
            return None
        if self.kind in (int, float):
            if value != value or (self.low is not None and value < self.low):  # NaN too
                return None
            if self.high is not None and value > self.high:
                return None
        if self.kind is str and (value not in self.allowed() or not self._matches(value)):
            return None
        return value

    def allowed(self):
        """The values it may take; anything when the page decides (sample names, layouts)."""
        return self.choices if self.choices is not None else _Anything()

    def _matches(self, text: str) -> bool:
        return self.pattern is None or re.fullmatch(self.pattern, text) is not None

    def known(self, value, names: list[str]) -> bool:
        """Whether ``value`` (parsed) names models among ``names`` (always, when not models)."""
        if not self.models:
            return True
        values = value if isinstance(value, list) else [value]
        return all(v in names or v in self.besides for v in values)


class _Anything:
    def __contains__(self, item) -> bool:
        return True


_MODEL = Setting(str, models=True)  # checked against model_names() when read
_IMAGE_SETTINGS = {
    "source": Setting(str, choices=("test image", "upload")),
    "sample": Setting(str),
    "fit": Setting(str, choices=("crop", "letterbox")),
    "invert": Setting(bool),
}
LAYOUT_FAMILIES = tuple(FAMILY_PARAMS)  # every static family the Layouts page draws
PIXEL = Setting(int, 0, 255)  # a row, a column, a layer or a head: the page clamps to its model
SETTINGS: dict[str, Setting] = {
    "lay_geometry": Setting(str),
    "lay_mode": Setting(str, choices=("strided", "fixed", "side by side")),
    "lay_l": Setting(int, 1, 3072),
    "lay_c": Setting(int, 1, 3072),
    "lay_verts": Setting(int, 1, 16),
    "lay_head": Setting(int, 0, 15),
    "lay_row": Setting(int, 0, 31),
    "lay_col": Setting(int, 0, 31),
    "lay_channel": Setting(int, 0, 2),
    # the families shown side by side, and each one's parameters (lay_FAMILY_PARAM; strided and
    # fixed keep lay_l, lay_c, lay_verts): the page states and checks each one's own range
    "lay_families": Setting(list, 0, 4, choices=(*LAYOUT_FAMILIES, "spec")),
    **{
        f"lay_{family}_{param}": Setting(int, 0, MAX_SPEC_INT)
        for family, params in FAMILY_PARAMS.items()
        if family not in ("strided", "fixed")
        for param in params
    },
    "lay_spec": Setting(str),  # any layout spec (multihead too): the page parses it
    "att_model": _MODEL,
    # the Attention page's second model, side by side with the first; "none": no comparison
    "att_compare": Setting(str, models=True, besides=("none",)),
    **{f"att_{k}": s for k, s in _IMAGE_SETTINGS.items()},
    "att_row": PIXEL,
    "att_col": PIXEL,
    "att_channel": Setting(int, 0, 2),
    "att_key_channel": Setting(str, choices=("all", *CHANNEL_NAMES)),  # colour models only
    "att_layer": PIXEL,
    "att_head": PIXEL,
    "att_outline": Setting(str),
    # the attention the model runs under (a spec, or per-layer specs separated by ";"; absent:
    # its own layouts): the Frontier page's points open here; the page parses and explains it
    "att_under": Setting(str),
    # Frontier (app_pages/frontier.py): the model, the test images and the families measured
    "fr_model": _MODEL,
    "fr_images": Setting(int, 1, 1024),
    "fr_families": Setting(list, 1, 16, pattern=r"[a-z_]{1,20}"),
    "lvp_model": _MODEL,
    "lvp_over": Setting(str, choices=("one image", "many test images")),
    "lvp_count": Setting(int, 2, 64),
    "lvp_search": Setting(bool),
    **{f"lvp_{k}": s for k, s in _IMAGE_SETTINGS.items()},
    "cmp_models": Setting(list, 0, limits.MAX_MODELS, models=True),
    **{f"cmp_{k}": s for k, s in _IMAGE_SETTINGS.items()},
    "cmp_keep": Setting(str, choices=("top rows", "rectangle")),
    "cmp_rows": PIXEL,
    **{f"cmp_{k}": PIXEL for k in ("x0", "y0", "x1", "y1")},
    "cmp_samples": Setting(int, limits.SAMPLES.low, limits.SAMPLES.high),
    "cmp_temperature": Setting(float, limits.TEMPERATURE.low, limits.TEMPERATURE.high),
    "cmp_top_k": Setting(int, limits.TOP_K.low, limits.TOP_K.high),
    "cmp_top_p": Setting(float, limits.TOP_P.low, limits.TOP_P.high),
    "cmp_seed": Setting(int, limits.SEED.low, limits.SEED.high),
    "cmp_look_model": _MODEL,
    "cmp_look_sample": PIXEL,
    "cmp_look_layer": PIXEL,
    # Who looks here (app_pages/who_looks_here.py): the key and query pixels, the layer
    "who_model": _MODEL,
    **{f"who_{k}": s for k, s in _IMAGE_SETTINGS.items()},
    **{f"who_{k}": PIXEL for k in ("krow", "kcol", "qrow", "qcol", "layer")},
    "who_channel": Setting(str, choices=("all", *CHANNEL_NAMES)),  # colour models only
    # Predictions (app_pages/predictions.py): its bounds are read there from here
    "prd_models": Setting(list, 0, limits.MAX_MODELS, models=True),
    **{f"prd_{k}": s for k, s in _IMAGE_SETTINGS.items()},
    "prd_row": PIXEL,
    "prd_col": PIXEL,
    "prd_channel": Setting(str, choices=("all", *CHANNEL_NAMES)),  # colour models only
    "prd_mean_count": Setting(int, 1, 64),  # test images in the average bits map
    # Ablation (app_pages/ablation.py): the model, its image and channel, the heads removed
    "abl_model": _MODEL,
    **{f"abl_{k}": s for k, s in _IMAGE_SETTINGS.items()},
    "abl_channel": Setting(str, choices=("all", *CHANNEL_NAMES)),  # colour models only
    # the heads to remove, one URL value each as the multiselect shows them
    # (abl_heads=L0H1&abl_heads=L2H3): the page keeps those its model has
    "abl_heads": Setting(list, 0, 256, pattern=r"L\d{1,3}H\d{1,3}"),
    "abl_mode": Setting(str, choices=("zero", "mean")),  # analysis.ablation.MODES (no torch here)
    "abl_count": Setting(int, 2, 32),  # test images measured
    "abl_samples": Setting(int, 1, 4),  # completions with the heads removed
    "abl_rank": Setting(bool),
    # Training (app_pages/training.py). trn_path, the typed folder, is left out on purpose: it
    # is free text naming a place on the server's disk, which a link would have every visitor's
    # server read (the folders listed in trn_folder are checked against what is there)
    "trn_folder": Setting(str),
    "trn_step": Setting(int, 0, None),  # a snapshot's step: the page checks the run has it
    "trn_probe": PIXEL,
    "trn_metric": Setting(str),  # the page checks the run recorded it
    # Playground (app_pages/playground.py): what to race; its limits are the page's own
    "pg_layouts": Setting(list, 0, 4, choices=LAYOUT_FAMILIES),  # models.race.MAX_LANES
    "pg_preset": Setting(str, choices=("fmnist-tiny", "fmnist-mini", "fmnist-small")),
    "pg_size": Setting(str),  # the page checks it is one of its sizes
    "pg_budget": Setting(str, choices=("minutes", "steps")),
    "pg_minutes": Setting(float, 0.5, 30.0),
    "pg_steps": Setting(int, 1, 20_000),
    "pg_seed": Setting(int, limits.SEED.low, limits.SEED.high),
    "pg_strided_l": Setting(int, 1, 784),
    "pg_fixed_l": Setting(int, 1, 784),
    "pg_fixed_c": Setting(int, 1, 784),
}


def keep_settings() -> None:
    """Keep every setting this session has made, on every page: called at the top of each run
    (app.py), before any page draws its widgets. The first run of a session reads the URL, and
    so does a run the browser's Back or Forward started: the entry's URL records the view."""
    if "_settings_from_url" not in st.session_state:
        st.session_state["_settings_from_url"] = settings_from_url()
    elif history_navigation():
        settings_from_url()
    for key in SETTINGS:
        if key in st.session_state:
            st.session_state[key] = st.session_state[key]


def settings_from_url() -> list[str]:
    """Put the URL's settings into session state (before any widget exists); values a setting
    cannot take are left out. Returns the keys taken."""
    taken = []
    names = None  # the models, looked up once and only when a setting names one
    for key in st.query_params:
        setting = SETTINGS.get(key)
        if setting is None:
            continue
        value = setting.parse(st.query_params.get_all(key))
        if value is None:
            continue
        if setting.models:
            names = model_names() if names is None else names
            if not setting.known(value, names):
                continue
        st.session_state[key] = value
        taken.append(key)
    return taken


def _url_text(value) -> str | list[str]:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return str(value)


def history_navigation() -> bool:
    """Whether this run was started by the browser's Back or Forward."""
    ctx = get_script_run_ctx()
    return bool(getattr(ctx, "is_history_navigation", False))


# Streamlit's frontend pushes a history entry whenever the URL's query changes (every setting
# change), then another when the page changes: Back showed the page's latest state and took three
# or four presses to leave a page. In this browser tab, a new URL on the same page (same path)
# replaces the entry instead: one entry per page visited, recording its latest view; Back goes
# to the previous page in one press and keep_settings restores the settings it records.
REPLACE_SAME_PAGE_ENTRIES = """<script>
(() => {
  const h = window.history;
  if (h.__sameAddressReplaces) return;
  const push = h.pushState.bind(h);
  h.pushState = (state, title, url) => {
    const next = url == null ? null : new URL(url, window.location.href);
    if (next === null || next.pathname === window.location.pathname) {
      return h.replaceState(state, title, url);
    }
    return push(state, title, url);
  };
  h.__sameAddressReplaces = true;
})();
</script>"""


def share_settings(prefix: str | tuple[str, ...] | None, script: bool = True) -> None:
    """Write the settings of the page with keys ``prefix``_... (one prefix or several) to the
    URL (only they: a link names one page's view); other pages' settings stay in the session.
    A change replaces the tab's history entry for this page (REPLACE_SAME_PAGE_ENTRIES, drawn
    unless ``script`` is False: a fragment's rerun, whose page has it already)."""
    if script:
        st.html(REPLACE_SAME_PAGE_ENTRIES, unsafe_allow_javascript=True)
    prefixes = (prefix,) if isinstance(prefix, str) else tuple(prefix or ())
    wanted = {
        key: _url_text(st.session_state[key])
        for key in SETTINGS
        if any(key.startswith(f"{p}_") for p in prefixes if p)
        and st.session_state.get(key) not in (None, [])  # nothing to write (no models yet)
    }
    current = {k: st.query_params.get_all(k) for k in st.query_params}
    normal = {k: v if isinstance(v, list) else [v] for k, v in wanted.items()}
    if current != normal:
        st.query_params.from_dict(wanted)


def clamp_setting(key: str, low: int, high: int) -> None:
    """Bring a number setting into low..high before its widget is drawn (a shared link or
    another model may carry a value this page's widget refuses)."""
    if key in st.session_state:
        st.session_state[key] = min(max(st.session_state[key], low), high)
