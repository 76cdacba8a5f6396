"""Attention page: every layer and head of a trained model on one image, down to one pixel."""

from dataclasses import dataclass

import numpy as np
import streamlit as st

from analysis.attention import (
    capture_image,
    capture_memory,
    head_maps,
    query_rows,
    run_under,
    under_specs,
)
from analysis.maps import pixel_map, token_map
from analysis.metrics import head_metrics, shared_mass
from app_pages.clicks import new_click, pending_click, take_pixel_click
from app_pages.export_panel import export_panel
from app_pages.jobs import over_budget
from app_pages.models_cache import (
    every_row_of,
    fits_every_row,
    get_model,
    load_or_explain,
    model_names,
    model_path,
)
from app_pages.pickers import ChosenModel, channel_picker, choose_model_and_image, show_image
from app_pages.settings import (
    Setting,
    channel_setting,
    clamp_setting,
    declare_settings,
    image_settings,
    model_setting,
    pixel,
    share_settings,
)
from app_pages.text import as_text
from kernels.layouts import Layout, image_layout_spec, parse_layout
from kernels.selection import parse_attention
from models.tokens import pixel_to_token, token_coords
from viz.export import Exportable, content_key, model_items, safe_name
from viz.layout_view import pixel_view, pool_tiles, tile_for
from viz.maps import attention_map_figure, clicked_map_row
from viz.mosaics import clicked_tile, head_grid_figure
from viz.pixels import attention_overlay_figure, clicked_pixel, pixel_grid_figure

# the N x N map is drawn with at most this many cells a side (tile means above): 196 for the
# 784 tokens of a 28 x 28 image, 38k cells, what a ~450 px chart shows anyway (392 drew 154k
# heatmap cells, the largest part of the page's redraw in the browser)
MAP_SIDE = 196

st.title("Attention per layer and head")
st.caption(
    "Where a trained model looks. Pick a model and an image; the grid shows, for the query "
    "pixel, the attention of every layer and head over the image (each map scaled to its own "
    "maximum unless one colour scale is chosen). Click a tile to pick its layer and head, a "
    "pixel or a row of the N x N map to make it the query."
)
declare_settings(
    model_setting("att_model"),
    # the second model, side by side with the first; "none": no comparison
    model_setting("att_compare", besides=("none",)),
    *image_settings("att"),
    pixel("att_row", 14),
    pixel("att_col", 14),
    Setting("att_channel", int, 0, 0, 2),
    channel_setting("att_key_channel"),  # colour models only
    pixel("att_layer", 0),
    pixel("att_head", 0),
    Setting("att_outline", str),
    # the attention the model runs under (a spec, or per-layer specs separated by ";"; absent:
    # its own layouts): the Frontier page's points open here; the page parses and explains it
    Setting("att_under", str),
)


def own_attention() -> None:
    """Back to the model's own layouts (the button under the banner)."""
    st.session_state.pop("att_under", None)


def apply_under() -> None:
    """Run the model under the typed spec (the expander's button); empty: its own layouts."""
    typed = str(st.session_state.get("att_under_input") or "").strip()
    if typed:
        st.session_state.att_under = typed
    else:
        own_attention()


banner = st.container()  # above the columns: the attention the model runs under, when not its own
left, right = st.columns([1, 2])
with left:
    chosen, image_name, image = choose_model_and_image("att")
    model = chosen.model
    geometry = model.config.geometry
    show_image(image, image_name)

# the attention the model runs under (att_under: the Frontier page's points open here, or a
# link): one spec in every layer, or one per layer; "" = the model's own layouts
asked = str(st.session_state.get("att_under") or "").strip()
under, layer_specs = "", [repr(lay) for lay in model.layouts]
if asked:
    try:
        layer_specs = under_specs(asked, model.config.n_layer)
        run_under(model, layer_specs)  # its heads too (a multihead cycle that does not fit)
        under = layer_specs[0] if len(set(layer_specs)) == 1 else "; ".join(layer_specs)
    except ValueError as e:
        layer_specs = [repr(lay) for lay in model.layouts]
        banner.error(
            as_text(f"{chosen.name} cannot run under '{asked}': {e}. Shown: its own attention.")
        )
        banner.button("Back to its own attention", key="att_under_back", on_click=own_attention)
if under:
    shown = under if len(set(layer_specs)) == 1 else "per layer: " + under
    b1, b2 = banner.columns([4, 1], vertical_alignment="center")
    b1.info(
        f"**This model, run under {as_text(shown)}**: {as_text(chosen.name)}'s trained weights "
        "with that attention in every layer (the softmax renormalised over the keys it keeps, "
        "no retraining). Every view of this page, and its exports, show it so run.",
        icon=":material/science:",
    )
    b2.button("Back to its own attention", key="att_under_back", on_click=own_attention)
with left.expander("Run it under another attention"):
    st.text_input(
        "Attention spec (one for every layer, or one per layer separated by ;)",
        value=under,
        key="att_under_input",
        placeholder="e.g. axial(width=28), topk(k=16), strided(l=28); local(l=14)",
    )
    st.button("Run under it", key="att_under_apply", on_click=apply_under)

# a click on a pixel view (this model's, or the compared one's "_b") or on an N x N map (the
# first query of the clicked row) sets the query pixel, before its inputs are drawn
for key in ("att_pixels", "att_pixels_b"):
    take_pixel_click(key, "att_row", "att_col", geometry.width)
for key in ("att_map", "att_map_b"):
    picked = new_click(key, clicked_map_row)
    if picked is not None:
        q = min(picked * tile_for(geometry.n_tokens, MAP_SIDE), geometry.n_tokens - 1)
        st.session_state.att_row, st.session_state.att_col, st.session_state.att_channel = (
            int(v) for v in token_coords(q, geometry)
        )
for key, high in (
    ("att_row", geometry.height - 1),
    ("att_col", geometry.width - 1),
    ("att_channel", geometry.channels - 1),
):
    clamp_setting(key, 0, high)  # a value kept from another model or a link
with left:
    row = st.number_input("query row", 0, geometry.height - 1, key="att_row")
    col = st.number_input("query column", 0, geometry.width - 1, key="att_col")
    channel = st.number_input("query channel", 0, geometry.channels - 1, key="att_channel")
    # a colour pixel is three keys: the weight on one channel's, or on the pixel's three
    key_channel = channel_picker("att_key_channel", geometry, label="Keys: channel")
query = pixel_to_token(row, col, channel, geometry)


def intervention_of(path: str, under: str):
    """The Intervention of ``under`` for the model at ``path`` (none when "")."""
    from models.model import NO_INTERVENTION

    return run_under(get_model(path), under) if under else NO_INTERVENTION


@st.cache_data(max_entries=64, show_spinner=False)
def cached_rows(
    path: str, img_key: str, query: int, _image: np.ndarray, under: str = ""
) -> np.ndarray:
    """Attention rows of one query in every layer and head: [L, H, N] (cached per model, image,
    query and the attention it runs under), read from every_row_of when it fits, else from a
    capture of that row."""
    if fits_every_row(path):
        return every_row_of(path, img_key, _image, under)[:, :, query].copy()
    return query_rows(get_model(path), _image, query, intervention=intervention_of(path, under))


@st.cache_data(max_entries=16, show_spinner="Capturing the layer...")
def cached_maps(
    path: str, img_key: str, layer: int, tile: int, _image: np.ndarray, under: str = ""
) -> np.ndarray:
    """Every head's map of one layer, [H, n, n] with n = ceil(N / tile) (cached per model,
    image, layer and the attention it runs under): pooled from every_row_of when it fits (no
    forward), else captured in the pooled form (the N x N map never made)."""
    if fits_every_row(path):
        full = every_row_of(path, img_key, _image, under)[layer]  # [H, N, N]
        return np.stack([pool_tiles(m, tile) for m in full]).astype(np.float32)
    return head_maps(
        get_model(path), _image, layer, tile, intervention=intervention_of(path, under)
    )


image_sha1 = content_key(image)
rows = cached_rows(chosen.path, image_sha1, query, image, under)  # [L, H, N]
L_, H_, N = rows.shape
# per key pixel: the weight on its token of the chosen channel, or on all of its tokens
per_pixel = pixel_map(rows, geometry, key_channel)  # [L, H, h, w]
# a click on a tile of the grid picks its layer and head (before their controls are drawn)
picked_tile = new_click("att_grid", lambda event: clicked_tile(event, H_))
if picked_tile is not None and picked_tile[0] < L_ and picked_tile[1] < H_:
    st.session_state.att_layer, st.session_state.att_head = picked_tile
# no box around the chosen head: the grid then changes only with the query, and a layer or
# head switch leaves the page's largest chart as it is (not re-sent, not redrawn)
with right:
    shared = st.checkbox("one colour scale for all tiles", key="att_shared_scale")
grid_fig = head_grid_figure(
    per_pixel,
    f"pixel ({row}, {col}): all heads",
    query=(row, col),
    shared_scale=shared,
)
with right:
    st.plotly_chart(grid_fig, key="att_grid", on_select="rerun", selection_mode="points")


@dataclass
class HeadView:
    """One model's view of the chosen layer and head: its query row over the pixels and its
    N x N map, with what the captions say about it."""

    name: str
    layout: str
    row: np.ndarray  # [N]: the query's attention over the keys, in token order
    weights: np.ndarray  # [H, W, C]: the same on the image grid
    maps: np.ndarray  # [n, n], n = ceil(N / tile)


# the charts in the head views whose click moves the query: a change of the whole page
QUERY_CLICKS = {
    "att_pixels": lambda event: clicked_pixel(event, geometry.width),
    "att_pixels_b": lambda event: clicked_pixel(event, geometry.width),
    "att_map": clicked_map_row,
    "att_map_b": clicked_map_row,
}


def layer_and_head() -> tuple[int, int]:
    """The layer and head controls (one click each: a select box took two, and its list's
    animation), their values clamped first (kept from a deeper model or a link)."""
    for key, count in (("att_layer", L_), ("att_head", H_)):
        clamp_setting(key, 0, count - 1)
    c1, c2 = st.columns([2, 1])
    layer = c1.segmented_control("Layer", list(range(L_)), required=True, key="att_layer")
    head = c2.segmented_control("Head", list(range(H_)), required=True, key="att_head")
    return layer, head


def compare_and_outline(layer: int) -> tuple[str, str]:
    """The model to compare with ("none") and the layout to outline ("none") in ``layer``."""
    c3, c4 = st.columns(2)
    others = [n for n in model_names() if n != chosen.name]
    if st.session_state.get("att_compare") not in ["none", *others]:
        st.session_state.att_compare = "none"  # the model itself, or one that is gone
    compare_name = c4.selectbox(
        "Compare with",
        ["none", *others],
        key="att_compare",
        help="Another model's attention for the same image, pixel, layer and head, beside "
        "this one's on one colour scale.",
    )
    # under another attention, its layout in this layer comes first (a selection such as
    # top-k has none to outline: its keys follow the scores)
    ran = layer_specs[layer]
    ran_static = ran if isinstance(parse_attention(ran), Layout) else None
    cfg = model.config
    outline_choices = list(
        dict.fromkeys(
            ["none", *([ran_static] if ran_static else []), repr(model.layouts[layer])]
            + [image_layout_spec(k, cfg.row_stride, cfg.block_size) for k in ("strided", "fixed")]
        )
    )
    if st.session_state.get("att_under_outlined") != (under, layer):
        # a new attention to run under (a Frontier click, a link): its layout outlined at first
        st.session_state.att_under_outlined = (under, layer)
        if under:
            st.session_state.att_outline = ran_static or "none"
    if st.session_state.get("att_outline") not in outline_choices:
        st.session_state.att_outline = "none"  # kept from another layer, model or link
    return compare_name, c3.selectbox("Outline a layout", outline_choices, key="att_outline")


def head_view(
    chosen_model: ChosenModel, rows_: np.ndarray, layer: int, head: int, under_: str = ""
) -> HeadView:
    """The chosen layer and head of a model whose rows [L, H, N] are ``rows_``, run under
    ``under_`` ("": its own layouts)."""
    m = chosen_model.model
    tile = tile_for(N, MAP_SIDE)
    return HeadView(
        chosen_model.name,
        layer_specs[layer] if under_ else repr(m.layouts[layer]),
        rows_[layer, head],
        token_map(rows_[layer, head], geometry),
        cached_maps(chosen_model.path, image_sha1, layer, tile, image, under_)[head],
    )


def pixel_figure(v: HeadView, layer: int, head: int, how: dict):
    """Where the query pixel looks in one view: a heat map or the weights over the image,
    with the chosen layout outlined. ``how``: view, zmax (one scale for two models), outline,
    named (the model's name in the title)."""
    title = (f"{v.name}: " if how["named"] else "") + (
        f"layer {layer}, head {head}: where pixel ({row}, {col}) looks"
    )
    # numbers, not strings: cheaper to send and to draw (the weight of each channel)
    hover = dict(
        hover_values=v.weights,
        hover_template="row %{y}, col %{x}, weight "
        + ", ".join(f"%{{customdata[{k}]:.4f}}" for k in range(geometry.channels)),
    )
    weights = pixel_map(v.row, geometry, key_channel)
    if how["view"] == "over the image":
        return attention_overlay_figure(
            image.astype(np.float32).mean(axis=2) / 255.0,
            weights,
            title=title,
            query=(row, col),
            **hover,
            outline=how["outline"],
        )
    return pixel_grid_figure(
        weights,
        title=title,
        query=(row, col),
        **hover,
        colorscale="Viridis",
        zmin=0,
        zmax=how["zmax"],
        colorbar_title="weight",
        outline=how["outline"],
    )


def other_model(name: str, layer: int, head: int) -> tuple[ChosenModel, np.ndarray] | None:
    """The model to compare with and its rows for this query, [L, H, N]; None (explained)
    when it cannot be loaded or cannot show this image, layer and head."""
    other = load_or_explain(name)
    if other is None:
        return None
    cfg = other.config
    if cfg.geometry != geometry:
        st.info(
            as_text(
                f"'{name}' reads {cfg.geometry.height} x {cfg.geometry.width} x "
                f"{cfg.geometry.channels} images, this image is {geometry.height} x "
                f"{geometry.width} x {geometry.channels}: pick a model of the same geometry."
            )
        )
        return None
    if layer >= cfg.n_layer or head >= cfg.n_head:
        st.info(
            as_text(
                f"'{name}' has {cfg.n_layer} layers of {cfg.n_head} heads: it has no layer "
                f"{layer}, head {head}."
            )
        )
        return None
    path = str(model_path(name))
    return ChosenModel(name, path, other), cached_rows(path, image_sha1, query, image)


def draw_one(mine: HeadView, pixel_fig, map_fig, words: dict) -> None:
    """One model's pixel view and N x N map side by side, with their captions."""
    a, b = st.columns(2)
    with a:
        st.plotly_chart(pixel_fig, key="att_pixels", on_select="rerun", selection_mode="points")
        own = repr(model.layouts[words["layer"]])
        layout_words = (
            f"This layer runs under {as_text(mine.layout)} (its own layout: {as_text(own)})."
            if under
            else f"The model's own layout is {as_text(mine.layout)}."
        )
        st.caption(f"{words['query']} {words['outlined']} {layout_words}")
    with b:
        st.plotly_chart(map_fig, key="att_map", on_select="rerun", selection_mode="points")
        st.caption(words["map"])


def draw_two(views: list[HeadView], pixel_figs: list, map_figs: list, words: dict) -> None:
    """Two models' pixel views and maps, their shared weight and each one's statistics."""
    mine, theirs = views
    stats = [head_metrics(v.row.reshape(1, 1, -1), np.array([query]), geometry) for v in views]
    st.markdown(
        as_text(
            f"{mine.name} and {theirs.name}, layer {words['layer']}, head {words['head']}, "
            f"pixel ({row}, {col}): the two rows share "
            f"{float(shared_mass(mine.row, theirs.row)):.0%} of their weight."
        )
    )
    a, b = st.columns(2)
    for column, v, fig, m, key in (
        (a, mine, pixel_figs[0], stats[0], "att_pixels"),
        (b, theirs, pixel_figs[1], stats[1], "att_pixels_b"),
    ):
        with column:
            st.plotly_chart(fig, key=key, on_select="rerun", selection_mode="points")
            st.caption(
                as_text(
                    f"{v.name} ({v.layout}): entropy {float(m['entropy'][0]):.2f} bits, 90% of "
                    f"the weight on {float(m['k90'][0]):.0f} keys, mean distance "
                    f"{float(m['distance'][0]):.1f} px."
                )
                + f" {words['outlined']} One colour scale for both."
            )
    a, b = st.columns(2)
    for column, fig, key in ((a, map_figs[0], "att_map"), (b, map_figs[1], "att_map_b")):
        with column:
            st.plotly_chart(fig, key=key, on_select="rerun", selection_mode="points")
    st.caption(f"{words['query']} {words['map']}")


def export_items(views: list[HeadView], pixel_figs, map_figs, words: dict) -> list[Exportable]:
    """The downloads: the grid and each view's pixel figure and map, with their data."""
    layer, head, tile = words["layer"], words["head"], tile_for(N, MAP_SIDE)
    meta = {
        "model": chosen.name,
        "image": image_name,
        "image_sha1": image_sha1,
        "layer": layer,
        "head": head,
        "query_pixel": [row, col],
        "query_channel": channel,
        "layout": views[0].layout,
        "outline": words["outline_spec"],
        "compared_with": words["compare_name"],
        "under": under or "its own layouts",
    }
    # under another attention: named in every file, e.g. dense-under-axial-width-28-_...
    model_stem = safe_name(chosen.name) + (f"-under-{safe_name(under)[:80]}" if under else "")
    items = [
        Exportable(
            f"{model_stem}_{safe_name(image_name)}_r{row}c{col}_grid",
            grid_fig,
            {"maps": per_pixel},
            meta,
        )
    ]
    for k, (v, pixel_fig, map_fig) in enumerate(zip(views, pixel_figs, map_figs, strict=True)):
        stem = f"{model_stem if k == 0 else safe_name(v.name)}_{safe_name(image_name)}"
        m = (
            meta
            if k == 0
            else {
                **meta,
                "model": v.name,
                "layout": v.layout,
                "compared_with": chosen.name,
                "under": "its own layouts",
            }
        )
        items += [
            Exportable(
                f"{stem}_L{layer}H{head}_r{row}c{col}_pixel", pixel_fig, {"weights": v.weights}, m
            ),
            Exportable(
                f"{stem}_L{layer}H{head}_head",
                map_fig,
                {"probs": v.maps, "tile": np.array(tile)},
                m,
            ),
        ]
    return items


def every_layer_and_head() -> None:
    """The button that prepares every layer x head of this model and image as files, and
    their export once prepared."""
    if st.button("Prepare every layer x head (zip)", key="att_batch"):
        cfg = model.config
        refusal = over_budget(  # every N x N map of every layer: refused when too big
            "Every layer x head", capture_memory(cfg, cfg.n_layer, cfg.n_head)
        )
        if refusal:
            st.error(refusal)
        else:
            attention = capture_image(
                model, image, query=(row, col), intervention=intervention_of(chosen.path, under)
            )
            st.session_state.att_batch_items = model_items(
                attention,
                model_name=f"{chosen.name} under {under}" if under else chosen.name,
                image_name=image_name,
            )
    if st.session_state.get("att_batch_items"):
        export_panel(
            st.session_state.att_batch_items,
            "att_batch_export",
            "Export the whole batch",
            default=("png", "svg", "pdf", "npz"),  # HTML: 5 MB a figure (plotly.js inlined)
        )


@st.fragment
def head_views() -> None:
    """Everything that follows the layer and head: a switch of either reruns only this part
    (the grid and the inputs above are not rebuilt, sent or drawn again). A click that moves
    the query (a pixel, a row of the map) reruns the whole page, before anything is drawn."""
    if any(pending_click(key, read) for key, read in QUERY_CLICKS.items()):
        st.rerun()
    layer, head = layer_and_head()
    compare_name, outline_spec = compare_and_outline(layer)
    outline = None
    if outline_spec != "none":
        outline = pixel_view(parse_layout(outline_spec), geometry, query, head) > 0
    view = st.radio(
        "Show the head's weights",
        ["as a heat map", "over the image"],
        key="att_view",
        horizontal=True,
    )
    views = [head_view(chosen, rows, layer, head, under)]
    if compare_name != "none" and (found := other_model(compare_name, layer, head)):
        views.append(head_view(*found, layer, head))
    two = len(views) > 1
    # two models: one colour scale, so the sharper head looks sharper
    zmax = max(float(pixel_map(v.row, geometry, key_channel).max()) for v in views) if two else None
    how = dict(view=view, zmax=zmax, outline=outline, named=two)
    pixel_figs = [pixel_figure(v, layer, head, how) for v in views]
    tile = tile_for(N, MAP_SIDE)
    map_title = f"layer {layer}, head {head}: N x N map" + (
        f" ({tile}x{tile} mean)" if tile > 1 else ""
    )
    map_figs = [
        attention_map_figure(v.maps, tile, (f"{v.name}: " if two else "") + map_title)
        for v in views
    ]
    r_, c_, ch_ = token_coords(query, geometry)
    words = dict(
        layer=layer,
        head=head,
        outline_spec=outline_spec,
        compare_name=compare_name,
        outlined="No layout outlined."
        if outline_spec == "none"
        else f"Orange squares: the keys {as_text(outline_spec)} allows.",
        query=f"Query token {query} (row {r_}, column {c_}, channel {ch_}).",
        map="Row i is query i's attention over keys j <= i; colour is log10 of the weight.",
    )
    if two:
        draw_two(views, pixel_figs, map_figs, words)
    else:
        draw_one(views[0], pixel_figs[0], map_figs[0], words)
    e1, e2 = st.columns(2)
    with e1:
        export_panel(
            export_items(views, pixel_figs, map_figs, words), "att_export", "Export these figures"
        )
    with e2:
        every_layer_and_head()
    share_settings("att", script=False)  # a switch here runs no app.py: the URL follows it


head_views()
