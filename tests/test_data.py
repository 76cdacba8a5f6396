"""Tests for models/data.py: token order, dataset file parsing, and user image preparation.

Every dataset test writes its own tiny files into tmp_path and goes through the real loaders, so
nothing here depends on datasets installed on the machine.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models import datasets, uploads
from models.datasets import DatasetError
from models.tokens import Geometry, image_to_tokens, images_to_tokens, token_coords, tokens_to_image
from models.uploads import ImageInputError

rng = np.random.default_rng(0)


def random_image(h: int, w: int, c: int) -> np.ndarray:
    return rng.integers(0, 256, size=(h, w, c), dtype=np.uint8)


# -----------------------------------------------------------------------------
# tokens


def test_geometry_basics():
    g = Geometry(28, 28, 1)
    assert g.n_tokens == 784
    assert str(g) == "28x28x1"
    assert str(Geometry(32, 16, 3)) == "32x16x3"
    assert Geometry(32, 32, 3) == (32, 32, 3)


@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 32, 3), (5, 9, 3)])
def test_roundtrip_exact(shape):
    img = random_image(*shape)
    tokens = image_to_tokens(img)
    assert tokens.dtype == torch.long and tokens.shape == (img.size,)
    back = tokens_to_image(tokens, Geometry(*shape))
    assert back.dtype == np.uint8 and back.shape == shape
    np.testing.assert_array_equal(back, img)
    # numpy input works too
    np.testing.assert_array_equal(tokens_to_image(tokens.numpy(), Geometry(*shape)), img)


def test_raster_order_channels_interleaved():
    # pixel (r, c) has colour (10*(2r+c) + 1, +2, +3): tokens must be R,G,B of each pixel in turn
    img = np.array(
        [[[1, 2, 3], [11, 12, 13]], [[21, 22, 23], [31, 32, 33]]],
        dtype=np.uint8,
    )
    expected = [1, 2, 3, 11, 12, 13, 21, 22, 23, 31, 32, 33]
    assert image_to_tokens(img).tolist() == expected
    assert [token_coords(i, Geometry(2, 2, 3)) for i in (0, 4, 8, 11)] == [
        (0, 0, 0),
        (0, 1, 1),
        (1, 0, 2),
        (1, 1, 2),
    ]


def test_gray_2d_input_and_batch():
    img = random_image(4, 6, 1)
    assert torch.equal(image_to_tokens(img[:, :, 0]), image_to_tokens(img))
    batch = np.stack([random_image(4, 6, 3) for _ in range(3)])
    tokens = images_to_tokens(batch)
    assert tokens.shape == (3, 72) and tokens.dtype == torch.long
    assert torch.equal(tokens[1], image_to_tokens(batch[1]))
    np.testing.assert_array_equal(tokens_to_image(tokens, Geometry(4, 6, 3)), batch)


@pytest.mark.parametrize("shape", [(3, 5, 3), (4, 4, 1), (2, 7, 3)])
def test_token_coords_match_pixels(shape):
    g = Geometry(*shape)
    img = random_image(*shape)
    tokens = image_to_tokens(img)
    idx = np.arange(g.n_tokens)
    rows, cols, chans = token_coords(idx, g)
    trows, tcols, tchans = token_coords(torch.arange(g.n_tokens), g)
    assert isinstance(rows, np.ndarray) and isinstance(trows, torch.Tensor)
    for i in range(g.n_tokens):
        r, c, ch = token_coords(i, g)
        assert all(type(v) is int for v in (r, c, ch))
        assert (rows[i], cols[i], chans[i]) == (r, c, ch)
        assert (int(trows[i]), int(tcols[i]), int(tchans[i])) == (r, c, ch)
        assert img[r, c, ch] == tokens[i]
    np.testing.assert_array_equal(img[rows, cols, chans], tokens.numpy())


def test_token_coords_out_of_range():
    g = Geometry(2, 2, 3)
    for bad in (-1, 12):
        with pytest.raises(IndexError):
            token_coords(bad, g)
    with pytest.raises(IndexError):
        token_coords(np.array([0, 12]), g)
    with pytest.raises(IndexError):
        token_coords(torch.tensor([-1, 0]), g)
    with pytest.raises(ValueError):
        token_coords(np.array([0.5]), g)


def test_token_conversion_errors():
    with pytest.raises(ValueError, match="uint8"):
        image_to_tokens(np.zeros((2, 2, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="shape"):
        image_to_tokens(np.zeros(5, dtype=np.uint8))
    with pytest.raises(ValueError):
        images_to_tokens(np.zeros((2, 2, 3), dtype=np.uint8))
    g = Geometry(2, 2, 3)
    with pytest.raises(ValueError, match="0..255"):
        tokens_to_image(torch.full((12,), 256), g)
    with pytest.raises(ValueError, match="0..255"):
        tokens_to_image(torch.full((12,), -1), g)
    with pytest.raises(ValueError) as err:
        tokens_to_image(torch.zeros(10, dtype=torch.long), g)
    assert "10" in str(err.value) and "12" in str(err.value)
    with pytest.raises(ValueError):
        tokens_to_image(torch.zeros(12), g)  # float tokens


# -----------------------------------------------------------------------------
# IDX / Fashion-MNIST


def idx_bytes(arr: np.ndarray) -> bytes:
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def write_fmnist(
    root: Path, images: np.ndarray, labels: np.ndarray, prefix: str = "train", gz: bool = True
) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for kind, arr in (("images-idx3", images), ("labels-idx1", labels)):
        name = f"{prefix}-{kind}-ubyte"
        raw = idx_bytes(arr)
        if gz:
            (root / f"{name}.gz").write_bytes(gzip.compress(raw))
        else:
            (root / name).write_bytes(raw)


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_roundtrip(tmp_path, gz):
    images = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    labels = np.array([0, 9, 3, 3, 7], dtype=np.uint8)
    write_fmnist(tmp_path, images, labels, gz=gz)
    x, y = datasets.load_fashion_mnist("train", root=tmp_path)
    assert x.dtype == np.uint8 and x.shape == (5, 28, 28, 1)
    np.testing.assert_array_equal(x[..., 0], images)
    np.testing.assert_array_equal(y, labels)
    assert (
        len(datasets.FASHION_MNIST_CLASSES) == 10
        and datasets.FASHION_MNIST_CLASSES[9] == "Ankle boot"
    )


def test_fashion_mnist_test_split_reads_t10k(tmp_path):
    images = rng.integers(0, 256, size=(2, 28, 28), dtype=np.uint8)
    write_fmnist(tmp_path, images, np.array([1, 2], dtype=np.uint8), prefix="t10k")
    x, _ = datasets.load_fashion_mnist("test", root=tmp_path)
    np.testing.assert_array_equal(x[..., 0], images)
    with pytest.raises(DatasetError, match="apt-get install -y dataset-fashion-mnist"):
        datasets.load_fashion_mnist("train", root=tmp_path)


def test_load_idx_errors(tmp_path):
    good = idx_bytes(rng.integers(0, 256, size=(3, 4, 4), dtype=np.uint8))
    cases = {
        "bad_magic": b"\x01\x00" + good[2:],
        "bad_dtype": good[:2] + b"\x0d" + good[3:],
        "truncated": good[:-5],
        "too_long": good + b"\x00",
        "tiny": b"\x00\x00",
        "short_header": good[:8],
    }
    for name, raw in cases.items():
        for gz in (False, True):
            p = tmp_path / (name + (".gz" if gz else ""))
            p.write_bytes(gzip.compress(raw) if gz else raw)
            with pytest.raises(DatasetError, match=name):
                datasets.load_idx(p)
    (tmp_path / "broken.gz").write_bytes(gzip.compress(good)[:-10])
    with pytest.raises(DatasetError, match="broken.gz"):
        datasets.load_idx(tmp_path / "broken.gz")
    with pytest.raises(DatasetError, match="missing"):
        datasets.load_idx(tmp_path / "missing")


def test_fashion_mnist_count_mismatch(tmp_path):
    images = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    write_fmnist(tmp_path, images, np.zeros(4, dtype=np.uint8))
    with pytest.raises(DatasetError, match="5 images"):
        datasets.load_fashion_mnist("train", root=tmp_path)


def test_fashion_mnist_missing_folder(tmp_path):
    with pytest.raises(DatasetError) as err:
        datasets.load_fashion_mnist("train", root=tmp_path / "nope")
    assert "apt-get install -y dataset-fashion-mnist" in str(err.value)
    assert str(tmp_path / "nope") in str(err.value)
    assert issubclass(DatasetError, ValueError)


# -----------------------------------------------------------------------------
# CIFAR-10


def cifar_planar(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Random channel-planar CIFAR data [n, 3072] with one hand-placed pixel, plus labels."""
    planar = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    r, c = 5, 7
    planar[0, 0 * 1024 + r * 32 + c] = 10  # R plane
    planar[0, 1 * 1024 + r * 32 + c] = 20  # G plane
    planar[0, 2 * 1024 + r * 32 + c] = 30  # B plane
    return planar, rng.integers(0, 10, size=n, dtype=np.uint8)


def write_cifar_bin(path: Path, planar: np.ndarray, labels: np.ndarray) -> None:
    path.write_bytes(np.concatenate([labels[:, None], planar], axis=1).tobytes())


def write_cifar_py(path: Path, planar: np.ndarray, labels: np.ndarray, protocol: int) -> None:
    batch = {
        b"batch_label": b"testing batch",
        b"labels": [int(v) for v in labels],
        b"data": planar,
        b"filenames": [b"a.png"] * len(labels),
    }
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=protocol)


def check_cifar(images: np.ndarray, labels: np.ndarray, planar: np.ndarray, want: np.ndarray):
    assert images.dtype == np.uint8 and images.shape == (len(planar), 32, 32, 3)
    assert images[0, 5, 7].tolist() == [10, 20, 30]
    np.testing.assert_array_equal(images, planar.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(labels, want)


def test_cifar_binary_and_python_agree(tmp_path):
    planar, labels = cifar_planar(4)
    bin_dir = tmp_path / "bin" / "cifar-10-batches-bin"
    bin_dir.mkdir(parents=True)
    write_cifar_bin(bin_dir / "test_batch.bin", planar, labels)
    check_cifar(*datasets.load_cifar10(tmp_path / "bin", "test"), planar, labels)
    for protocol in (2, pickle.DEFAULT_PROTOCOL, 5):
        py_dir = tmp_path / f"py{protocol}" / "cifar-10-batches-py"
        py_dir.mkdir(parents=True)
        write_cifar_py(py_dir / "test_batch", planar, labels, protocol)
        check_cifar(*datasets.load_cifar10(py_dir.parent, "test"), planar, labels)
        check_cifar(*datasets.load_cifar10(py_dir, "test"), planar, labels)  # folder itself


def test_cifar_train_concatenates_batches(tmp_path):
    p1, l1 = cifar_planar(3)
    p2, l2 = cifar_planar(2)
    write_cifar_bin(tmp_path / "data_batch_1.bin", p1, l1)
    write_cifar_bin(tmp_path / "data_batch_2.bin", p2, l2)
    images, labels = datasets.load_cifar10(tmp_path)
    assert images.shape == (5, 32, 32, 3)
    np.testing.assert_array_equal(labels, np.concatenate([l1, l2]))
    with pytest.raises(DatasetError, match="test_batch"):
        datasets.load_cifar10(tmp_path, "test")


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar_pickle_refuses_arbitrary_globals(tmp_path):
    marker = tmp_path / "pwned"
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"data": _Evil(marker), b"labels": [0]}, f, protocol=2)
    with pytest.raises(DatasetError, match=r"refusing to unpickle \w+\.system"):
        datasets.load_cifar10(tmp_path, "test")
    assert not marker.exists()
    # _codecs.encode is allowed only for the latin-1 round trip protocol 2 uses for bytes
    codec_pickle = b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x05\x00\x00\x00rot13\x86R."
    (tmp_path / "test_batch").write_bytes(codec_pickle)
    with pytest.raises(DatasetError, match="refusing to unpickle _codecs.encode"):
        datasets.load_cifar10(tmp_path, "test")


def test_cifar_errors(tmp_path):
    with pytest.raises(DatasetError, match="no CIFAR-10"):
        datasets.load_cifar10(tmp_path)
    (tmp_path / "test_batch.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(DatasetError, match="3073"):
        datasets.load_cifar10(tmp_path, "test")
    (tmp_path / "data_batch_1").write_bytes(b"not a pickle")
    with pytest.raises(DatasetError, match="data_batch_1"):
        datasets.load_cifar10(tmp_path)


# -----------------------------------------------------------------------------
# user images


def encode(img: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def test_prepare_gray_and_rgb_png():
    gray = random_image(28, 28, 1)
    out = uploads.prepare_image(encode(Image.fromarray(gray[:, :, 0])), Geometry(28, 28, 1))
    assert out.dtype == np.uint8 and out.shape == (28, 28, 1)
    np.testing.assert_array_equal(out, gray)  # same size: no resampling
    rgb = random_image(32, 32, 3)
    out = uploads.prepare_image(encode(Image.fromarray(rgb)), Geometry(32, 32, 3))
    np.testing.assert_array_equal(out, rgb)
    # RGB into a gray geometry and gray into an RGB geometry, with resizing
    out = uploads.prepare_image(encode(Image.fromarray(rgb)), Geometry(16, 16, 1))
    assert out.shape == (16, 16, 1) and out.dtype == np.uint8
    out = uploads.prepare_image(encode(Image.fromarray(gray[:, :, 0])), Geometry(10, 12, 3))
    assert out.shape == (10, 12, 3)
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_prepare_alpha_composited_onto_background():
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., 0] = 255  # red, fully transparent everywhere
    bg = (0, 128, 255)
    out = uploads.prepare_image(
        encode(Image.fromarray(rgba, "RGBA")), Geometry(8, 8, 3), background=bg
    )
    assert (out == np.array(bg, dtype=np.uint8)).all()
    rgba[..., 3] = 255  # now opaque
    out = uploads.prepare_image(encode(Image.fromarray(rgba, "RGBA")), Geometry(8, 8, 3))
    assert (out == [255, 0, 0]).all()
    la = Image.fromarray(np.zeros((8, 8, 2), dtype=np.uint8), "LA")  # black, transparent
    out = uploads.prepare_image(encode(la), Geometry(8, 8, 1), background=(255, 255, 255))
    assert (out == 255).all()


def test_prepare_palette_with_transparency():
    pal = Image.new("P", (8, 8), 0)
    pal.putpalette([0, 0, 0, 200, 10, 10] + [0] * (3 * 254))
    pal.paste(1, (0, 0, 4, 8))  # left half index 1 (opaque red-ish), right half index 0
    raw = encode(pal, transparency=0)
    out = uploads.prepare_image(raw, Geometry(8, 8, 3), background=(0, 255, 0))
    assert (out[:, :4] == [200, 10, 10]).all()
    assert (out[:, 4:] == [0, 255, 0]).all()


def test_prepare_exif_orientation():
    # Stored landscape 40x20: left half red, right half blue. Orientation 6 = rotate 90 CW to
    # display, giving portrait 20 wide x 40 tall with red on top and blue at the bottom.
    arr = np.zeros((20, 40, 3), dtype=np.uint8)
    arr[:, :20] = (255, 0, 0)
    arr[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    raw = encode(Image.fromarray(arr), "JPEG", exif=exif, quality=95)
    out = uploads.prepare_image(raw, Geometry(40, 20, 3), fit="letterbox", background=(0, 255, 0))
    assert out.shape == (40, 20, 3)
    top, bottom = out[2:18].astype(int), out[22:38].astype(int)
    assert (top[..., 0] > 200).all() and (top[..., 2] < 60).all()
    assert (bottom[..., 2] > 200).all() and (bottom[..., 0] < 60).all()
    assert (out[..., 1] < 60).all()  # no green padding: the rotated aspect fits exactly


def test_prepare_crop_vs_letterbox():
    # wide image 60x20: left third black, middle white, right third black
    arr = np.zeros((20, 60, 3), dtype=np.uint8)
    arr[:, 20:40] = 255
    raw = encode(Image.fromarray(arr))
    crop = uploads.prepare_image(raw, Geometry(16, 16, 3), fit="crop")
    assert crop.shape == (16, 16, 3) and crop.dtype == np.uint8
    assert (crop[:, 2:14] > 240).all()  # centre crop is the white middle square
    box = uploads.prepare_image(raw, Geometry(30, 30, 3), fit="letterbox", background=(255, 0, 0))
    assert box.shape == (30, 30, 3)
    assert (box[:5] == [255, 0, 0]).all() and (box[-5:] == [255, 0, 0]).all()  # padding rows
    assert (box[12:18, :5] < 15).all()  # image content (black) spans the full width
    gray_box = uploads.prepare_image(
        raw, Geometry(30, 30, 1), fit="letterbox", background=(255, 255, 255)
    )
    assert gray_box.shape == (30, 30, 1) and (gray_box[:5] == 255).all()
    with pytest.raises(ValueError, match="letterbox"):
        uploads.prepare_image(raw, Geometry(16, 16, 3), fit="stretch")
    with pytest.raises(ValueError, match="channels"):
        uploads.prepare_image(raw, Geometry(16, 16, 2))


def test_prepare_bad_inputs():
    with pytest.raises(ImageInputError, match="empty"):
        uploads.prepare_image(b"", Geometry(8, 8, 3))
    with pytest.raises(ImageInputError, match="not a recognised image"):
        uploads.prepare_image(rng.bytes(1000), Geometry(8, 8, 3))
    png = encode(Image.fromarray(random_image(64, 64, 3)))
    with pytest.raises(ImageInputError, match="truncated"):
        uploads.prepare_image(png[: len(png) // 2], Geometry(8, 8, 3))
    assert issubclass(ImageInputError, ValueError)


def test_prepare_decompression_bomb(monkeypatch):
    raw = encode(Image.fromarray(random_image(64, 64, 3)))
    for limit in (3000, 1000):  # warning range (> limit) and error range (> 2 * limit)
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
        with pytest.raises(ImageInputError, match="too large"):
            uploads.prepare_image(raw, Geometry(8, 8, 3))


def test_load_image_folder(tmp_path):
    for i, name in enumerate(["b.png", "a.jpg", "c.png"]):
        Image.fromarray(random_image(20 + i, 30, 3)).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    images, names = datasets.load_image_folder(tmp_path, Geometry(16, 16, 3))
    assert names == ["a.jpg", "b.png", "c.png"]
    assert images.shape == (3, 16, 16, 3) and images.dtype == np.uint8
    with pytest.raises(DatasetError):
        datasets.load_image_folder(tmp_path / "missing", Geometry(16, 16, 3))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "x.txt").write_text("hello")
    with pytest.raises(DatasetError, match="no usable images"):
        datasets.load_image_folder(empty, Geometry(16, 16, 3))


def test_load_images_dispatch(tmp_path):
    fm = tmp_path / "fm"
    write_fmnist(
        fm, rng.integers(0, 256, size=(3, 28, 28), dtype=np.uint8), np.zeros(3, dtype=np.uint8)
    )
    assert datasets.load_images(f"fashion-mnist:{fm}", "train", Geometry(28, 28, 1)).shape == (
        3,
        28,
        28,
        1,
    )
    with pytest.raises(DatasetError, match="28x28x1"):
        datasets.load_images(f"fashion-mnist:{fm}", "train", Geometry(32, 32, 3))
    cf = tmp_path / "cf"
    cf.mkdir()
    planar, labels = cifar_planar(2)
    write_cifar_bin(cf / "data_batch_1.bin", planar, labels)
    assert datasets.load_images(f"cifar10:{cf}", "train", Geometry(32, 32, 3)).shape == (
        2,
        32,
        32,
        3,
    )
    with pytest.raises(DatasetError, match="32x32x3"):
        datasets.load_images(f"cifar10:{cf}", "train", Geometry(28, 28, 1))
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    Image.fromarray(random_image(10, 10, 3)).save(imgs / "x.png")
    assert datasets.load_images(f"folder:{imgs}", "train", Geometry(8, 6, 1)).shape == (1, 8, 6, 1)
    with pytest.raises(DatasetError, match="unknown image source"):
        datasets.load_images("mnist", "train", Geometry(28, 28, 1))
