"""The Layouts page draws every static family side by side (AppTest, headless): the numbers are
the layout's own (nnz), the pixel view and the N x N mask hold exactly its allowed pairs, the
FlexAttention snippet is the layout's, and an impossible parameter is explained, not raised."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest
from test_app import APP, chart, errors, table, title, trace, values

from kernels import layouts as L
from kernels.snippets import mask_mod_source
from viz.style import NOT_ALLOWED

GRAY, RGB = "28x28 gray (Fashion-MNIST)", "32x32 RGB (CIFAR-10)"
NEW_FAMILIES = ["dilated", "sinks", "axial", "neighborhood", "block_sparse", "bigbird"]


def side_by_side(families: list[str], geometry: str = GRAY) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60).run()
    if geometry != GRAY:
        at.selectbox(key="lay_geometry").set_value(geometry).run()
    at.radio(key="lay_mode").set_value("side by side").run()
    at.multiselect(key="lay_families").set_value(families).run()
    assert not at.exception, at.exception
    return at


def png_allowed(source: str) -> np.ndarray:
    """bool [N, N]: the cells of the exact mask's PNG drawn in a part's colour."""
    rgb = np.asarray(Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1]))))
    blank = [int(NOT_ALLOWED[i : i + 2], 16) for i in (1, 3, 5)]
    return (rgb[:, :, :3] != blank).any(axis=2)


def check_drawn(at: AppTest, families: list[str], n: int, width: int, query: int) -> None:
    """Each family's row of the table, its pixel view, its mask and its snippet."""
    rows = table(at, "allowed pairs (nnz)")
    suffix = "_pair"  # side by side: a grid two columns wide, whatever the count
    assert len(rows) == len(families)
    for family, (_, row) in zip(families, rows.iterrows(), strict=True):
        layout = L.parse_layout(row["layout"])
        assert layout.family == family
        assert row["allowed pairs (nnz)"] == layout.nnz(n)
        expected = layout.dense_mask(n)[0].numpy()  # the torch path: independent of the page
        pixels = values(
            trace(chart(at, f"lay_pixels_{family}{suffix}"), "pixels")["marker"]["color"]
        )
        channels = n // (width * width)
        own_channel = expected[query].reshape(width, width, channels)[:, :, query % channels]
        np.testing.assert_array_equal(pixels.reshape(width, width) > 0, own_channel)
        mask = chart(at, f"lay_mask_{family}{suffix}")
        if n <= 1024:  # exact: one PNG cell a pair
            np.testing.assert_array_equal(png_allowed(trace(mask, "mask")["source"]), expected)
        else:  # pooled: the mean of each tile, so the tiles' sums give the pairs back
            density = values(trace(mask, "mask")["z"]).astype(float)
            tile = -(-n // density.shape[0])
            assert "pooled" in title(mask)
            rows_in = np.minimum(tile, n - tile * np.arange(density.shape[0]))
            cells = rows_in[:, None] * rows_in[None, :]
            assert round(float((density * cells).sum())) == layout.nnz(n)
    # the snippets are drawn once their expanders are opened (the first page does not load the
    # browser's syntax highlighter); st.code keeps the text but its last newline
    assert not at.code
    for family in families:
        at.session_state[f"lay_code_{family}{suffix}"] = True
    at.run()
    assert not at.exception, at.exception
    assert [c.value for c in at.code] == [
        mask_mod_source(L.parse_layout(r)).rstrip("\n") for r in rows["layout"]
    ]


def test_every_new_family_at_28x28_gray():
    for families in (NEW_FAMILIES[:3], NEW_FAMILIES[3:]):
        at = side_by_side(families)
        check_drawn(at, families, 784, 28, 14 * 28 + 14)
    at.multiselect(key="lay_families").set_value(["dense", "local", "column"]).run()
    assert not at.exception, at.exception
    check_drawn(at, ["dense", "local", "column"], 784, 28, 14 * 28 + 14)


def test_every_new_family_at_32x32_rgb():
    shown = []
    for families in (NEW_FAMILIES[:3], NEW_FAMILIES[3:]):
        at = side_by_side(families, RGB)
        check_drawn(at, families, 3072, 32, (16 * 32 + 16) * 3)
        shown += list(table(at, "allowed pairs (nnz)")["layout"])
    # sized for the colour image: a 2-D family's width is one row of 32 x 3 tokens
    assert "axial(width=96)" in shown
    assert "neighborhood(kh=4, kw=39, width=96)" in shown


def test_a_changed_parameter_redraws_that_family():
    at = side_by_side(["dilated", "bigbird"])
    at.number_input(key="lay_dilated_r").set_value(5).run()
    at.number_input(key="lay_bigbird_seed").set_value(9).run()
    assert not at.exception, at.exception
    assert list(table(at, "allowed pairs (nnz)")["layout"]) == [
        "dilated(w=28, r=5)",
        "bigbird(block=7, window=5, globals=1, random=2, seed=9)",
    ]
    check_drawn(at, ["dilated", "bigbird"], 784, 28, 14 * 28 + 14)
    assert at.query_params["lay_dilated_r"] == "5"  # the view is in the URL


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("lay_dilated_w", 0, "dilated: w must be between 1 and 784 (got 0)"),
        ("lay_bigbird_random", 17, "bigbird: random must be between 0 and 16 (got 17)"),
        ("lay_neighborhood_width", 900, "neighborhood: width must be between 1 and 784"),
    ],
)
def test_an_impossible_parameter_is_explained(key, value, message):
    family = key.split("_")[1]
    at = side_by_side([family, "strided"])
    at.number_input(key=key).set_value(value).run()
    assert not at.exception, at.exception
    assert message in errors(at)
    assert list(table(at, "allowed pairs (nnz)")["layout"]) == ["strided(l=28)"]  # still drawn


def test_a_typed_spec_draws_multihead_and_refuses_content_based_selections():
    at = side_by_side(["spec"])
    at.text_input(key="lay_spec").set_value("multihead(strided(l=28), fixed(l=28, c=2))").run()
    at.number_input(key="lay_head").set_value(1).run()  # head 1: the fixed pattern
    assert not at.exception, at.exception
    (layout,) = table(at, "allowed pairs (nnz)")["layout"]
    assert layout == "multihead(strided(l=28), fixed(l=28, c=2))"
    assert "head 1" in title(chart(at, "lay_mask_spec_pair"))
    pixels = values(trace(chart(at, "lay_pixels_spec_pair"), "pixels")["marker"]["color"])
    # pixel (14, 14) under fixed(28, 2): its own row so far (15 keys) + 2 summary keys a row above
    assert (pixels > 0).sum() == 15 + 2 * 14
    at.text_input(key="lay_spec").set_value("topk(k=8)").run()
    assert not at.exception, at.exception
    assert "content-based selection" in errors(at)


def test_families_and_parameters_come_from_a_link():
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params["lay_mode"] = "side by side"
    at.query_params["lay_families"] = ["sinks", "axial"]
    at.query_params["lay_sinks_s"] = "2"
    at.query_params["lay_axial_width"] = "14"
    at.run()
    assert not at.exception, at.exception
    assert list(table(at, "allowed pairs (nnz)")["layout"]) == [
        "sinks(s=2, w=35)",
        "axial(width=14)",
    ]
    assert at.query_params["lay_sinks_s"] == "2" and at.query_params["lay_axial_width"] == "14"


@pytest.mark.parametrize(
    "layout",
    [
        *(L.parse_layout(L.image_layout_spec(f, 96, 3072)) for f in L.FAMILY_PARAMS),
        L.fixed(96, 8, num_verts=3),
        L.multihead(L.axial(96), L.bigbird(24, 2, 1, 3, seed=4)),
        L.dilated(2**20, 2**20),  # r * w beyond int32: evaluated in int64
    ],
    ids=repr,
)
def test_the_views_are_the_layouts_mask(layout):
    """What the page draws (viz.layout_view, in int32 where exact) is the torch mask, exactly
    (pixel and N x N part codes) and pooled (the allowed share of every tile)."""
    from viz.layout_view import mask_view, part_codes

    n = 1001  # 4 x 4 tiles at max_cells below, the last one partial (1 token)
    for head in range(layout.period):
        expected = layout.dense_mask(n, layout.period)[head].numpy()
        np.testing.assert_array_equal(part_codes(layout, np.arange(n), n, head) > 0, expected)
        pooled, tile = mask_view(layout, n, head, max_cells=300)
        padded = np.zeros((1004, 1004))
        padded[:n, :n] = expected
        sums = padded.reshape(251, 4, 251, 4).sum(axis=(1, 3))
        sizes = np.minimum(4, n - 4 * np.arange(251))
        assert tile == 4
        np.testing.assert_allclose(pooled, sums / np.outer(sizes, sizes), atol=1e-6)
