"""models/datasets.py, the "photos" source: 32 x 32 colour patches of the photographs installed
packages ship (or of a folder's), whole photos held out for testing; and a tiny colour training
run at CIFAR's geometry (3,072 tokens) on them."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from models import datasets
from models.datasets import DatasetError, find_photos, load_images, photos_metadata, split_photos
from models.tokens import Geometry

CIFAR = Geometry(32, 32, 3)
# one flat, saturated colour per photo: a patch's colour says which photo it was cut from
COLOURS = {
    "beach.png": (230, 40, 40),
    "cat.png": (40, 200, 40),
    "dog.jpg": (40, 40, 220),
    "field.png": (220, 200, 30),
    "moto_left.png": (200, 30, 200),
    "moto_right.png": (30, 200, 200),
    "tree.png": (120, 60, 10),
}


@pytest.fixture
def small_patches(monkeypatch):
    monkeypatch.setattr(datasets, "PHOTO_PATCHES", {"train": 64, "test": 16})


@pytest.fixture
def photo_folder(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, colour in COLOURS.items():
        size = (90 + 7 * len(name), 70 + 3 * len(name))  # (width, height), various shapes
        Image.new("RGB", size, colour).save(folder / name, quality=100)
    Image.new("RGB", (100, 100), (90, 90, 90)).save(folder / "gray.png")  # no colour: skipped
    Image.new("RGB", (20, 20), (250, 0, 0)).save(folder / "icon.png")  # tiny: skipped
    (folder / "notes.txt").write_text("not an image")
    return folder


def colours_of(patches: np.ndarray) -> set[tuple[int, ...]]:
    return {tuple(int(v) for v in p.reshape(-1, 3).mean(0).round()) for p in patches}


def near(colour, palette, tol=3) -> bool:
    return any(max(abs(a - b) for a, b in zip(colour, c, strict=True)) <= tol for c in palette)


def test_photos_of_a_folder_and_whole_photos_held_out(photo_folder, small_patches):
    photos = find_photos(photo_folder)
    assert [p.name.split("/")[1] for p in photos] == sorted(COLOURS)  # gray, icon, text left out
    meta = photos_metadata(photo_folder)
    train, test = set(meta["train_photos"]), set(meta["test_photos"])
    assert train and test and not train & test and train | test == set(meta["photos"])
    assert "not data of CIFAR's breadth" in meta["note"]
    # a stereo pair is one scene: both in the same split
    assert ("photos/moto_left.png" in test) == ("photos/moto_right.png" in test)
    for split, names in (("train", train), ("test", test)):
        x = load_images(f"photos:{photo_folder}", split, CIFAR)
        assert x.shape == (datasets.PHOTO_PATCHES[split], 32, 32, 3) and x.dtype == np.uint8
        # every patch was cut from a photo of its own split, never from one of the other
        palette = [COLOURS[n.split("/")[1]] for n in names]
        assert all(near(c, palette) for c in colours_of(x)), split


def test_patches_are_deterministic_and_varied(small_patches):
    """Real photos (matplotlib's always; scikit-learn's and scikit-image's when installed)."""
    photos = find_photos()
    assert "matplotlib/grace_hopper.jpg" in [p.name for p in photos]
    if len({datasets._scene(p.name) for p in photos}) < 2:
        with pytest.raises(DatasetError, match="at least two"):
            load_images("photos", "train", CIFAR)
        pytest.skip("only matplotlib's photograph is installed (scikit-learn/-image are optional)")
    a = load_images("photos", "train", CIFAR)
    assert np.array_equal(a, load_images("photos", "train", CIFAR))  # a function of the seed
    assert not np.array_equal(a, datasets.load_photos("train", CIFAR, seed=1))
    assert len({p.tobytes() for p in a}) == len(a)  # crops at several scales: all distinct
    test = load_images("photos", "test", CIFAR)
    assert test.shape == (16, 32, 32, 3) and not {p.tobytes() for p in a} & {
        p.tobytes() for p in test
    }
    gray = load_images("photos", "test", Geometry(28, 28, 1))  # any geometry, gray too
    assert gray.shape == (16, 28, 28, 1)


def test_too_few_photos_are_refused_naming_what_was_found(tmp_path):
    Image.new("RGB", (100, 80), (200, 10, 10)).save(tmp_path / "one.png")
    with pytest.raises(DatasetError, match=r"found 1 \(.*one.png\)"):
        split_photos(find_photos(tmp_path))
    with pytest.raises(DatasetError, match="not found"):
        load_images(f"photos:{tmp_path / 'nope'}", "train", CIFAR)


def test_a_tiny_colour_run_at_cifar_geometry(photo_folder, small_patches, tmp_path):
    """Two steps of a tiny strided(l=96) model on 3,072-token colour patches, on the CPU."""
    from models import load_model
    from models.training import TrainConfig, train

    cfg = TrainConfig(
        preset="cifar-tiny",
        layout="strided",
        data=f"photos:{photo_folder}",
        steps=2,
        batch_size=2,
        warmup=1,
        eval_every=2,
        eval_images=2,
        threads=1,
    )
    record = train(cfg, tmp_path / "run")
    assert np.isfinite(record.final["test_bpd"]) and record.final["test_images"] == 16
    saved = json.loads((tmp_path / "run" / "run.json").read_text())
    assert saved["data_source"]["test_photos"] == photos_metadata(photo_folder)["test_photos"]
    model = load_model(tmp_path / "run")
    assert model.config.block_size == 3072 and repr(model.layouts[0]) == "strided(l=96)"


def test_patch_counts_from_the_environment(photo_folder, monkeypatch):
    monkeypatch.setenv(datasets.PATCHES_ENV, "6,3")
    assert load_images(f"photos:{photo_folder}", "test", CIFAR).shape == (3, 32, 32, 3)
    assert photos_metadata(photo_folder)["patches"] == {"train": 6, "test": 3}
    for bad in ("6", "a,b", "0,3"):
        monkeypatch.setenv(datasets.PATCHES_ENV, bad)
        with pytest.raises(DatasetError, match=datasets.PATCHES_ENV):
            load_images(f"photos:{photo_folder}", "train", CIFAR)
