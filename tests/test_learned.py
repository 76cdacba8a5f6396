"""analysis/learned.py: a model's captured attention scored against layouts, and the search."""

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from analysis.learned import (
    analyze_layouts,
    analyze_model,
    layout_search,
    pick_images,
    search_candidates,
)
from kernels import layouts as L
from models import ModelConfig, SparseTransformer
from models.tokens import Geometry


def tiny_model(layout):
    torch.manual_seed(0)
    return SparseTransformer(ModelConfig.from_name("fmnist-tiny", layout=layout)).eval()


def fake_fashion_mnist(folder: Path, count: int) -> np.ndarray:
    """A Fashion-MNIST test split of ``count`` random images in ``folder`` (the real file
    format); returns the images [count, 28, 28]."""
    folder.mkdir(parents=True, exist_ok=True)
    imgs = np.random.default_rng(0).integers(0, 256, (count, 28, 28), dtype=np.uint8)
    with gzip.open(folder / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">IIII", 0x803, count, 28, 28) + imgs.tobytes())
    with gzip.open(folder / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">II", 0x801, count) + bytes(count))
    return imgs


def test_a_sparse_model_puts_no_mass_outside_its_layout():
    tokens = torch.randint(0, 256, (2, 784), generator=torch.Generator().manual_seed(0))
    model = tiny_model("strided(l=28)")
    rows = analyze_model(model, tokens, L.strided(28))
    assert len(rows) == 4 and all(r["coverage"] == pytest.approx(1) for r in rows)
    dense_rows = analyze_model(tiny_model("dense()"), tokens, L.strided(28))
    assert all(r["coverage"] < 0.99 for r in dense_rows)
    search = layout_search(model, tokens, [L.strided(28), L.strided(14), L.fixed(28, 2)])
    by = {r["layout"]: r for r in search}
    assert by["strided(l=28)"]["coverage"] == pytest.approx(1)
    assert by["strided(l=14)"]["coverage"] < 1


def test_several_layouts_from_one_capture_equal_one_at_a_time():
    tokens = torch.randint(0, 256, (5, 784), generator=torch.Generator().manual_seed(1))
    model = tiny_model("dense()")
    layouts = [L.strided(28), L.fixed(28, 2), L.strided(14)]
    one_by_one = [analyze_model(model, tokens, lay, batch=2) for lay in layouts]
    for workers in (1, 3):  # batches of 2, 2, 1 measured in threads: the same tables, in order
        assert analyze_layouts(model, tokens, layouts, batch=2, workers=workers) == one_by_one
    # only coverage depends on the layout
    pairs = list(zip(one_by_one[0], one_by_one[1], strict=True))
    same = {k for k in one_by_one[0][0] if not k.startswith(("coverage", "layout"))}
    assert all(r0[k] == r1[k] for r0, r1 in pairs for k in same)
    assert any(r0["coverage"] != r1["coverage"] for r0, r1 in pairs)


def test_pick_images_spreads_over_the_split(tmp_path):
    imgs = fake_fashion_mnist(tmp_path / "data", 5)
    tokens = pick_images(f"fashion-mnist:{tmp_path / 'data'}", Geometry(28, 28, 1), 3)
    assert tokens.shape == (3, 784) and tokens.dtype == torch.int64
    for t, i in zip(tokens, (0, 2, 4), strict=True):  # the first, middle and last image
        assert np.array_equal(t.numpy(), imgs[i].reshape(-1))


def test_search_candidates_are_around_one_image_row():
    names = {repr(c) for c in search_candidates(Geometry(28, 28, 1))}
    assert {"strided(l=14)", "strided(l=28)", "strided(l=56)", "strided(l=84)"} <= names
    assert {"fixed(l=28, c=1)", "fixed(l=28, c=2)", "fixed(l=28, c=3)", "fixed(l=28, c=7)"} <= names
    assert all(not n.startswith("fixed") or "c=" in n for n in names)
