"""Who looks here, and summaries across heads and layers: head mean / max and rollout.

A key pixel's column of a layer's attention (analysis.reverse, from the full maps: 784 tokens
here, never a dense map above 4,096), per head and summed over heads; for a query pixel, the
mean and max over heads in every layer and the residual-aware rollout from the input up to
that layer (analysis.rollout). Captures are cached per model and image (bounded cache_data),
so a click only reads rows and columns of cached maps.
"""

import numpy as np
import streamlit as st
import torch

from analysis.maps import pixel_map
from analysis.reverse import column_from_full, heads_total
from analysis.rollout import RESIDUAL, heads_max, heads_mean, with_residual
from app_pages.clicks import pixel_values_hover, take_pixel_click
from app_pages.export_panel import export_panel
from app_pages.models_cache import every_row_of, fits_every_row, get_model
from app_pages.pickers import channel_picker, choose_model_and_image
from app_pages.settings import (
    channel_setting,
    clamp_setting,
    declare_settings,
    image_settings,
    model_setting,
    pixel,
    view_fragment,
)
from kernels.capture import MAX_FULL_N
from models.tokens import image_to_tokens, pixel_tokens
from viz.export import Exportable, content_key, safe_name
from viz.mosaics import mosaic_figure
from viz.pixels import pixel_grid_figure

st.title("Who looks here, and summaries across heads and layers")
st.caption(
    "The Attention page shows where one pixel looks. This page turns the question round: "
    "click a **key** pixel to see how much attention every later pixel gives it, in each head "
    "of a layer and summed over the heads. Below, for a **query** pixel: the mean and the max "
    "over heads in every layer, and the attention rollout, which follows the reading down "
    "through the layers to the input."
)
declare_settings(  # the key and query pixels, the layer
    model_setting("who_model"),
    *image_settings("who"),
    pixel("who_krow", 10),
    pixel("who_kcol", 14),
    pixel("who_qrow", 20),
    pixel("who_qcol", 14),
    pixel("who_layer", 0),
    channel_setting("who_channel"),  # colour models only
)

left, right = st.columns(2)
with left:
    chosen, image_name, image = choose_model_and_image("who")
model = chosen.model
geometry = model.config.geometry
n_layer, n_head = model.config.n_layer, model.config.n_head
if geometry.n_tokens > MAX_FULL_N:
    st.error(
        f"This page reads full attention maps, for images of at most {MAX_FULL_N:,} tokens; "
        f"{chosen.name} has {geometry.n_tokens:,}."
    )
    st.stop()
image_sha1 = content_key(image)


def layer_maps(path: str, img_key: str, layer: int, _image: np.ndarray) -> np.ndarray:
    """Every head's full map of one layer: float32 [H, N, N] (9.8 MB for 4 heads at 784), from
    the capture of every row the Attention page shares when it fits, else of this layer."""
    if fits_every_row(path):
        return every_row_of(path, img_key, _image)[layer]
    return one_layer_maps(path, img_key, layer, _image)


@st.cache_data(max_entries=8, show_spinner="Capturing the layer...")
def one_layer_maps(path: str, img_key: str, layer: int, _image: np.ndarray) -> np.ndarray:
    cap = get_model(path).capture(image_to_tokens(_image)[None], layers=[layer], form="full")
    return cap[layer].probs[0].float().numpy()


# A resource, not cache_data: cache_data unpickles a copy on every hit, and this array is
# 30 MB (a click on a new query pixel took ~370 ms on a busy 2-core machine, mostly that copy);
# it is made read-only, so the sessions that share it cannot change it. Bounded like the rest.
@st.cache_resource(max_entries=4, ttl=3600, show_spinner="Capturing every layer...")
def summaries(path: str, img_key: str, _image: np.ndarray) -> np.ndarray:
    """Per layer: the head mean, the head max and the rollout from the input up to that layer,
    float16 [3, L, N, N] (the chain's intermediate products, computed once)."""
    if fits_every_row(path):  # the capture the Attention page shares
        layers = (
            torch.tensor(m[None], dtype=torch.float64) for m in every_row_of(path, img_key, _image)
        )
    else:  # one capture of every layer, used once
        caps = get_model(path).capture(image_to_tokens(_image)[None], form="full")
        layers = (caps[i].probs.double() for i in sorted(caps))
    out = []
    chain = None
    for probs in layers:  # [1, H, N, N]
        mean = heads_mean(probs)  # [1, N, N]
        step = with_residual(mean, RESIDUAL)
        chain = step if chain is None else step @ chain  # A'_i @ ... @ A'_0
        out.append(torch.stack([mean[0], heads_max(probs)[0], chain[0]]))
    summary = torch.stack(out, dim=1).half().numpy()  # float16: half the memory
    summary.setflags(write=False)
    return summary


@st.cache_data(max_entries=256, show_spinner=False)
def key_column(path: str, img_key: str, layer: int, key: int, _image: np.ndarray) -> np.ndarray:
    """The attention every query gives token ``key`` in ``layer``, per head: float32 [H, N].
    Cached per key, so a rerun that keeps the key does not copy the layer's maps."""
    maps = torch.tensor(layer_maps(path, img_key, layer, _image))  # [H, N, N] (a copy: the
    # shared capture is read-only)
    return column_from_full(maps[None], key)[0].numpy()


@st.cache_data(max_entries=256, show_spinner=False)
def query_summary(path: str, img_key: str, query: int, _image: np.ndarray) -> np.ndarray:
    """Head mean, head max and rollout of token ``query`` in every layer: float32 [3, L, N]."""
    return summaries(path, img_key, _image)[:, :, query].astype(np.float32)


# a colour pixel is three tokens: one of them as key and queries, or the pixel whole (both
# sections below read it)
with right:
    channel = channel_picker("who_channel", geometry)
shown, words = pixel_values_hover(image, channel, first=1)


@view_fragment("who")
def key_section() -> None:
    """Who looks at the key pixel in the chosen layer. A click on its view, a new key or layer
    reruns only this part."""
    take_pixel_click("who_key_view", "who_krow", "who_kcol", geometry.width)
    for key, high in (
        ("who_krow", geometry.height - 1),
        ("who_kcol", geometry.width - 1),
        ("who_layer", n_layer - 1),
    ):
        clamp_setting(key, 0, high)
    l1, k1, k2 = st.columns([2, 1, 1])
    layer = l1.selectbox("Layer", list(range(n_layer)), key="who_layer")
    krow = k1.number_input("key row", 0, geometry.height - 1, key="who_krow")
    kcol = k2.number_input("key column", 0, geometry.width - 1, key="who_kcol")
    key_tokens = pixel_tokens(krow, kcol, geometry, channel).values()
    # the attention each query token gives the key pixel's token(s): summed over them when whole
    column = sum(key_column(chosen.path, image_sha1, layer, t, image) for t in key_tokens)
    total = heads_total(torch.from_numpy(column)[None])[0].numpy()  # [N]
    # per pixel: the chosen channel's query token, or the mean over the pixel's query tokens
    per_head = pixel_map(column, geometry, channel, combine="mean")  # [H, h, w]
    total_px = pixel_map(total, geometry, channel, combine="mean")  # [h, w]
    st.subheader(f"Who looks at pixel ({krow}, {kcol}) in layer {layer}")
    a, b = st.columns([1, 1])
    with a:
        key_fig = pixel_grid_figure(
            total_px,
            title=f"who reads ({krow}, {kcol}): sum of {n_head} heads",
            query=(krow, kcol),
            hover_values=np.concatenate([total_px[..., None], shown], axis=-1),
            hover_template="row %{y}, col %{x}: %{customdata[0]:.4f} (" + words + ")",
            colorscale="Viridis",
            zmin=0,
            colorbar_title="attention",
            size_px=300,
        )
        st.plotly_chart(key_fig, key="who_key_view", on_select="rerun", selection_mode="points")
        st.caption(
            "Click a pixel to make it the key. Each later pixel's colour is the attention it "
            f"gives the key, summed over the heads (0..{n_head}); pixels before the key cannot "
            "look at it (causal)."
        )
    with b:
        heads_fig = mosaic_figure(
            per_head,
            title=f"per head: attention given to ({krow}, {kcol})",
            col_labels=[f"head {h}" for h in range(n_head)],
            zmin=0,
            zmax=float(max(per_head.max(), 1e-9)),
            colorbar_title="attention",
            value_name="attention",
            tile_px=160,
        )
        st.plotly_chart(heads_fig, key="who_heads")
        readers = int((total > 1e-3).sum())
        st.caption(
            f"{readers} queries give this key more than 0.001 of some head's attention. "
            "One colour scale for all heads, so the heads compare."
        )
    meta = image_meta | {
        "layer": layer,
        "layout": repr(model.layouts[layer]),
        "key_pixel": [krow, kcol],
    }
    stem = f"{safe_name(chosen.name)}_{safe_name(image_name)}_L{layer}_key_r{krow}c{kcol}"
    items = [
        Exportable(
            f"{stem}_total",
            key_fig,
            {"attention": total_px, "key_pixel": np.array([krow, kcol])},
            meta,
        ),
        Exportable(
            f"{stem}_heads",
            heads_fig,
            {"attention": per_head, "key_pixel": np.array([krow, kcol])},
            meta,
        ),
    ]
    export_panel(items, "who_export", "Export these figures and data")


@view_fragment("who")
def query_section() -> None:
    """Summaries across heads and layers for the query pixel. A click on its view or a new
    query reruns only this part."""
    take_pixel_click("who_query_view", "who_qrow", "who_qcol", geometry.width)
    for key, high in (("who_qrow", geometry.height - 1), ("who_qcol", geometry.width - 1)):
        clamp_setting(key, 0, high)
    st.subheader("Summaries across heads and layers, for a query pixel")
    s1, s2 = st.columns([1, 1])
    with s1:
        q1, q2 = st.columns(2)
        qrow = q1.number_input("query row", 0, geometry.height - 1, key="who_qrow")
        qcol = q2.number_input("query column", 0, geometry.width - 1, key="who_qcol")
    query_tokens = pixel_tokens(qrow, qcol, geometry, channel).values()
    # the query pixel's token(s): their rows averaged when the pixel is shown whole ([3, L, N])
    summary = sum(query_summary(chosen.path, image_sha1, t, image) for t in query_tokens) / len(
        query_tokens
    )
    # per key pixel: the chosen channel's token, or all the pixel's tokens together (the weight
    # it receives)
    rows_q = pixel_map(summary, geometry, channel, combine="sum")  # [3, L, h, w]
    top = rows_q[2, -1]  # rollout through every layer
    with s1:
        query_fig = pixel_grid_figure(
            top,
            title=f"rollout of ({qrow}, {qcol}), {n_layer} layers",
            query=(qrow, qcol),
            colorscale="Viridis",
            zmin=0,
            colorbar_title="share",
            size_px=260,
        )
        st.plotly_chart(query_fig, key="who_query_view", on_select="rerun", selection_mode="points")
        st.caption(
            "Click a pixel to make it the query. Rollout: how much of the query's state at the "
            "top is traced back to each input pixel (rows sum to 1)."
        )
    with s2:
        grid_fig = mosaic_figure(
            rows_q.transpose(1, 0, 2, 3),  # [L, 3, h, w]
            title=f"pixel ({qrow}, {qcol}): mean, max, rollout",
            col_labels=["mean over heads", "max over heads", "rollout up to the layer"],
            row_labels=[f"layer {i}" for i in range(n_layer)],
            per_tile=True,
            colorbar_title="share of tile max",
            value_name="weight",
            tile_px=110,
        )
        st.plotly_chart(grid_fig, key="who_summary")
    st.markdown(
        "**Mean over heads**: the layer's attention as one distribution (each head's row sums "
        "to 1, so the mean does too). **Max over heads**: where *any* head looks, however few "
        f"do. **Rollout** (Abnar & Zuidema 2020): each layer counted as {1 - RESIDUAL:.0%} "
        f"attention and {RESIDUAL:.0%} the residual path (the identity), normalised, "
        "multiplied from the input up; it says where the information at the query came from, "
        "through every layer below. Each tile is scaled to its own maximum; the hover gives "
        "the raw value."
    )
    qmeta = image_meta | {"query_pixel": [qrow, qcol], "residual": RESIDUAL}
    qstem = f"{safe_name(chosen.name)}_{safe_name(image_name)}_r{qrow}c{qcol}"
    items = [
        Exportable(f"{qstem}_rollout", query_fig, {"rollout": top}, qmeta),
        Exportable(
            f"{qstem}_summaries",
            grid_fig,
            {"head_mean": rows_q[0], "head_max": rows_q[1], "rollout": rows_q[2]},
            qmeta,
        ),
    ]
    export_panel(items, "who_query_export", "Export these figures and data")


image_meta = {
    "model": chosen.name,
    "image": image_name,
    "image_sha1": image_sha1,
    "channel": "all" if channel is None else int(channel),
}
key_section()
st.divider()
query_section()
