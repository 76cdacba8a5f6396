"""models/datasets.py: dataset files -> uint8 image arrays, never trusting the bytes.

Every test writes its own tiny files into tmp_path and goes through the real loaders, so nothing
here depends on datasets installed on the machine.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models import datasets
from models.datasets import DatasetError, held_out_source
from models.tokens import Geometry

rng = np.random.default_rng(0)


def random_image(h: int, w: int, c: int) -> np.ndarray:
    return rng.integers(0, 256, size=(h, w, c), dtype=np.uint8)


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
# image folders and the source strings


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
    cf = tmp_path / "cf"
    cf.mkdir()
    planar, labels = cifar_planar(2)
    write_cifar_bin(cf / "data_batch_1.bin", planar, labels)
    # the fixed-size datasets load at their own geometry and refuse any other, naming theirs
    fixed_size = [
        (f"fashion-mnist:{fm}", Geometry(28, 28, 1), 3, Geometry(32, 32, 3), "28x28x1"),
        (f"cifar10:{cf}", Geometry(32, 32, 3), 2, Geometry(28, 28, 1), "32x32x3"),
    ]
    for source, geometry, count, other, message in fixed_size:
        assert datasets.load_images(source, "train", geometry).shape == (count, *geometry)
        with pytest.raises(DatasetError, match=message):
            datasets.load_images(source, "train", other)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    Image.fromarray(random_image(10, 10, 3)).save(imgs / "x.png")
    folder = datasets.load_images(f"folder:{imgs}", "train", Geometry(8, 6, 1))
    assert folder.shape == (1, 8, 6, 1)
    with pytest.raises(DatasetError, match="unknown image source"):
        datasets.load_images("mnist", "train", Geometry(28, 28, 1))


def test_test_source_follows_the_geometry():
    assert held_out_source(Geometry(28, 28, 1)) == "fashion-mnist"
    assert held_out_source(Geometry(32, 32, 3)) == "photos"  # the held-out colour photos
    assert held_out_source(Geometry(16, 16, 1)) == "photos"  # cut and greyed to any other size
