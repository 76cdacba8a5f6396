"""The models: where they are (shipped and Playground-trained), each loaded once per process
(get_model), the background warm-up of their imports, and the cache of every query's rows of
an image (every_row_of)."""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import streamlit as st

from app_pages.text import as_text

if TYPE_CHECKING:  # torch and the model are imported when a page first needs a model: the
    # Layouts page draws with numpy and so the app's first page skips torch's import time
    from models.model import SparseTransformer

ROOT = Path(__file__).resolve().parents[1]
PREFERRED = ("dense", "strided", "fixed")


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


def load_or_explain(name: str) -> SparseTransformer | None:
    from models.checkpoint import CheckpointError

    try:
        return get_model(str(model_path(name)))
    except CheckpointError as e:
        st.error(as_text(f"Model '{name}' cannot be loaded: {e}"))
        return None
