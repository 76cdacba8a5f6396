"""What the pages share: the models (loaded once per process), the sample images, uploads."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import streamlit as st
from PIL import Image

from app_pages import limits
from models.tokens import Geometry
from models.uploads import ImageInputError, prepare_image, prepare_upload

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


def model_names() -> list[str]:
    """Model directories under models_dir(), the three shipped ones first."""
    found = sorted(p.name for p in models_dir().glob("*") if (p / "config.json").is_file())
    return [m for m in PREFERRED if m in found] + [m for m in found if m not in PREFERRED]


def require_model_names() -> list[str]:
    """model_names(), or an explanation and the end of this page's run when there are none."""
    names = model_names()
    if not names:
        st.error(
            f"No models found under {models_dir()} (each model is a folder with "
            "config.json and model.safetensors)."
        )
        st.stop()
    return names


def model_device() -> str:
    """Where the models run: the GPU when there is one (its attention then goes through the
    Triton kernels), else the CPU; $SPARSE_EXPLORER_DEVICE=cpu keeps them on the CPU. Tokens
    and results stay on the CPU: model.capture and sample move them across."""
    import torch

    if os.environ.get("SPARSE_EXPLORER_DEVICE") == "cpu":
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


@st.cache_resource(show_spinner="Loading model...")
def get_model(path: str) -> SparseTransformer:
    """The model, loaded once for every session of this server (read-only after loading)."""
    import torch

    from models.checkpoint import load_model

    # One intra-op thread (process-wide): sessions already run in parallel threads and a
    # sampling step's ops are tiny, while an OpenMP team of 2 on a busy 2-core machine waits for
    # a descheduled worker at every op (measured: 7.8 ms instead of 0.03 ms per linear layer).
    torch.set_num_threads(1)
    return load_model(path, device=model_device())


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
    return ChosenModel(name, str(models_dir() / name), model)


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
        return get_model(str(models_dir() / name))
    except CheckpointError as e:
        st.error(f"Model '{name}' cannot be loaded: {e}")
        return None


@st.cache_data(show_spinner=False)
def sample_images(geometry: Geometry) -> dict[str, np.ndarray]:
    """The shipped sample images, prepared for ``geometry``: {name: uint8 [H, W, C]}."""
    out = {}
    for path in sorted(SAMPLES_DIR.glob("*.png")):
        out[path.stem] = prepare_image(path.read_bytes(), geometry)
    return out


def pick_image(prefix: str, geometry: Geometry) -> tuple[str, np.ndarray] | None:
    """A sample image or an upload, prepared for the model; explains unusable uploads."""
    samples = sample_images(geometry)
    source = st.radio("Image", ["test image", "upload"], horizontal=True, key=f"{prefix}_source")
    if source == "test image":
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
        st.error(f"{upload.name} cannot be used: it {problem}.")
        return None
    # letterbox padding and transparency become the model's background (black) in the image
    # the model sees: filled white when the image is inverted afterwards, black when not
    fill = (255, 255, 255) if invert else (0, 0, 0)
    try:
        image, notes, border = prepare_upload(data, geometry, fit=fit, background=fill)
    except ImageInputError as e:
        st.error(f"{upload.name} cannot be used: {e}")
        return None
    for note in notes:  # e.g. an animated GIF: only its first frame is used
        st.info(f"{upload.name}: {note}")
    if border >= LIGHT_BORDER and not invert:
        st.warning(
            f"{upload.name} has a light background (its border averages {border:.0f} of 255). "
            "The models know light garments on black: tick Invert, or the completions and "
            "attention are of a picture unlike any they were trained on."
        )
    elif border < 255 - LIGHT_BORDER and invert:
        st.warning(
            f"{upload.name} already has a dark background (its border averages {border:.0f} "
            "of 255): inverted, it is dark on white, unlike the training images."
        )
    return upload.name, 255 - image if invert else image


def show_image(image: np.ndarray, caption: str, width: int = 140) -> None:
    pil = Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)
    st.image(
        pil.resize((image.shape[1] * 5, image.shape[0] * 5), Image.NEAREST),
        caption=caption,
        width=width,
    )


def export_panel(items, key: str, label: str = "Export figures and data") -> None:
    """Download buttons for figures (viz.export.Exportable): each format of each, or one zip.

    The files are made only when asked for (a static figure takes matplotlib ~0.2 s), and
    kept until the figures change.
    """
    from viz.export import FORMATS, export_files, zip_bytes

    signature = [(it.name, json.dumps(it.meta, sort_keys=True, default=str)) for it in items]
    with st.popover(label):
        fmts = st.multiselect(
            "Formats", FORMATS, default=["png", "svg", "pdf", "html", "npz"], key=f"{key}_formats"
        )
        dpi = st.slider("PNG resolution (dpi)", 72, 600, 150, step=6, key=f"{key}_dpi")
        if st.button("Prepare files", key=f"{key}_prepare"):
            files = export_files(items, fmts, dpi=dpi)
            st.session_state[f"{key}_files"] = (signature, files)
        made = st.session_state.get(f"{key}_files")
        if made and made[0] == signature:
            files = made[1]
            st.download_button(
                f"All {len(files)} files (zip)",
                zip_bytes(files),
                file_name=f"{key}.zip",
                mime="application/zip",
                key=f"{key}_zip",
                on_click="ignore",  # no rerun: quick clicks on several downloads all arrive
            )
            for name, data in files.items():
                st.download_button(
                    name, data, file_name=name, key=f"{key}_dl_{name}", on_click="ignore"
                )
