"""Attention page: every layer and head of a trained model on one image, down to one pixel."""

import numpy as np
import streamlit as st

from analysis.attention import (
    run_under,
    under_specs,
)
from analysis.maps import pixel_map, token_map
from app_pages.attention_views import (
    MAP_SIDE,
    HeadView,
    Shown,
    cached_maps,
    cached_rows,
    compared_model,
    draw_maps,
    draw_pixel_views,
    every_layer_and_head,
    export_items,
    kept,
    pixel_figure,
    rerun_head_views,
)
from app_pages.clicks import new_click
from app_pages.export_panel import export_panel
from app_pages.models_cache import (
    model_names,
)
from app_pages.pickers import (
    ChosenModel,
    channel_picker,
    choose_model_and_image,
    picked_channel,
    show_image,
)
from app_pages.settings import (
    Setting,
    channel_setting,
    clamp_setting,
    declare_settings,
    image_settings,
    model_setting,
    pixel,
    view_fragment,
)
from app_pages.text import as_text
from kernels.layouts import Layout, image_layout_spec, parse_layout
from kernels.selection import parse_attention
from models.tokens import pixel_to_token, token_coords
from viz.export import content_key
from viz.layout_view import pixel_view, tile_for
from viz.maps import attention_map_figure, clicked_map_row
from viz.mosaics import clicked_tile, head_grid_figure
from viz.pixels import clicked_pixel

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
image_sha1 = content_key(image)

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

# the charts whose click moves the query: a pixel view (this model's, or the compared one's
# "_b") gives its pixel, an N x N map the first query of the clicked row
QUERY_CLICKS = {
    "att_pixels": lambda event: clicked_pixel(event, geometry.width),
    "att_pixels_b": lambda event: clicked_pixel(event, geometry.width),
    "att_map": clicked_map_row,
    "att_map_b": clicked_map_row,
}


def take_clicks() -> None:
    """A click not yet taken sets what it picks, before the widgets that show it are drawn: a
    pixel or a map row the query, a tile of the grid its layer and head. Each part of the page
    takes it first (whichever of them a click reruns runs first)."""
    for key, read in QUERY_CLICKS.items():
        picked = new_click(key, read)
        if picked is not None and key.startswith("att_map"):
            q = min(picked * tile_for(geometry.n_tokens, MAP_SIDE), geometry.n_tokens - 1)
            *picked, st.session_state.att_channel = (int(v) for v in token_coords(q, geometry))
        if picked is not None:
            st.session_state.att_row, st.session_state.att_col = picked
    n_layer, n_head = model.config.n_layer, model.config.n_head
    tile = new_click("att_grid", lambda event: clicked_tile(event, n_head))
    if tile is not None and tile[0] < n_layer and tile[1] < n_head:
        st.session_state.att_layer, st.session_state.att_head = tile


def shown_now() -> Shown:
    """The model, image and query the page shows, the query as its inputs hold it now."""
    row, col, channel = (int(st.session_state[k]) for k in ("att_row", "att_col", "att_channel"))
    query = pixel_to_token(row, col, channel, geometry)
    keys = picked_channel("att_key_channel", geometry)
    return Shown(chosen, image, image_name, image_sha1, row, col, channel, query, keys, under)


def query_grid(s: Shown, shared: bool):
    """The all-heads grid of the query and its maps [L, H, h, w] (the head views export them
    too: built once for a query)."""

    def build():
        rows = cached_rows(s.chosen.path, s.image_sha1, s.query, s.image, s.under)  # [L, H, N]
        # per key pixel: the weight on its token of the chosen channel, or on all of its tokens
        per_pixel = pixel_map(rows, geometry, s.key_channel)  # [L, H, h, w]
        title = f"pixel ({s.row}, {s.col}): all heads"
        fig = head_grid_figure(per_pixel, title, query=(s.row, s.col), shared_scale=shared)
        return fig, per_pixel

    key = (s.chosen.path, s.image_sha1, s.query, s.key_channel, s.under, shared)
    return kept("att_grid_kept", key, build)


# (the pixel views write the page's settings to the URL: every rerun of these parts reruns them
# too, but for the grid's colour scale, which the URL does not hold)
@view_fragment("att", key="att_query", writes_url=False)
def query_inputs() -> None:
    """The query pixel's inputs: a part of the page that a click on a pixel or a map row reruns
    with the grid and the pixel views. A typed query reruns the whole page (after a rerun of
    named parts, Streamlit's AppTest, which the tests type with, holds those parts alone)."""
    take_clicks()
    for label, key, high in (
        ("query row", "att_row", geometry.height - 1),
        ("query column", "att_col", geometry.width - 1),
        ("query channel", "att_channel", geometry.channels - 1),
    ):
        clamp_setting(key, 0, high)  # a value kept from another model or a link
        st.number_input(label, 0, high, key=key, on_change=st.rerun)
    # a colour pixel is three keys: the weight on one channel's, or on the pixel's three
    channel_picker("att_key_channel", geometry, label="Keys: channel", on_change=st.rerun)


@view_fragment("att", key="att_grid", writes_url=False)
def all_heads_grid() -> None:
    """The grid of every layer and head for the query; a click on a tile picks its layer and
    head (the head views alone rerun). No box around the chosen head: the grid then changes
    only with the query, and a layer or head switch leaves the page's largest chart as it is."""
    take_clicks()
    shared = st.checkbox("one colour scale for all tiles", key="att_shared_scale")
    fig, _ = query_grid(shown_now(), shared)
    st.plotly_chart(fig, key="att_grid", on_select=rerun_head_views, selection_mode="points")


with left:
    query_inputs()
with right:
    all_heads_grid()


def layer_and_head(n_layer: int, n_head: int) -> tuple[int, int]:
    """The layer and head controls (one click each: a select box took two, and its list's
    animation), their values clamped first (kept from a deeper model or a link)."""
    for key, count in (("att_layer", n_layer), ("att_head", n_head)):
        clamp_setting(key, 0, count - 1)
    c1, c2 = st.columns([2, 1])
    layer = c1.segmented_control("Layer", list(range(n_layer)), required=True, key="att_layer")
    head = c2.segmented_control("Head", list(range(n_head)), required=True, key="att_head")
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
    tile = tile_for(geometry.n_tokens, MAP_SIDE)
    return HeadView(
        chosen_model.name,
        layer_specs[layer] if under_ else repr(m.layouts[layer]),
        rows_[layer, head],
        token_map(rows_[layer, head], geometry),
        cached_maps(chosen_model.path, image_sha1, layer, tile, image, under_)[head],
    )


@view_fragment("att", key="att_views")
def head_views() -> None:
    """Everything that follows the layer and head: a switch of either reruns only this part
    (the grid and the inputs above are not rebuilt, sent or drawn again); a new query reruns
    the pixel views within it, not the N x N maps."""
    take_clicks()
    layer, head = layer_and_head(model.config.n_layer, model.config.n_head)
    compare_name, outline_spec = compare_and_outline(layer)
    view = st.radio(
        "Show the head's weights",
        ["as a heat map", "over the image"],
        key="att_view",
        horizontal=True,
    )
    # each model shown and the attention it runs under (the compared one: its own layouts)
    runs = [(chosen, under)]
    if compare_name != "none" and (other := compared_model(compare_name, geometry, layer, head)):
        runs.append((other, ""))
    two = len(runs) > 1
    tile = tile_for(geometry.n_tokens, MAP_SIDE)
    title = f"layer {layer}, head {head}: N x N map" + (
        f" ({tile}x{tile} mean)" if tile > 1 else ""
    )
    # kept while the layer and head stay: a new query leaves them as they are
    map_figs = [
        kept(
            f"att_map_kept_{k}",
            (m.name, image_sha1, u, layer, head, tile, two),
            lambda m=m, u=u: attention_map_figure(
                cached_maps(m.path, image_sha1, layer, tile, image, u)[head],
                tile,
                (f"{m.name}: " if two else "") + title,
                geometry.n_tokens,
            ),
        )
        for k, (m, u) in enumerate(runs)
    ]
    chosen_view = (layer, head, runs, outline_spec, view, map_figs)
    if two:
        pixel_views(*chosen_view)
        draw_maps(map_figs)
    else:
        a, b = st.columns(2)
        with a:
            pixel_views(*chosen_view)
        with b:
            draw_maps(map_figs)


@view_fragment("att", key="att_pixel_views")
def pixel_views(layer, head, runs, outline_spec, view, map_figs) -> None:
    """Where the query pixel looks in the chosen layer and head (one model, or two side by side)
    and the exports: a part a new query reruns alone, with the layer's choices it was drawn with
    (a change of any reruns the head views, and this part with them)."""
    take_clicks()
    shown = shown_now()
    query = shown.query
    outline = None
    if outline_spec != "none":
        outline = pixel_view(parse_layout(outline_spec), geometry, query, head) > 0
    views = [
        head_view(m, cached_rows(m.path, image_sha1, query, image, u), layer, head, u)
        for m, u in runs
    ]
    two = len(views) > 1
    # two models: one colour scale, so the sharper head looks sharper
    zmax = (
        max(float(pixel_map(v.row, geometry, shown.key_channel).max()) for v in views)
        if two
        else None
    )
    how = dict(view=view, zmax=zmax, outline=outline, named=two)
    pixel_figs = [pixel_figure(shown, v, layer, head, how) for v in views]
    r_, c_, ch_ = token_coords(query, geometry)
    words = dict(
        layer=layer,
        head=head,
        outline_spec=outline_spec,
        compare_name=views[1].name if two else "none",
        outlined="No layout outlined."
        if outline_spec == "none"
        else f"Orange squares: the keys {as_text(outline_spec)} allows.",
        query=f"Query token {query} (row {r_}, column {c_}, channel {ch_}).",
    )
    draw_pixel_views(shown, views, pixel_figs, words)
    e1, e2 = st.columns(2) if two else (st.container(), st.container())
    with e1:
        grid = query_grid(shown, bool(st.session_state.get("att_shared_scale")))
        items = export_items(shown, views, pixel_figs, map_figs, words, grid)
        export_panel(items, "att_export", "Export these figures")
    with e2:
        every_layer_and_head(shown)


head_views()
