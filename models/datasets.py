"""Dataset files -> uint8 image arrays [N, H, W, C]: Fashion-MNIST, CIFAR-10, image folders, and
patches of the colour photographs that installed Python packages ship ("photos").

Loaders never trust their input: dataset files are validated byte by byte and raise
``DatasetError`` naming the offending path; CIFAR-10 python pickles go through a restricted
unpickler that can only rebuild numpy arrays. Where the data comes from: docs/DESIGN.md, "Data".
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import os
import pickle
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from models.files import FileInputError, check_file, read_file
from models.tokens import Geometry
from models.uploads import MAX_IMAGE_FILE_BYTES, ImageInputError, prepare_image, read_image_file


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
# The largest data file read (and the most a gzipped one may expand to): Fashion-MNIST's training
# images are 47 MB, a CIFAR-10 batch 30 MB; 512 MiB keeps a wrong path or a gzip bomb bounded.
MAX_DATA_FILE_BYTES = 2**29


def _read_maybe_gzip(path: Path) -> bytes:
    """Read a file, transparently gunzipping it; decided by content so misnamed files still work.
    Kind and size are checked before it is opened (models/files.py), the unzipped size as it
    is unzipped."""
    if not path.exists() and not path.is_symlink():
        raise DatasetError(f"{path}: file not found")
    raw = read_file(path, MAX_DATA_FILE_BYTES, what="data file", error=DatasetError)
    if raw[:2] == _GZIP_MAGIC:
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(raw)) as f:
                raw = f.read(MAX_DATA_FILE_BYTES + 1)
        except (OSError, EOFError, gzip.BadGzipFile) as e:
            raise DatasetError(f"{path}: could not read file ({e})") from e
        if len(raw) > MAX_DATA_FILE_BYTES:
            raise DatasetError(
                f"{path}: unzips to more than {MAX_DATA_FILE_BYTES // 2**20} MiB, more than "
                "a data file here holds"
            )
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
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()  # [prod] -> dims


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
    planes = data.reshape(-1, 3, 32, 32)  # [N, 3072] -> [N, C, H, W]
    return np.ascontiguousarray(planes.transpose(0, 2, 3, 1))  # -> [N, H, W, C]


def _load_cifar_bin(path: Path) -> tuple[np.ndarray, np.ndarray]:
    raw = _read_maybe_gzip(path)
    if len(raw) == 0 or len(raw) % _CIFAR_RECORD:
        raise DatasetError(
            f"{path}: size {len(raw)} is not a positive multiple of the {_CIFAR_RECORD}-byte "
            "CIFAR-10 record"
        )
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, _CIFAR_RECORD)  # [N, 1 + 3072]
    return _cifar_from_planar(records[:, 1:], path), records[:, 0].copy()


def _load_cifar_pickle(path: Path) -> tuple[np.ndarray, np.ndarray]:
    raw = read_file(path, MAX_DATA_FILE_BYTES, what="data file", error=DatasetError)
    try:
        batch = _NumpyOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
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


def _looks_like_image(path: Path) -> bool:
    """True if Pillow recognises the file header (Image.open is lazy: pixels are not decoded);
    False, unopened, for what is not a regular file of at most MAX_IMAGE_FILE_BYTES."""
    try:
        check_file(path, MAX_IMAGE_FILE_BYTES)
    except FileInputError:
        return False
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
            images.append(prepare_image(read_image_file(path), geometry, fit=fit))
        except (ImageInputError, OSError):
            continue
        names.append(path.name)
    if not images:
        raise DatasetError(f"no usable images found in {folder}")
    return np.stack(images), names


# --- colour photographs shipped by Python packages ------------------------------

# Where installed packages keep colour photographs: (package, import name, folder inside it,
# file patterns). matplotlib is a runtime dependency; the others are optional (requirements-dev.txt)
PHOTO_PACKAGES = (
    ("matplotlib", "matplotlib", "mpl-data/sample_data", ("grace_hopper.jpg",)),
    ("scikit-learn", "sklearn", "datasets/images", ("china.jpg", "flower.jpg")),
    ("scikit-image", "skimage", "data", ("*.png", "*.jpg")),
)
# files in those folders that are drawings, charts or test patterns, not photographs
NOT_PHOTOS = ("logo", "color", "phantom", "chessboard", "horse", "text", "page", "checker")
PHOTO_MIN_SIDE = 64  # pixels: anything smaller is an icon
# patches per split: random crops of several scales, flipped at random, a function of the seed;
# PATCHES_ENV="TRAIN,TEST" sets other counts (dry runs: scripts/gpu_train.sh --dry)
PHOTO_PATCHES = {"train": 20_000, "test": 2_000}
PATCHES_ENV = "SPARSE_EXPLORER_PHOTO_PATCHES"
PHOTO_SCALES = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)  # crop side / patch side
PHOTOS_NOTE = (
    "patches of a handful of photographs: not data of CIFAR's breadth; numbers measured on it "
    "are not comparable with CIFAR-10's"
)


@dataclass(frozen=True)
class Photo:
    """One colour photograph: where it came from, and its pixels [H, W, 3] uint8."""

    name: str  # "package/file" (or "folder/file" for photos:DIR)
    path: Path
    pixels: np.ndarray = field(repr=False)


def _package_dir(import_name: str) -> Path | None:
    """The folder of an installed package, found without importing it (sklearn, skimage)."""
    if import_name == "matplotlib":
        import matplotlib

        return Path(matplotlib.get_data_path()).parent
    try:
        spec = importlib.util.find_spec(import_name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _read_photo(path: Path, name: str) -> Photo | None:
    """A photograph as RGB pixels, or None for what is not one: unreadable, tiny, or gray."""
    if not _looks_like_image(path):
        return None
    try:
        with Image.open(io.BytesIO(read_image_file(path))) as im:
            pixels = np.asarray(im.convert("RGB"))  # [H, W, 3]
    except (OSError, ValueError, Image.DecompressionBombError):  # ImageInputError among them
        return None
    if min(pixels.shape[:2]) < PHOTO_MIN_SIDE:
        return None
    # gray images saved as RGB: all three channels (nearly) the same
    spread = np.abs(pixels.astype(np.int16) - pixels.mean(axis=2, keepdims=True)).mean()
    if spread < 2.0:
        return None
    return Photo(name, path, pixels)


def find_photos(folder: str | Path | None = None) -> list[Photo]:
    """The colour photographs of ``folder`` (every image file in it), or, without one, those the
    installed packages ship (PHOTO_PACKAGES): matplotlib's sample photograph always, scikit-learn's
    and scikit-image's when installed. Sorted by name; drawings, charts, gray and tiny images are
    left out."""
    found: list[Photo] = []
    if folder is not None:
        folder = Path(folder)
        if not folder.is_dir():
            raise DatasetError(f"photo folder {folder} not found")
        for path in sorted(p for p in folder.iterdir() if p.is_file()):
            photo = _read_photo(path, f"{folder.name}/{path.name}")
            if photo is not None:
                found.append(photo)
        return found
    for package, import_name, sub, patterns in PHOTO_PACKAGES:
        root = _package_dir(import_name)
        if root is None or not (root / sub).is_dir():
            continue
        paths = sorted({p for pattern in patterns for p in (root / sub).glob(pattern)})
        for path in paths:
            if any(word in path.stem.lower() for word in NOT_PHOTOS):
                continue
            photo = _read_photo(path, f"{package}/{path.name}")
            if photo is not None:
                found.append(photo)
    return sorted(found, key=lambda p: p.name)


def split_photos(photos: list[Photo]) -> dict[str, list[Photo]]:
    """Whole photos per split: the test split holds out a quarter of them (at least one), chosen
    by a hash of their names, so no patch of a test photo is ever trained on."""
    if len(photos) < 2:
        names = ", ".join(p.name for p in photos) or "none"
        raise DatasetError(
            f"the photos source needs at least two colour photographs, to hold one out for "
            f"testing; found {len(photos)} ({names}). Install scikit-learn or scikit-image "
            "(requirements-dev.txt), or give a folder: 'photos:<folder>'"
        )
    groups: dict[str, list[Photo]] = {}  # a stereo pair (*_left, *_right) is one scene
    for photo in photos:
        groups.setdefault(_scene(photo.name), []).append(photo)
    if len(groups) < 2:
        raise DatasetError(
            f"the photos source needs photographs of at least two scenes, found only "
            f"{', '.join(p.name for p in photos)}"
        )
    ranked = sorted(groups, key=lambda g: hashlib.sha256(g.encode()).hexdigest())
    n_test = max(1, len(groups) // 4)
    test = [p for g in ranked[:n_test] for p in groups[g]]
    train = [p for g in ranked[n_test:] for p in groups[g]]
    by_name = lambda ps: sorted(ps, key=lambda p: p.name)  # noqa: E731
    return {"train": by_name(train), "test": by_name(test)}


def _scene(name: str) -> str:
    """The scene a photo shows: its name without the extension and a _left / _right suffix."""
    stem = name.rsplit(".", 1)[0]
    for side in ("_left", "_right"):
        stem = stem.removesuffix(side)
    return stem


def photo_patches(photos: list[Photo], geometry: Geometry, n: int, *, seed: int = 0) -> np.ndarray:
    """``n`` patches [n, H, W, C] uint8 of ``photos``: a photo at random, a square-pixel crop of
    a random scale (PHOTO_SCALES, at most the photo's size) at a random place, resized to H x W
    (box filter), flipped left-right half the time. A pure function of (photos, n, seed)."""
    h, w, c = geometry.height, geometry.width, geometry.channels
    rng = np.random.default_rng(seed)
    out = np.empty((n, h, w, c), dtype=np.uint8)
    for k in range(n):
        photo = photos[int(rng.integers(len(photos)))].pixels  # [PH, PW, 3]
        ph, pw = photo.shape[:2]
        scales = [s for s in PHOTO_SCALES if s * h <= ph and s * w <= pw] or [1.0]
        s = scales[int(rng.integers(len(scales)))]
        ch, cw = min(ph, round(s * h)), min(pw, round(s * w))
        top, left = int(rng.integers(ph - ch + 1)), int(rng.integers(pw - cw + 1))
        crop = photo[top : top + ch, left : left + cw]  # [ch, cw, 3]
        if (ch, cw) != (h, w):
            crop = np.asarray(Image.fromarray(crop).resize((w, h), Image.Resampling.BOX))
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        if c == 1:
            crop = np.asarray(Image.fromarray(np.ascontiguousarray(crop)).convert("L"))[..., None]
        out[k] = crop
    return out


def patch_counts() -> dict[str, int]:
    """Patches per split: PHOTO_PATCHES, or the counts PATCHES_ENV names ("TRAIN,TEST")."""
    value = os.environ.get(PATCHES_ENV)
    if not value:
        return dict(PHOTO_PATCHES)
    try:
        train, test = (int(v) for v in value.split(","))
    except ValueError:
        raise DatasetError(f"{PATCHES_ENV} must be 'TRAIN,TEST' counts, got {value!r}") from None
    if not (1 <= train <= 10**6 and 1 <= test <= 10**6):
        raise DatasetError(f"{PATCHES_ENV}: counts must be in 1..1000000, got {value!r}")
    return {"train": train, "test": test}


def photos_metadata(folder: str | Path | None = None) -> dict:
    """What the photos source is made of: every photo found (by package), the photos of each
    split by name, the patches per split, and the note that this is not CIFAR."""
    photos = find_photos(folder)
    splits = split_photos(photos)
    return {
        "photos": [p.name for p in photos],
        "train_photos": [p.name for p in splits["train"]],
        "test_photos": [p.name for p in splits["test"]],
        "patches": patch_counts(),
        "scales": list(PHOTO_SCALES),
        "note": PHOTOS_NOTE,
    }


def load_photos(
    split: str, geometry: Geometry, folder: str | Path | None = None, *, seed: int = 0
) -> np.ndarray:
    """PHOTO_PATCHES[split] patches of the split's photos (split_photos): whole photos are held
    out for "test". Patches of both splits are deterministic (seed, and the split's own stream).

    Not data of CIFAR's breadth: a handful of photographs (see photos_metadata for which)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    photos = split_photos(find_photos(folder))[split]
    stream = seed * 2 + (split == "test")  # the test split never shares the train's crops
    return photo_patches(photos, geometry, patch_counts()[split], seed=stream)


def describe_source(source: str) -> dict | None:
    """Extra facts a run record keeps about a data source: the photos source lists its photos
    per split (photos_metadata); None for the others."""
    kind, _, arg = source.partition(":")
    if kind != "photos":
        return None
    return photos_metadata(arg or None)


def held_out_source(geometry: Geometry) -> str:
    """Where the app and the CLIs' defaults take test images for a model of ``geometry``:
    Fashion-MNIST at its own 28 x 28 x 1 or downsampled by a whole factor (14 x 14, 7 x 7),
    else the colour photos' held-out split, cut to the geometry (no CIFAR-10 is installed here;
    a user who has it passes ``cifar10:<folder>``)."""
    return "fashion-mnist" if fashion_mnist_factor(geometry) is not None else "photos"


FASHION_MNIST_SIDE = 28


def fashion_mnist_factor(geometry: Geometry) -> int | None:
    """The whole factor k that turns 28 x 28 Fashion-MNIST into ``geometry`` (28 / k square,
    gray), or None when no such k exists."""
    h, w, c = geometry
    if c != 1 or h != w or FASHION_MNIST_SIDE % h:
        return None
    return FASHION_MNIST_SIDE // h


def downsample(images: np.ndarray, factor: int) -> np.ndarray:
    """Images [N, H, W, C] uint8 shrunk by a whole ``factor``: each output pixel is the mean of
    a ``factor`` x ``factor`` block, rounded half up (a box filter, the same for every image;
    no interpolation crosses a block). H and W must be multiples of ``factor``."""
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise ValueError(f"downsample factor must be a whole number >= 1, got {factor!r}")
    n, h, w, c = images.shape
    if h % factor or w % factor:
        raise ValueError(f"{h} x {w} images cannot be shrunk by {factor}: not a whole factor")
    if factor == 1:
        return images
    blocks = images.reshape(n, h // factor, factor, w // factor, factor, c)
    sums = blocks.sum(axis=(2, 4), dtype=np.uint32)  # [N, H/k, W/k, C]
    area = factor * factor
    return ((sums + area // 2) // area).astype(np.uint8)


def load_images(source: str, split: str, geometry: Geometry) -> np.ndarray:
    """Load training images [N, H, W, C] uint8 from a source string, dropping labels.

    Sources:
      "fashion-mnist" or "fashion-mnist:<folder>"  -> load_fashion_mnist: geometry 28x28x1, or
                                                      28/k square (14x14x1: k = 2) for the
                                                      images downsampled by 2x2 block means
      "cifar10:<folder>"                           -> load_cifar10 (geometry must be 32x32x3)
      "folder:<path>"                              -> load_image_folder, resized to ``geometry``;
                                                      ``split`` is ignored (one folder, one set)
      "photos" or "photos:<folder>"                -> load_photos: patches of the colour photos
                                                      installed packages ship (or of a folder's),
                                                      whole photos held out for "test"
    The fixed-size datasets are not resized to arbitrary sizes on purpose: a mismatched
    geometry is more likely a config mistake than a wish to train on blurry rescaled images.
    Fashion-MNIST shrunk by a whole factor is the one exception: a model asks for it by its
    geometry (tools.train --size 14), and every pixel is an exact block mean (``downsample``).
    """
    kind, _, arg = source.partition(":")
    if kind == "fashion-mnist":
        factor = fashion_mnist_factor(geometry)
        if factor is None:
            sides = ", ".join(f"{FASHION_MNIST_SIDE // k}" for k in (1, 2, 4, 7))
            raise DatasetError(
                f"Fashion-MNIST images are {Geometry(28, 28, 1)}, but geometry is {geometry}; "
                f"use square gray images of a side that divides 28 ({sides})"
            )
        images = load_fashion_mnist(split, Path(arg) if arg else FASHION_MNIST_DIR)[0]
        return downsample(images, factor)
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
    if kind == "photos":
        return load_photos(split, geometry, arg or None)
    raise DatasetError(
        f"unknown image source {source!r}; expected 'fashion-mnist', 'cifar10:<folder>', "
        "'folder:<path>' or 'photos[:<folder>]'"
    )
