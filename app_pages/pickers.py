"""The pickers the pages share: a model, a sample image or an upload (prepared for the model,
with what fitting it did), a colour pixel's channel; and an image shown small."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import streamlit as st
from PIL import Image

from app_pages import limits
from app_pages.models_cache import ROOT, load_or_explain, model_path, require_model_names
from app_pages.settings import CHANNEL_NAMES
from app_pages.text import as_text
from models.datasets import DatasetError
from models.tokens import Geometry
from models.uploads import ImageInputError, prepare_image, prepare_upload, read_image_file

if TYPE_CHECKING:
    from models.model import SparseTransformer

SAMPLES_DIR = ROOT / "assets" / "samples"
# an upload whose border is at least this bright (0..255) has a light background: Fashion-MNIST
# garments are light on black, so such a photo wants Invert
LIGHT_BORDER = 160


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


def channel_picker(
    key: str, geometry: Geometry, where=st, label: str = "Channel", on_change=None
) -> int | None:
    """Which of a pixel's tokens a colour model's pixel maps show: one channel (its index) or
    "all" (None: the pixel's tokens together). A grey model has one token a pixel: 0, and no
    widget is drawn."""
    if geometry.channels == 1:
        return 0
    names = _channel_choices(geometry)
    if st.session_state.get(key) not in names:
        st.session_state[key] = "all"  # a value kept from a link or another model
    where.radio(
        label,
        names,
        horizontal=True,
        key=key,
        on_change=on_change,
        help="A colour pixel is three tokens (red, green, blue, in this order). Show one of "
        "them, or all three together.",
    )
    return picked_channel(key, geometry)


def picked_channel(key: str, geometry: Geometry) -> int | None:
    """The channel that channel_picker ``key`` holds, read without drawing it."""
    if geometry.channels == 1:
        return 0
    names = _channel_choices(geometry)
    picked = st.session_state.get(key, "all")
    return None if picked not in names[1:] else names.index(picked) - 1


def _channel_choices(geometry: Geometry) -> list[str]:
    """channel_picker's choices: "all", then the channels' names."""
    return ["all", *CHANNEL_NAMES[: geometry.channels]]
