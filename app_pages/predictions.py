"""Predictions: what the models predict at a pixel, and where they are surprised (bits maps,
side by side and averaged over test images). Removing heads is the Ablation page's."""

import numpy as np
import streamlit as st
import torch

from analysis.maps import pixel_map
from analysis.prediction import entropy_bits, mean_pixel_bits, predicted_probs
from app_pages import limits
from app_pages.bits_maps import bits_mosaic, spread
from app_pages.clicks import pixel_values_hover, take_pixel_click
from app_pages.export_panel import export_panel
from app_pages.models_cache import get_model, load_or_explain, model_path, require_model_names
from app_pages.pickers import channel_picker, pick_image, show_image
from app_pages.settings import (
    CHANNEL_NAMES,
    Setting,
    channel_setting,
    clamp_setting,
    declare_settings,
    image_settings,
    pixel,
    view_fragment,
)
from app_pages.text import markdown_table
from models.datasets import DatasetError, held_out_source
from models.tokens import image_to_tokens, pixel_tokens
from viz.charts import distribution_figure
from viz.export import Exportable, content_key, safe_name
from viz.pixels import pixel_grid_figure
from viz.style import BITS_COLORS

SETTINGS = declare_settings(
    Setting("prd_models", list, None, 0, limits.MAX_MODELS, models=True),  # default: the first
    *image_settings("prd"),
    pixel("prd_row", 8),
    pixel("prd_col", 12),
    channel_setting("prd_channel"),  # colour models only
    Setting("prd_mean_count", int, 8, 1, 64),  # test images in the average bits map
)
MAX_MODELS = limits.MAX_MODELS
MEAN_IMAGES = SETTINGS["prd_mean_count"].bounds  # the average bits map: test images

st.title("Predictions")
st.caption(
    "Every token's prediction is a distribution over the 256 pixel values given the pixels "
    "before it. Click a pixel to see each model's distribution there, with the true value "
    "marked. The bits maps show, for every pixel, how surprised the model was by the true "
    "value (-log2 p): their mean over the image is its bits/dim. The Ablation page removes "
    "heads and shows what a model loses."
)

names = require_model_names()
st.session_state.setdefault("prd_models", names[:MAX_MODELS])
left, right = st.columns(2)
with left:
    picked_names = st.multiselect(
        "Models (side by side)", names, max_selections=MAX_MODELS, key="prd_models"
    )
    if not picked_names:
        st.info("Pick at least one model.")
        st.stop()
    models = {}
    for name in picked_names:
        m = load_or_explain(name)
        if m is not None:
            models[name] = m
    if not models:
        st.stop()
    geometry = next(iter(models.values())).config.geometry
    odd = [n for n, m in models.items() if m.config.geometry != geometry]
    if odd:
        st.error(f"{', '.join(odd)} see images of another shape; pick models of one shape.")
        st.stop()
    picked = pick_image("prd", geometry)
    if picked is None:
        st.stop()
    image_name, image = picked
    show_image(image, image_name)
paths = {name: str(model_path(name)) for name in models}
image_sha1 = content_key(image)


@st.cache_data(max_entries=24, show_spinner="Predicting every pixel...")
def image_probs(path: str, img_key: str, _image: np.ndarray) -> np.ndarray:
    """p(value | pixels before) at every token of one image: float32 [N, 256]."""
    return predicted_probs(get_model(path), image_to_tokens(_image)[None])[0].float().numpy()


@st.cache_data(max_entries=24, show_spinner="Averaging over test images...")
def mean_bits(path: str, count: int) -> np.ndarray:
    """The bits map averaged over ``count`` test images: float64 [H, W, C]."""
    return mean_pixel_bits(get_model(path), spread(geometry, count)).numpy()


with right:
    # a colour pixel is three tokens: one channel's values and bits, or the pixel whole
    channel = channel_picker("prd_channel", geometry)
channels = list(pixel_tokens(0, 0, geometry, channel))  # the channels shown

probs = {name: image_probs(paths[name], image_sha1, image) for name in models}  # [N, 256] each
tokens = image_to_tokens(image).numpy()
bits = {  # -log2 p(true value) per token: [N]
    name: -np.log2(np.maximum(p[np.arange(len(tokens)), tokens], 1e-300))
    for name, p in probs.items()
}
# per pixel: the chosen channel's bits, or the pixel's (the sum over its values' tokens)
bits_px = np.stack([pixel_map(bits[n], geometry, channel) for n in models])  # [M, h, w]
bpd = {n: float(bits[n].mean()) for n in models}
first = next(iter(models))
meta = {"models": list(models), "image": image_name, "image_sha1": image_sha1}
stem = f"{safe_name(image_name)}"


def distribution_table(dist: dict, truth: dict, curves: list) -> None:
    """Each curve's p(true value), bits, entropy and most likely value, as a Markdown table: a
    data frame's grid is redrawn at every click, a cost this page's click pays in full."""
    rows = [
        {
            "model": label,
            "p(true value)": f"{float(dist[label][truth[label]]):.4g}",
            "bits": f"{float(bits[n][t]):.3f}",
            "entropy (bits)": f"{float(entropy_bits(torch.from_numpy(dist[label]))):.3f}",
            "most likely value": int(np.argmax(dist[label])),
        }
        for label, n, t, _ in curves
    ]
    st.markdown(markdown_table(rows))


@view_fragment("prd")
def pixel_section() -> None:
    """The clicked pixel: the first model's bits map to click on, and every model's predicted
    distribution there. A click or a new row or column reruns only this part."""
    take_pixel_click("prd_pixels", "prd_row", "prd_col", geometry.width)
    clamp_setting("prd_row", 0, geometry.height - 1)
    clamp_setting("prd_col", 0, geometry.width - 1)
    c1, c2, _ = st.columns([1, 1, 2])
    row = c1.number_input("pixel row", 0, geometry.height - 1, key="prd_row")
    col = c2.number_input("pixel column", 0, geometry.width - 1, key="prd_col")
    picked_tokens = pixel_tokens(row, col, geometry, channel)  # {channel: token}
    shown, words = pixel_values_hover(image, channel, first=1)
    a, b = st.columns([1, 1])
    with a:
        click_fig = pixel_grid_figure(
            bits_px[0],
            title=f"{first}: bits per pixel (click one)",
            query=(row, col),
            hover_values=np.concatenate([bits_px[0][..., None], shown], axis=-1),
            # (the model is named in the title: no name inside a plotly template)
            hover_template="row %{y}, col %{x}: " + words + ", %{customdata[0]:.2f} bits",
            colorscale=BITS_COLORS,
            zmin=0,
            zmax=float(np.percentile(bits_px, 99.5)),
            colorbar_title="bits",
            size_px=300,
        )
        st.plotly_chart(click_fig, key="prd_pixels", on_select="rerun", selection_mode="points")
    with b:
        # one curve per model, per channel of a colour pixel shown whole (its own true value)
        names = {ch: "" if geometry.channels == 1 else f" {CHANNEL_NAMES[ch]}" for ch in channels}
        curves = [(f"{n}{names[ch]}", n, t, ch) for n in models for ch, t in picked_tokens.items()]
        dist = {label: probs[n][t] for label, n, t, _ in curves}
        truth = {label: int(image[row, col, ch]) for label, _, _, ch in curves}
        said = ", ".join(str(int(image[row, col, ch])) for ch in channels)
        dist_fig = distribution_figure(
            dist, truth, f"predicted value of pixel ({row}, {col}); true value {said}"
        )
        st.plotly_chart(dist_fig, key="prd_dist")
        distribution_table(dist, truth, curves)
        st.caption(
            "Low entropy and many bits: a confident mistake. High entropy and many bits: a "
            "value the model knew it could not guess (an edge, a texture)."
        )
    items = [
        Exportable(
            f"{stem}_r{row}c{col}_bits_{safe_name(first)}", click_fig, {"bits": bits_px[0]}, meta
        ),
        Exportable(
            f"{stem}_r{row}c{col}_distribution",
            dist_fig,
            {f"probs_{safe_name(n)}": dist[n] for n in dist}
            | {"true_value": np.array([truth[n] for n in dist])},
            meta | {"pixel": [row, col], "true_value": list(truth.values())},
        ),
    ]
    export_panel(items, "prd_pixel_export", "Export this pixel's figures and data")


pixel_section()
items = []
st.subheader("Where each model is surprised")
labels = [f"{n}: {bpd[n]:.3f} bits/dim" for n in models]
maps_fig = bits_mosaic(
    bits_px,
    title=f"bits per pixel on {image_name} (-log2 p of the true value)",
    col_labels=labels,
    value_name="bits",
    tile_px=260,
)
st.plotly_chart(maps_fig, key="prd_maps")
items.append(
    Exportable(
        f"{stem}_bits_maps",
        maps_fig,
        {f"bits_{safe_name(n)}": bits_px[k] for k, n in enumerate(models)},
        meta | {"bits_per_dim": bpd},
    )
)
count = st.slider(
    f"Average over test images (spread over the test set: {held_out_source(geometry)})",
    *MEAN_IMAGES,
    key="prd_mean_count",
)
try:
    means = np.stack(  # [M, h, w]: the chosen channel, or a pixel's values summed
        [mean_bits(paths[n], count)[..., channels].sum(-1) for n in models]
    )
except DatasetError as e:
    st.error(str(e))
    st.stop()
mean_fig = bits_mosaic(
    means,
    title=f"bits per pixel, mean over {count} test images",
    col_labels=[f"{n}: {means[k].mean():.3f} bits/dim" for k, n in enumerate(models)],
    value_name="mean bits",
    tile_px=260,
)
st.plotly_chart(mean_fig, key="prd_mean_maps")
st.caption(
    "The background is nearly free (the models are sure it is black); the bits go to edges "
    "and textures. Where one model's map is darker than another's, it predicts that region "
    "better."
)
items.append(
    Exportable(
        f"mean{count}_bits_maps",
        mean_fig,
        {f"mean_bits_{safe_name(n)}": means[k] for k, n in enumerate(models)},
        {"models": list(models), "test_images": count, "data": held_out_source(geometry)},
    )
)
export_panel(items, "prd_export", "Export these figures and data")
