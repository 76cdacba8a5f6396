"""The app's pages and their state through Streamlit's AppTest: uploads as the model sees them,
settings that survive page switches and live in the URL, captions and hover texts."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[1] / "app.py")


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def picker_app():
    """A page of one image picker (prefix "t", 28 x 28 gray); the pick lands in state."""

    def script():
        import streamlit as st

        from app_pages.pickers import pick_image
        from models.tokens import Geometry

        st.session_state.picked = pick_image("t", Geometry(28, 28, 1))

    at = AppTest.from_function(script, default_timeout=60).run()
    at.radio(key="t_source").set_value("upload").run()
    return at


def test_letterbox_padding_is_black_after_invert_in_either_order():
    """A 3:2 photo letterboxed into 28 x 28 has 4 padding rows above and below: they are the
    model's background (0) whether Invert is ticked before or after Letterbox."""
    data = png(Image.new("L", (42, 28), 100))  # 3:2, mid gray
    for order in (("fit", "invert"), ("invert", "fit")):
        at = picker_app()
        at.file_uploader(key="t_upload").set_value(("photo.png", data, "image/png")).run()
        for step in order:
            if step == "fit":
                at.radio(key="t_fit").set_value("letterbox").run()
            else:
                at.checkbox(key="t_invert").check().run()
        assert not at.exception, at.exception
        _, image = at.session_state["picked"]
        assert image.shape == (28, 28, 1)
        assert (image[:4] == 0).all() and (image[-4:] == 0).all(), order  # padding: black
        assert (image[6:22] == 155).all()  # the picture: inverted
        at.checkbox(key="t_invert").uncheck().run()
        _, image = at.session_state["picked"]
        assert (image[:4] == 0).all() and (image[6:22] == 100).all()


def test_light_background_upload_is_detected():
    """A dark garment on white: the border is light, and the page says to invert it."""
    img = Image.new("L", (56, 56), 245)
    img.paste(30, (14, 10, 42, 50))
    at = picker_app()
    at.file_uploader(key="t_upload").set_value(("white.png", png(img), "image/png")).run()
    assert not at.exception
    assert "light background" in "\n".join(w.value for w in at.warning)
    at.checkbox(key="t_invert").check().run()
    assert not at.warning
    dark = Image.new("L", (56, 56), 0)
    at.file_uploader(key="t_upload").set_value(("dark.png", png(dark), "image/png")).run()
    assert "already has a dark background" in "\n".join(w.value for w in at.warning)
    at.checkbox(key="t_invert").uncheck().run()
    assert not at.warning


def test_border_mean_of_the_picture_before_padding():
    from models.tokens import Geometry
    from models.uploads import border_mean, prepare_upload

    assert border_mean(np.full((5, 5), 7, np.uint8)) == 7
    ring = np.zeros((4, 4, 3), np.uint8)
    ring[1:3, 1:3] = 255  # only the inside is bright
    assert border_mean(ring) == 0
    wide = png(Image.new("L", (60, 20), 250))  # letterboxed: padding black, border light
    out = prepare_upload(wide, Geometry(28, 28, 1), fit="letterbox", background=(0, 0, 0))
    assert out.image[0].max() == 0 and out.border == 250


def layouts_app() -> AppTest:
    return AppTest.from_file(APP, default_timeout=60).run()


def test_keys_of_query_counts_every_channel():
    """32 x 32 RGB, query token 956 (pixel (9, 30), channel 2) under strided(l=96): 105 keys
    over all channels, 41 of them in the channel the pixel view shows."""
    from test_app import table

    at = layouts_app()
    at.selectbox(key="lay_geometry").set_value("32x32 RGB (CIFAR-10)").run()
    at.number_input(key="lay_row").set_value(9).run()
    at.number_input(key="lay_col").set_value(30).run()
    at.number_input(key="lay_channel").set_value(2).run()
    assert not at.exception, at.exception
    row = table(at, "keys of query 956").iloc[0]
    assert row["keys of query 956"] == 105
    assert row["of them in channel 2 (shown)"] == 41


def test_pooled_maps_hover_names_tile_ranges(tmp_path, monkeypatch):
    """A pooled cell is a range of queries and keys, not a fractional index."""
    from test_app import attention_app, chart, trace, values

    at = layouts_app()
    at.selectbox(key="lay_geometry").set_value("32x32 RGB (CIFAR-10)").run()
    # a cell's coordinates are its tiles' names (category axes): the hover shows them
    mask = trace(chart(at, "lay_mask_strided"), "mask")  # 3072 tokens in 12 x 12 tiles
    assert mask["hovertemplate"].startswith("%{y}, %{x}: ")
    assert (mask["y"][33], mask["x"][24]) == ("queries 396-407", "keys 288-299")
    assert mask["y"][-1] == "queries 3060-3071"
    at = attention_app(tmp_path, monkeypatch)  # N = 784 drawn as 196 x 196 tiles of 4
    # the attention map's rows (its hover by row): map row 100 is queries 400-403
    rows = trace(chart(at, "att_map"), "queries")
    assert rows["hovertemplate"].startswith("queries %{customdata[0]}-%{customdata[1]}: most")
    assert list(values(rows["customdata"])[100, :2]) == [400, 403]


def test_outline_none_caption(tmp_path, monkeypatch):
    from test_app import attention_app

    at = attention_app(tmp_path, monkeypatch)
    captions = "\n".join(c.value for c in at.caption)
    assert "No layout outlined." in captions and "keys none allows" not in captions
    at.selectbox(key="att_outline").set_value("strided(l=28)").run()
    captions = "\n".join(c.value for c in at.caption)
    assert "Orange squares: the keys strided(l=28) allows." in captions


def test_image_grid_wraps_samples_into_lines():
    from viz.grid import image_grid

    tiles = [np.full((28, 28, 1), k * 10, np.uint8) for k in range(10)]
    grid = image_grid([("", tiles)], label_width=0, scale=4, pad=4, columns=4)
    assert grid.size == (4 + 4 * (112 + 4), 4 + 3 * (112 + 4))  # 4 + 4 + 2 on three lines
    arr = np.asarray(grid)
    assert arr[4 + 2 * 116, 4 + 116, 0] == 90  # sample 9: third line, second place
    assert image_grid([("a", tiles[:2])], columns=4).size == image_grid([("a", tiles[:2])]).size


def test_complete_downloads_do_not_rerun(tmp_path, monkeypatch):
    """Every download button of the Complete page and of its export panel has
    on_click="ignore": quick clicks on several of them must not cancel each other's download
    (a rerun per click did)."""
    from test_app import complete_app

    at = complete_app(tmp_path, monkeypatch)
    at.slider(key="cmp_samples").set_value(2).run()
    at.slider(key="cmp_rows").set_value(27).run()
    at.button(key="cmp_run").click().run()
    at.multiselect(key="cmp_look_export_formats").set_value(["npz"]).run()
    at.button(key="cmp_look_export_prepare").click().run()
    assert not at.exception, at.exception
    buttons = at.get("download_button")
    labels = [b.proto.label for b in buttons]
    assert "PNG" in labels and "NPZ (data)" in labels and "All 1 files (zip)" in labels
    assert all(b.proto.ignore_rerun for b in buttons), labels


def test_pages_explain_themselves(tmp_path, monkeypatch):
    """The first page says what the app is and how to start; the Learned page explains the
    metrics and head types where it shows them (not "see a file"); rectangle mode says that
    pixels above / left of the rectangle are sampled without seeing it."""
    from test_app import complete_app, tiny_models

    at = layouts_app()
    text = "\n".join(m.value for m in at.markdown)
    assert "Sparse Transformer Explorer" in text and "Start here" in text
    monkeypatch.setenv("SPARSE_EXPLORER_MODELS", str(tiny_models(tmp_path)))
    at = AppTest.from_file(APP, default_timeout=120)
    at.switch_page("app_pages/learned_vs_prescribed.py").run()
    text = "\n".join(m.value for m in at.markdown) + "\n".join(c.value for c in at.caption)
    for word in ("**k90**", "**entropy**", "**coverage**", "**local**", "**global**"):
        assert word in text
    assert "analysis/metrics.py" not in text
    at = complete_app(tmp_path / "c", monkeypatch)
    at.radio(key="cmp_keep").set_value("rectangle").run()
    assert "sampled without seeing it" in "\n".join(c.value for c in at.caption)


def test_search_labels_near_one_density_do_not_overlap():
    """Four candidates at density ~0.105 with close coverage: four different label spots."""
    from viz.charts import label_positions, search_figure

    xs = [0.1054, 0.1045, 0.1057, 0.1057, 0.0713, 0.3293]
    ys = [0.80, 0.82, 0.81, 0.79, 0.5, 0.95]
    texts = ["l=14", "l=28", "l=28, c=2", "l=56, c=2", "l=28, c=1", "l=84, c=21"]
    spots = label_positions(xs, ys, texts, width_px=700, height_px=430)
    assert len(set(spots[:4])) == 4
    rows = [
        {"layout": f"{'strided' if i < 2 else 'fixed'}({t})", "density": x, "coverage": y}
        for i, (x, y, t) in enumerate(zip(xs, ys, texts, strict=True))
    ]
    fig = search_figure(rows, "coverage vs density")
    got = [p for tr in fig.data for p in tr.textposition]
    assert len(set(got[:4])) == 4


def test_complete_settings_survive_source_switch_cleared_models_and_other_pages(
    tmp_path, monkeypatch
):
    """Rows, samples, seed and models stay what the person set when the image source is
    switched (the page stops while there is no upload), when the models are cleared, and when
    another page is opened and this one again; the results of a completion stay too."""
    from test_app import complete_app

    at = complete_app(tmp_path, monkeypatch)  # models: ["dense"]
    at.slider(key="cmp_rows").set_value(26).run()
    at.slider(key="cmp_samples").set_value(3).run()
    at.number_input(key="cmp_seed").set_value(5).run()
    at.button(key="cmp_run").click().run()
    assert not at.exception, at.exception

    def same() -> None:
        assert at.multiselect(key="cmp_models").value == ["dense"]
        assert at.slider(key="cmp_rows").value == 26
        assert at.slider(key="cmp_samples").value == 3
        assert at.number_input(key="cmp_seed").value == 5
        assert "**dense**" in [m.value for m in at.markdown]  # the earlier results, shown
        assert "Press Complete to sample." not in [i.value for i in at.info]

    same()
    at.radio(key="cmp_source").set_value("upload").run()
    at.radio(key="cmp_source").set_value("test image").run()
    same()
    at.multiselect(key="cmp_models").set_value([]).run()
    at.multiselect(key="cmp_models").set_value(["dense"]).run()
    same()
    at.switch_page("app_pages/layouts.py").run()
    at.switch_page("app_pages/complete.py").run()
    assert not at.exception, at.exception
    same()


def test_settings_live_in_the_url_and_come_back_from_it(tmp_path, monkeypatch):
    """The page's settings are written to st.query_params; a new session opened with them
    (a shared link, a reload) shows the same view. Values a widget cannot take are ignored."""
    from test_app import attention_app, tiny_models

    at = attention_app(tmp_path, monkeypatch)
    at.number_input(key="att_row").set_value(3).run()
    at.button_group(key="att_head").set_value(1).run()
    assert at.query_params["att_row"] == "3" and at.query_params["att_head"] == "1"
    assert at.query_params["att_model"] == "dense"

    monkeypatch.setenv("SPARSE_EXPLORER_MODELS", str(tiny_models(tmp_path / "again")))
    fresh = AppTest.from_file(APP, default_timeout=120)
    for key, value in {"att_row": "3", "att_col": "99", "att_head": "1", "att_model": "no"}.items():
        fresh.query_params[key] = value
    fresh.switch_page("app_pages/attention.py").run()
    assert not fresh.exception, fresh.exception
    assert fresh.number_input(key="att_row").value == 3
    assert fresh.number_input(key="att_col").value == 27  # 99: brought into the image
    assert fresh.button_group(key="att_head").value == 1
    assert fresh.selectbox(key="att_model").value == "dense"  # no such model: the default

    lay = AppTest.from_file(APP, default_timeout=60)
    lay.query_params["lay_mode"] = "side by side"
    lay.query_params["lay_l"] = "14"
    lay.run()
    assert not lay.exception, lay.exception
    assert lay.radio(key="lay_mode").value == "side by side"
    assert lay.number_input(key="lay_l").value == 14
    assert lay.query_params["lay_l"] == "14"


def test_head_switch_leaves_the_all_heads_grid_unchanged(tmp_path, monkeypatch):
    """The grid is the page's largest chart: a layer or head switch must not re-send it (its
    spec stays byte-identical, so the browser keeps it), a new query must."""
    from test_app import attention_app

    at = attention_app(tmp_path, monkeypatch)
    before = at.get_by_key("att_grid").proto.spec
    at.button_group(key="att_head").set_value(1).run()
    at.button_group(key="att_layer").set_value(1).run()
    assert at.get_by_key("att_grid").proto.spec == before
    at.number_input(key="att_row").set_value(5).run()
    assert at.get_by_key("att_grid").proto.spec != before


def test_each_figure_is_built_once_for_what_it_shows(tmp_path, monkeypatch):
    """A new query builds the grid once (the head views export it too) and not the N x N map,
    which shows the same layer and head; a head switch builds the map, not the grid."""
    from test_app import attention_app

    import viz.maps
    import viz.mosaics

    built = {"grid": 0, "map": 0}

    def counted(name, build):
        def wrapper(*args, **kwargs):
            built[name] += 1
            return build(*args, **kwargs)

        return wrapper

    at = attention_app(tmp_path, monkeypatch)
    map_before = at.get_by_key("att_map").proto.spec
    # the page imports them at each run: the counting ones from now on
    monkeypatch.setattr(
        viz.mosaics, "head_grid_figure", counted("grid", viz.mosaics.head_grid_figure)
    )
    monkeypatch.setattr(
        viz.maps, "attention_map_figure", counted("map", viz.maps.attention_map_figure)
    )
    at.number_input(key="att_row").set_value(5).run()
    assert not at.exception
    assert built == {"grid": 1, "map": 0}
    assert at.get_by_key("att_map").proto.spec == map_before
    assert "pixel (5, 14)" in at.get_by_key("att_grid").proto.spec
    at.button_group(key="att_head").set_value(1).run()
    assert built == {"grid": 1, "map": 1}
    assert at.get_by_key("att_map").proto.spec != map_before
