"""Images <-> token sequences, and loaders for the datasets the explorer trains on.

A Sparse Transformer models an image as a flat sequence of 8-bit tokens. We use raster order with
colour channels interleaved per pixel (R,G,B of pixel 0, then pixel 1, ...), so token ``i`` of an
image with width W and C channels sits at::

    row = i // (W*C),  col = (i // C) % W,  channel = i % C

Everything that leaves this module is either a ``torch.LongTensor`` of tokens or a ``np.uint8``
array shaped [H, W, C] (or [N, H, W, C]); grayscale images keep an explicit C=1 axis so the rest of
the code never has to special-case them.

Loaders never trust their input: dataset files are validated byte by byte and raise
``DatasetError`` naming the offending path; CIFAR-10 python pickles go through a restricted
unpickler; user-supplied images raise ``ImageInputError`` instead of arbitrary Pillow exceptions.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import pickle
import struct
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

if TYPE_CHECKING:
    import torch

# -----------------------------------------------------------------------------
# geometry and token <-> image conversion


def _is_tensor(x: object) -> bool:
    """isinstance(x, torch.Tensor) without importing torch: no tensor exists unless torch was
    imported. This module imports torch only where it makes tensors, so the app's first page
    (which needs Geometry and token_coords, not tensors) does not pay torch's import time."""
    # getattr: another thread may be half-way through importing torch (sessions are threads)
    tensor_type = getattr(sys.modules.get("torch"), "Tensor", None)
    return tensor_type is not None and isinstance(x, tensor_type)


class Geometry(NamedTuple):
    """Shape of an image as the model sees it; the sequence length is height*width*channels."""

    height: int
    width: int
    channels: int

    @property
    def n_tokens(self) -> int:
        return self.height * self.width * self.channels

    def __str__(self) -> str:
        return f"{self.height}x{self.width}x{self.channels}"


def image_to_tokens(image: np.ndarray) -> torch.Tensor:
    """Flatten one uint8 image [H, W, C] (or [H, W], meaning C=1) into a LongTensor [H*W*C].

    A C-order reshape of an HWC array is exactly raster order with channels interleaved, which is
    why the whole module standardises on HWC.
    """
    if not isinstance(image, np.ndarray):
        raise TypeError(f"expected a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected dtype uint8, got {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3:
        raise ValueError(f"expected an image of shape [H, W, C] or [H, W], got {image.shape}")
    import torch

    return torch.from_numpy(image.reshape(-1).astype(np.int64))


def images_to_tokens(images: np.ndarray) -> torch.Tensor:
    """Flatten a uint8 batch [B, H, W, C] into a LongTensor [B, H*W*C] (same order as above)."""
    if not isinstance(images, np.ndarray):
        raise TypeError(f"expected a numpy array, got {type(images).__name__}")
    if images.dtype != np.uint8:
        raise ValueError(f"expected dtype uint8, got {images.dtype}")
    if images.ndim != 4:
        raise ValueError(f"expected a batch of shape [B, H, W, C], got {images.shape}")
    import torch

    return torch.from_numpy(images.reshape(images.shape[0], -1).astype(np.int64))


def tokens_to_image(tokens: torch.Tensor | np.ndarray, geometry: Geometry) -> np.ndarray:
    """Inverse of image_to_tokens: [N] -> uint8 [H, W, C], or a batch [B, N] -> [B, H, W, C].

    Values outside 0..255 are an error rather than being wrapped or clipped, because they mean a
    bug upstream (e.g. a sampler emitting the wrong vocabulary) that silent casting would hide.
    """
    if _is_tensor(tokens):
        arr = tokens.detach().cpu().numpy()
    else:
        arr = np.asarray(tokens)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"tokens must be integers, got dtype {arr.dtype}")
    if arr.ndim not in (1, 2):
        raise ValueError(f"tokens must have shape [N] or [B, N], got {tuple(arr.shape)}")
    n = geometry.n_tokens
    if arr.shape[-1] != n:
        raise ValueError(f"got {arr.shape[-1]} tokens but geometry {geometry} needs {n} tokens")
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise ValueError(
            f"token values must be in 0..255, got range {int(arr.min())}..{int(arr.max())}"
        )
    shape = (geometry.height, geometry.width, geometry.channels)
    return arr.astype(np.uint8).reshape(arr.shape[:-1] + shape)


def token_coords(i: Any, geometry: Geometry) -> tuple[Any, Any, Any]:
    """(row, col, channel) of token index ``i``; vectorised for numpy arrays and torch tensors.

    Used to label attention patterns and to map a token back onto the pixel it describes.
    """
    n, w, c = geometry.n_tokens, geometry.width, geometry.channels
    if isinstance(i, np.ndarray) or _is_tensor(i):
        is_int = (
            not i.is_floating_point() and not i.is_complex() and str(i.dtype) != "torch.bool"
            if _is_tensor(i)
            else np.issubdtype(i.dtype, np.integer)
        )
        if not is_int:
            raise ValueError(f"token indices must be integers, got dtype {i.dtype}")
        if i.numel() if _is_tensor(i) else i.size:
            lo, hi = int(i.min()), int(i.max())
            if lo < 0 or hi >= n:
                raise IndexError(f"token index out of range 0..{n - 1}: got {lo}..{hi}")
        return i // (w * c), (i // c) % w, i % c
    if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
        raise TypeError(f"token index must be an int, array or tensor, got {type(i).__name__}")
    i = int(i)
    if not 0 <= i < n:
        raise IndexError(f"token index {i} out of range 0..{n - 1} for geometry {geometry}")
    return i // (w * c), (i // c) % w, i % c


# -----------------------------------------------------------------------------
# dataset files


class DatasetError(ValueError):
    """A dataset is missing or one of its files is malformed; the message names the path."""


FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_INSTALL = "sudo apt-get install -y dataset-fashion-mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

_GZIP_MAGIC = b"\x1f\x8b"


def _read_maybe_gzip(path: Path) -> bytes:
    """Read a file, transparently gunzipping it; decided by content so misnamed files still work."""
    try:
        raw = path.read_bytes()
        if raw[:2] == _GZIP_MAGIC:
            raw = gzip.decompress(raw)
    except FileNotFoundError as e:
        raise DatasetError(f"{path}: file not found") from e
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DatasetError(f"{path}: could not read file ({e})") from e
    return raw


def load_idx(path: str | Path) -> np.ndarray:
    """Load an IDX file (the MNIST container format), gzipped or plain, as a uint8 array.

    Header: two zero bytes, a dtype code (only 0x08 = uint8 is used by (Fashion-)MNIST), the number
    of dims, then that many big-endian uint32 sizes. We insist the payload is exactly the product
    of the dims, so truncated downloads fail loudly here instead of as garbage images later.
    """
    path = Path(path)
    raw = _read_maybe_gzip(path)
    if len(raw) < 4:
        raise DatasetError(f"{path}: too short to be an IDX file ({len(raw)} bytes)")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0:
        raise DatasetError(f"{path}: bad IDX magic 0x{raw[:4].hex()} (must start with 0x0000)")
    if dtype_code != 0x08:
        raise DatasetError(f"{path}: unsupported IDX dtype code 0x{dtype_code:02x} (want 0x08)")
    if ndim == 0:
        raise DatasetError(f"{path}: IDX file declares zero dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path}: truncated IDX header ({len(raw)} < {header} bytes)")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(dims, dtype=np.int64))
    payload = len(raw) - header
    if payload != expected:
        raise DatasetError(
            f"{path}: IDX payload is {payload} bytes but dims {dims} need {expected} bytes"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def _find_idx(root: Path, name: str) -> Path:
    """Prefer ``name.gz`` (as shipped by Debian) but accept an already-decompressed ``name``."""
    for candidate in (root / f"{name}.gz", root / name):
        if candidate.is_file():
            return candidate
    raise DatasetError(
        f"Fashion-MNIST file {root / name}.gz not found (nor uncompressed {name}); "
        f"install the dataset with: {FASHION_MNIST_INSTALL}"
    )


def load_fashion_mnist(
    split: str = "train", root: str | Path = FASHION_MNIST_DIR
) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST as (images uint8 [N, 28, 28, 1], labels uint8 [N]); split "train" or "test"."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(
            f"Fashion-MNIST folder {root} not found; install the dataset with: "
            f"{FASHION_MNIST_INSTALL}"
        )
    prefix = "train" if split == "train" else "t10k"
    images_path = _find_idx(root, f"{prefix}-images-idx3-ubyte")
    labels_path = _find_idx(root, f"{prefix}-labels-idx1-ubyte")
    images, labels = load_idx(images_path), load_idx(labels_path)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DatasetError(f"{images_path}: expected images [N, 28, 28], got {images.shape}")
    if labels.ndim != 1:
        raise DatasetError(f"{labels_path}: expected labels [N], got {labels.shape}")
    if len(images) != len(labels):
        raise DatasetError(
            f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels"
        )
    if labels.size and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise DatasetError(f"{labels_path}: label {int(labels.max())} out of range 0..9")
    return images[..., None], labels


# --- CIFAR-10 -----------------------------------------------------------------

_CIFAR_RECORD = 1 + 3 * 32 * 32


def _latin1_encode(text: Any, encoding: str = "latin1", errors: str = "strict") -> bytes:
    """Stand-in for ``_codecs.encode``, which Python 3 writes into protocol-2 pickles of bytes.

    Only the latin-1 round trip pickle itself uses is allowed, so the generic codec machinery
    never becomes reachable from file contents.
    """
    if not isinstance(text, str) or encoding.lower().replace("-", "") not in ("latin1", "l1"):
        raise DatasetError(f"refusing to unpickle _codecs.encode with encoding {encoding!r}")
    return text.encode("latin-1", errors)


def _numpy_pickle_globals() -> dict[tuple[str, str], Callable[..., Any]]:
    """The few numpy callables an array pickle needs, fetched from live objects.

    Asking numpy's own reducers avoids importing ``numpy.core`` (deprecated in numpy 2) and works
    for pickles written by numpy 1 (``numpy.core.*``) and numpy 2 (``numpy._core.*``) alike.
    """
    reconstruct = np.zeros(1).__reduce__()[0]
    scalar = np.float64(0).__reduce__()[0]
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]  # protocol 5 uses numeric._frombuffer
    allowed: dict[tuple[str, str], Callable[..., Any]] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return allowed


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays and nothing else.

    CIFAR-10's "python version" is a set of pickles; a plain pickle.load on a downloaded file would
    run arbitrary code, so every global the stream names is checked against an allow-list.
    """

    _allowed = _numpy_pickle_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise DatasetError(f"refusing to unpickle {module}.{name}") from None


def _cifar_from_planar(data: np.ndarray, path: Path) -> np.ndarray:
    """[N, 3072] with R, G, B planes of 32x32 each -> [N, 32, 32, 3] (HWC, our token order)."""
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DatasetError(f"{path}: expected image data [N, 3072], got {data.shape}")
    return np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


def _load_cifar_bin(path: Path) -> tuple[np.ndarray, np.ndarray]:
    raw = _read_maybe_gzip(path)
    if len(raw) == 0 or len(raw) % _CIFAR_RECORD:
        raise DatasetError(
            f"{path}: size {len(raw)} is not a positive multiple of the {_CIFAR_RECORD}-byte "
            "CIFAR-10 record"
        )
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, _CIFAR_RECORD)
    return _cifar_from_planar(records[:, 1:], path), records[:, 0].copy()


def _load_cifar_pickle(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            batch = _NumpyOnlyUnpickler(f, encoding="bytes").load()
    except DatasetError as e:
        raise DatasetError(f"{path}: {e}") from None
    except Exception as e:  # a malformed pickle can fail in many ways; none should escape raw
        raise DatasetError(f"{path}: not a valid CIFAR-10 python batch ({e!r})") from e
    if not isinstance(batch, dict):
        raise DatasetError(f"{path}: expected a pickled dict, got {type(batch).__name__}")
    # Keys are bytes for the official (Python 2) files, str if re-pickled under Python 3.
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or labels is None:
        raise DatasetError(f"{path}: missing uint8 'data' array or 'labels' entry")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError) as e:
        raise DatasetError(f"{path}: labels are not integers ({e})") from e
    images = _cifar_from_planar(data, path)
    if labels.shape != (len(images),):
        raise DatasetError(f"{path}: {len(images)} images but labels shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise DatasetError(f"{path}: labels out of range")
    return images, labels.astype(np.uint8)


def load_cifar10(folder: str | Path, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 as (images uint8 [N, 32, 32, 3], labels uint8 [N]), binary or python version.

    ``folder`` may be the batch folder itself or its parent holding ``cifar-10-batches-bin`` or
    ``cifar-10-batches-py``. For "train", whichever of data_batch_1..5 exist are concatenated (the
    full dataset has all five); "test" reads test_batch. Binary files win if both are present.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    folder = Path(folder)
    stems = [f"data_batch_{k}" for k in range(1, 6)] if split == "train" else ["test_batch"]
    for d in (folder, folder / "cifar-10-batches-bin", folder / "cifar-10-batches-py"):
        for suffix, loader in ((".bin", _load_cifar_bin), ("", _load_cifar_pickle)):
            paths = [d / f"{s}{suffix}" for s in stems if (d / f"{s}{suffix}").is_file()]
            if paths:
                parts = [loader(p) for p in paths]
                images = np.concatenate([p[0] for p in parts])
                labels = np.concatenate([p[1] for p in parts])
                if labels.size and labels.max() >= len(CIFAR10_CLASSES):
                    raise DatasetError(f"{d}: label {int(labels.max())} out of range 0..9")
                return images, labels
    raise DatasetError(
        f"no CIFAR-10 {split} batches ({stems[0]}[.bin] ...) found in {folder} or its "
        "cifar-10-batches-bin / cifar-10-batches-py subfolders"
    )


# -----------------------------------------------------------------------------
# user images


class ImageInputError(ValueError):
    """A user-supplied image cannot be used (empty, not an image, truncated, too large...)."""


FIT_MODES = ("crop", "letterbox")

# Our own pixel limit, checked from the header before anything is decoded. Pillow's default
# (~89 MP, an error only at twice that) lets a 20 MB upload claim gigabytes of pixels; 25 MP
# still takes any phone photo or 24 MP camera file and keeps one upload to a few hundred MB.
MAX_IMAGE_PIXELS = 25_000_000
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
    """An upload converted for the model, plus notes the app should show (e.g. first frame)."""

    image: np.ndarray
    notes: tuple[str, ...] = ()


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
    rounding, but memory and time no longer grow with the upload's resolution. 16-bit, int and
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
) -> np.ndarray:
    """Convert to the model's mode and size: centre crop or letterbox, then LANCZOS."""
    mode = "L" if geometry.channels == 1 else "RGB"
    sixteen_bit = img.mode.startswith("I;16")  # _shrink turns I;16 into I
    img = _to_8bit(_shrink(img, geometry.width, geometry.height), sixteen_bit)
    img = _flatten_alpha(img, background)
    img = img.convert(mode)
    fill = Image.new("RGB", (1, 1), background).convert(mode).getpixel((0, 0))

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
    return np.ascontiguousarray(arr)


def prepare_upload(
    data: bytes,
    geometry: Geometry,
    *,
    fit: str = "crop",
    background: tuple[int, int, int] = (255, 255, 255),
) -> PreparedImage:
    """Turn an uploaded image file into a uint8 array [H, W, C] matching ``geometry``, with notes.

    This is the one path every upload takes (the app, the CLIs, image folders), so it is the one
    the fuzzer (models/fuzz_uploads.py) hammers: it returns an image or raises ImageInputError,
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
        arr = _fit(img, geometry, fit, background)
    except MemoryError as e:
        raise ImageInputError("image is too large to convert (out of memory)") from e
    except _DECODE_ERRORS as e:  # e.g. LAB or HSV TIFFs, which Pillow cannot convert to RGB
        raise ImageInputError(f"cannot convert this {img.mode} image ({e})") from e
    return PreparedImage(arr, tuple(notes))


def prepare_image(
    data: bytes,
    geometry: Geometry,
    *,
    fit: str = "crop",
    background: tuple[int, int, int] = (255, 255, 255),
) -> np.ndarray:
    """prepare_upload without the notes, for callers that only need the pixels."""
    return prepare_upload(data, geometry, fit=fit, background=background).image


def _looks_like_image(path: Path) -> bool:
    """True if Pillow recognises the file header (Image.open is lazy: pixels are not decoded)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path):
                return True
    except (
        UnidentifiedImageError,
        Image.DecompressionBombError,
        OSError,
        ValueError,
        SyntaxError,
        EOFError,
        struct.error,
    ):
        return False


def load_image_folder(
    folder: str | Path, geometry: Geometry, *, fit: str = "crop"
) -> tuple[np.ndarray, list[str]]:
    """Every image file directly in ``folder`` (sorted by name) -> ([N, H, W, C] uint8, names).

    Files Pillow cannot use (text files, .DS_Store, corrupt images) are skipped so a messy folder
    still works; only an empty result is an error.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"image folder {folder} not found")
    images, names = [], []
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        # Cheap header sniff first so large non-image files are never read into memory.
        if not _looks_like_image(path):
            continue
        try:
            images.append(prepare_image(path.read_bytes(), geometry, fit=fit))
        except (ImageInputError, OSError):
            continue
        names.append(path.name)
    if not images:
        raise DatasetError(f"no usable images found in {folder}")
    return np.stack(images), names


def load_images(source: str, split: str, geometry: Geometry) -> np.ndarray:
    """Load training images [N, H, W, C] uint8 from a source string, dropping labels.

    Sources:
      "fashion-mnist" or "fashion-mnist:<folder>"  -> load_fashion_mnist (geometry must be 28x28x1)
      "cifar10:<folder>"                           -> load_cifar10 (geometry must be 32x32x3)
      "folder:<path>"                              -> load_image_folder, resized to ``geometry``;
                                                      ``split`` is ignored (one folder, one set)
    The fixed-size datasets are not resized on purpose: a mismatched geometry is more likely a
    config mistake than a wish to train on blurry rescaled images.
    """
    kind, _, arg = source.partition(":")
    if kind == "fashion-mnist":
        want = Geometry(28, 28, 1)
        if geometry != want:
            raise DatasetError(
                f"Fashion-MNIST images are {want}, but geometry is {geometry}; use {want}"
            )
        return load_fashion_mnist(split, Path(arg) if arg else FASHION_MNIST_DIR)[0]
    if kind == "cifar10":
        if not arg:
            raise DatasetError("cifar10 source needs a folder: 'cifar10:<folder>'")
        want = Geometry(32, 32, 3)
        if geometry != want:
            raise DatasetError(
                f"CIFAR-10 images are {want}, but geometry is {geometry}; use {want}"
            )
        return load_cifar10(arg, split)[0]
    if kind == "folder":
        if not arg:
            raise DatasetError("folder source needs a path: 'folder:<path>'")
        return load_image_folder(arg, geometry)[0]
    raise DatasetError(
        f"unknown image source {source!r}; expected 'fashion-mnist', 'cifar10:<folder>' "
        "or 'folder:<path>'"
    )
