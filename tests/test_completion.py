"""models/completion.py (and its command line, tools/complete.py): the kept part stays, the CLI
writes a grid, bad input is explained."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from models import ModelConfig, SparseTransformer, save_model
from models.completion import HIDDEN_GRAY, complete, hidden_view, keep_mask
from models.tokens import Geometry
from tools.complete import main


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("model")
    config = ModelConfig(height=6, width=6, n_layer=1, n_head=2, n_embd=16, layout="strided(l=6)")
    save_model(SparseTransformer(config), d)
    return d


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def test_keep_mask_rows_and_rectangles():
    g = Geometry(4, 3, 3)
    m = keep_mask(g, keep_rows=1)
    assert m.tolist() == [True] * 9 + [False] * 27
    assert keep_mask(g).sum() == 2 * 9  # default: the top half
    r = keep_mask(g, rect=(1, 2, 3, 3)).view(4, 3, 3)
    assert r[2, 1:3].all() and r.sum() == 2 * 3
    for bad in [
        dict(keep_rows=5),
        dict(rect=(0, 0, 4, 1)),
        dict(rect=(2, 1, 2, 3)),
        dict(keep_rows=1, rect=(0, 0, 1, 1)),
    ]:
        with pytest.raises(ValueError):
            keep_mask(g, **bad)


def test_hidden_view_grays_out_what_will_be_sampled():
    image = np.random.default_rng(0).integers(0, 256, (4, 3, 3), dtype=np.uint8)
    keep = keep_mask(Geometry(4, 3, 3), rect=(1, 1, 3, 3))
    shown = hidden_view(image, keep)
    kept = keep.view(4, 3, 3).numpy()  # [H, W, C]: tokens in raster order
    assert shown.shape == image.shape and shown.dtype == np.uint8
    assert (shown[kept] == image[kept]).all() and (shown[~kept] == HIDDEN_GRAY).all()


def test_kept_pixels_unchanged_in_every_sample(model_dir):
    from models import load_model

    model = load_model(model_dir)
    image = np.random.default_rng(0).integers(0, 256, (6, 6, 1), dtype=np.uint8)
    for keep in [
        keep_mask(model.config.geometry, keep_rows=2),
        keep_mask(model.config.geometry, rect=(1, 1, 4, 5)),
    ]:
        out = complete(model, image, keep, n_samples=3, seed=1)
        assert out.shape == (3, 6, 6, 1)
        flat = out.reshape(3, -1)
        assert (flat[:, keep.numpy()] == image.reshape(-1)[keep.numpy()]).all()


def test_cli_writes_a_grid(model_dir, tmp_path, capsys):
    src = tmp_path / "in.png"
    src.write_bytes(png(np.full((30, 20, 3), 200, dtype=np.uint8)))
    out = tmp_path / "grid.png"
    rc = main(
        [
            str(src),
            "--model",
            str(model_dir),
            "--keep-rows",
            "3",
            "--samples",
            "3",
            "--seed",
            "0",
            "--invert",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    assert "3 samples of 18 tokens" in capsys.readouterr().out
    with Image.open(out) as im:
        assert im.width > 3 * 6 * 3  # three enlarged samples side by side


@pytest.mark.parametrize(
    ("content", "extra", "message"),
    [
        (b"", [], "empty"),
        (b"not an image at all", [], "image"),
        (None, ["--rect", "0", "0", "9", "9"], "rectangle"),
        (None, ["--samples", "0"], "--samples"),
    ],
)
def test_cli_explains_bad_input(model_dir, tmp_path, capsys, content, extra, message):
    src = tmp_path / "in.png"
    src.write_bytes(content if content is not None else png(np.zeros((8, 8), dtype=np.uint8)))
    rc = main([str(src), "--model", str(model_dir), "--out", str(tmp_path / "o.png"), *extra])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error:") and message in err.lower()
    assert "Traceback" not in err


def test_cli_explains_missing_files(model_dir, tmp_path, capsys):
    assert main([str(tmp_path / "nope.png"), "--model", str(model_dir)]) == 2
    assert "cannot read" in capsys.readouterr().err
    src = tmp_path / "in.png"
    src.write_bytes(png(np.zeros((8, 8), dtype=np.uint8)))
    assert main([str(src), "--model", str(tmp_path / "no-model")]) == 2
    assert "does not exist" in capsys.readouterr().err
