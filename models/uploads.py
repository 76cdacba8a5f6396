"""User-supplied images (uploads, files on the command line) -> uint8 arrays for the model.

Nothing here trusts its input: a file that cannot be used raises ``ImageInputError`` with a
message a person can act on, never an arbitrary Pillow exception; the size is checked from the
header before anything is decoded.
"""

from __future__ import annotations

import contextlib
import io
import struct
import warnings
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from models.files import read_file
from models.tokens import Geometry


class ImageInputError(ValueError):
    """A user-supplied image cannot be used (empty, not an image, truncated, too large...)."""


FIT_MODES = ("crop", "letterbox")

# Our own pixel limit, checked from the header before anything is decoded. Pillow's default
# (~89 MP, an error only at twice that) lets a 20 MB upload claim gigabytes of pixels; 25 MP
# still takes any phone photo or 24 MP camera file and keeps one upload to a few hundred MB.
MAX_IMAGE_PIXELS = 25_000_000
# The largest image file read from a path (the CLIs, image folders): the app's upload limit
# (app_pages/limits.py MAX_UPLOAD_BYTES, 20 MiB), checked before the file is opened.
MAX_IMAGE_FILE_BYTES = 20 * 2**20
# Only raster formats with plain decoders: no EPS (runs Ghostscript), no PSD/PDF/ICNS surprises.
# (JPEG covers MPO, the multi-picture JPEGs some phones write.)
UPLOAD_FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF", "PPM")
# Large images are box-reduced to about this many times the target size before the filters run,
# so memory and time follow the model's geometry rather than the upload's.
_WORK_SCALE = 4
# What a decoder may raise on a corrupt file; anything else escaping is a bug the fuzzer reports.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, KeyError)


_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF8", "GIF"),
    (b"RIFF", "WEBP"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)


class PreparedImage(NamedTuple):
    """An upload converted for the model, plus notes the app should show (e.g. first frame),
    and ``border``: the mean brightness (0..255) of the picture's outermost pixels before any
    letterbox padding, which tells a light background (a dark-on-white photo) from a dark one."""

    image: np.ndarray
    notes: tuple[str, ...] = ()
    border: float = float("nan")


def border_mean(image: np.ndarray) -> float:
    """The mean brightness of the outermost ring of pixels of a uint8 [H, W] or [H, W, C] image
    (all channels)."""
    a = np.asarray(image, dtype=np.float64)
    if a.ndim == 2:
        a = a[:, :, None]
    if min(a.shape[:2]) <= 2:
        return float(a.mean())
    ring = np.concatenate([a[0].ravel(), a[-1].ravel(), a[1:-1, 0].ravel(), a[1:-1, -1].ravel()])
    return float(ring.mean())


def _unidentified(data: bytes) -> ImageInputError:
    """Explain a file Pillow does not recognise; text (SVG, HTML) renamed to .png is common."""
    head = data[:256].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith(b"<"):
        kind = "SVG" if b"<svg" in data[:4096].lower() else "HTML/XML"
        return ImageInputError(
            f"this is {kind} text, not a raster image; export it as PNG or JPEG first"
        )
    for magic, name in _SIGNATURES:
        if data.startswith(magic) and (name != "WEBP" or data[8:12] == b"WEBP"):
            return ImageInputError(
                f"looks like a {name} file, but its header cannot be read: file may be "
                "truncated or corrupt"
            )
    return ImageInputError(
        f"not a recognised image format (supported: {', '.join(UPLOAD_FORMATS)})"
    )


def _first_frame_note(img: Image.Image) -> str | None:
    """Say so when an animated or multi-page file is reduced to its first frame."""
    try:
        many = bool(getattr(img, "is_animated", False))
    except _DECODE_ERRORS:  # a broken later frame: the first may still be fine
        many = False
    if img.tell() != 0:
        img.seek(0)
    if not many:
        return None
    count = ""
    if img.format in ("PNG", "WEBP"):  # frame count from a header, not by decoding every frame
        count = f" ({img.n_frames} frames)"
    kind = "multi-page" if img.format == "TIFF" else "animated"
    return f"{kind} {img.format}{count}: only the first frame is used"


def _open_image(data: bytes, work_size: int, notes: list[str]) -> Image.Image:
    """Open and fully decode ``data``; every failure becomes an ImageInputError with a reason.

    The size is checked from the header before ``load()`` allocates anything, and Pillow's own
    decompression-bomb warnings are promoted to errors. ``img.load()`` is what actually decodes,
    so it must sit inside the try for truncated files to be caught here. JPEGs are decoded at a
    reduced scale (``draft``) when they are far larger than ``work_size``.
    """
    if len(data) == 0:
        raise ImageInputError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=UPLOAD_FORMATS)
            w, h = img.size
            if w < 1 or h < 1:
                raise ImageInputError(f"image has no pixels ({w}x{h})")
            if w * h > MAX_IMAGE_PIXELS:
                raise ImageInputError(
                    f"image is too large to decode safely: {w}x{h} = {w * h / 1e6:.1f} "
                    f"megapixels, the limit is {MAX_IMAGE_PIXELS / 1e6:.0f} (a small file this "
                    "large is a decompression bomb; otherwise scale it down first)"
                )
            note = _first_frame_note(img)
            if note:
                notes.append(note)
            if img.format in ("JPEG", "MPO"):
                img.draft(img.mode, (work_size, work_size))
            img.load()
    except ImageInputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageInputError(f"image is too large to decode safely ({e})") from e
    except UnidentifiedImageError as e:
        raise _unidentified(data) from e
    except MemoryError as e:
        raise ImageInputError("image is too large to decode (out of memory)") from e
    except _DECODE_ERRORS as e:
        raise ImageInputError(
            f"could not decode image, file may be truncated or corrupt ({e})"
        ) from e
    return img


def _to_8bit(img: Image.Image, sixteen_bit: bool) -> Image.Image:
    """Rescale 16-bit / int / float gray images, which Pillow would otherwise clip to 255.

    float32 and in place (one copy, not the ~3 float64 ones of the obvious numpy expression).
    """
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        arr = np.array(img, dtype=np.float32)
        np.nan_to_num(arr, copy=False, nan=0.0, posinf=255.0, neginf=0.0)
        if sixteen_bit or (img.mode == "I" and arr.max(initial=0) > 255):
            arr /= 257.0
        np.rint(arr, out=arr)
        np.clip(arr, 0, 255, out=arr)
        return Image.fromarray(arr.astype(np.uint8))  # 2-D uint8 -> mode L
    return img


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info


def _flatten_alpha(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Composite any transparency onto ``background`` so transparent pixels get a defined colour."""
    if not _has_alpha(img):
        return img.convert("RGB") if img.mode not in ("L", "RGB") else img
    rgba = img if img.mode == "RGBA" else img.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, (*background, 255))
    return Image.alpha_composite(canvas, rgba).convert("RGB")


def _shrink(img: Image.Image, tw: int, th: int) -> Image.Image:
    """Box-reduce an image much larger than the target (tw x th) to a few times its size.

    The LANCZOS resize that follows then works on a small image; the result is the same up to
    rounding, but memory and time do not grow with the upload's resolution. 16-bit, int and
    float images are reduced before they are rescaled to 8 bits (``_to_8bit``), where the
    full-size float copy would cost the most.
    """
    factor = min(img.width // (_WORK_SCALE * tw), img.height // (_WORK_SCALE * th))
    if factor < 2:
        return img
    if img.mode.startswith("I;16"):
        img = img.convert("I")
    elif _has_alpha(img) and img.mode not in ("LA", "RGBA"):  # reduce() premultiplies LA/RGBA
        img = img.convert("RGBA")
    elif img.mode not in ("L", "LA", "RGB", "RGBA", "I", "F"):
        img = img.convert("RGB")
    return img.reduce(factor)


def _fit(
    img: Image.Image, geometry: Geometry, fit: str, background: tuple[int, int, int]
) -> tuple[np.ndarray, float]:
    """Convert to the model's mode and size: centre crop or letterbox, then LANCZOS. Returns the
    image and the border brightness of the picture before fitting (border_mean)."""
    mode = "L" if geometry.channels == 1 else "RGB"
    sixteen_bit = img.mode.startswith("I;16")  # _shrink turns I;16 into I
    img = _to_8bit(_shrink(img, geometry.width, geometry.height), sixteen_bit)
    img = _flatten_alpha(img, background)
    img = img.convert(mode)
    fill = Image.new("RGB", (1, 1), background).convert(mode).getpixel((0, 0))

    border = border_mean(np.asarray(img))
    tw, th = geometry.width, geometry.height
    w, h = img.size
    if fit == "crop":
        # Largest centred box with the target aspect ratio; resize() crops and scales in one pass.
        if w * th > h * tw:  # source wider than target
            cw, ch = h * tw / th, float(h)
        else:
            cw, ch = float(w), w * th / tw
        left, top = (w - cw) / 2, (h - ch) / 2
        img = img.resize((tw, th), Image.Resampling.LANCZOS, box=(left, top, left + cw, top + ch))
    else:
        scale = min(tw / w, th / h)
        nw, nh = max(1, min(tw, round(w * scale))), max(1, min(th, round(h * scale)))
        canvas = Image.new(mode, (tw, th), fill)
        resized = img.resize((nw, nh), Image.Resampling.LANCZOS)
        canvas.paste(resized, ((tw - nw) // 2, (th - nh) // 2))
        img = canvas

    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return np.ascontiguousarray(arr), border


def prepare_upload(
    data: bytes,
    geometry: Geometry,
    *,
    fit: str = "crop",
    background: tuple[int, int, int] = (255, 255, 255),
) -> PreparedImage:
    """Turn an uploaded image file into a uint8 array [H, W, C] matching ``geometry``, with notes.

    This is the one path every upload takes (the app, the CLIs, image folders), so it is the one
    the fuzzer (tools/fuzz_uploads.py) hammers: it returns an image or raises ImageInputError,
    nothing else. EXIF orientation is applied first (phone photos are stored sideways),
    transparency is composited onto ``background``, then the image is converted to L or RGB and
    fitted: "crop" centre-crops to the target aspect ratio before resizing (fills the frame,
    loses edges), "letterbox" resizes to fit inside and pads with ``background`` (keeps
    everything). Animated or multi-page files use their first frame and say so in ``notes``.
    """
    if geometry.channels not in (1, 3):
        raise ValueError(f"geometry must have 1 or 3 channels, got {geometry.channels}")
    if geometry.height <= 0 or geometry.width <= 0:
        raise ValueError(f"geometry must have a positive size, got {geometry}")
    if fit not in FIT_MODES:
        raise ValueError(f"fit must be one of {FIT_MODES}, got {fit!r}")
    background = tuple(int(v) for v in background)
    if len(background) != 3 or not all(0 <= v <= 255 for v in background):
        raise ValueError(f"background must be three ints in 0..255, got {background}")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")

    notes: list[str] = []
    work = _WORK_SCALE * max(geometry.height, geometry.width)
    img = _open_image(bytes(data), work, notes)
    # A broken EXIF block should not make an otherwise fine image unusable.
    with contextlib.suppress(_DECODE_ERRORS + (TypeError,)):
        ImageOps.exif_transpose(img, in_place=True)  # in place: no full-size copy when upright
    try:
        arr, border = _fit(img, geometry, fit, background)
    except MemoryError as e:
        raise ImageInputError("image is too large to convert (out of memory)") from e
    except _DECODE_ERRORS as e:  # e.g. LAB or HSV TIFFs, which Pillow cannot convert to RGB
        raise ImageInputError(f"cannot convert this {img.mode} image ({e})") from e
    return PreparedImage(arr, tuple(notes), border)


def prepare_image(
    data: bytes,
    geometry: Geometry,
    *,
    fit: str = "crop",
    background: tuple[int, int, int] = (255, 255, 255),
) -> np.ndarray:
    """prepare_upload without the notes, for callers that only need the pixels."""
    return prepare_upload(data, geometry, fit=fit, background=background).image


def read_image_file(path, max_bytes: int = MAX_IMAGE_FILE_BYTES) -> bytes:
    """The bytes of the image file ``path`` for prepare_upload / prepare_image: ImageInputError
    unless it is a regular file (symlinks resolved) of at most ``max_bytes``, checked before it
    is opened, so a FIFO or /dev/zero is refused unread (models/files.py)."""
    return read_file(path, max_bytes, what="image", error=ImageInputError)
