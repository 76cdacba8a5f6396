"""Complete page: keep part of an image, let the models sample the rest, row by row."""

import io
import json

import numpy as np
import streamlit as st
import torch

from app_pages.common import (
    export_panel,
    load_or_explain,
    pick_image,
    require_model_names,
    show_image,
)
from models.complete import complete, hidden_view, keep_mask
from models.data import image_to_tokens, tokens_to_image
from viz.export import Exportable, safe_name
from viz.figures import clicked_pixel, pixel_grid_figure
from viz.grid import image_grid

st.title("Complete an image")
st.caption(
    "Keep the top rows (or a rectangle) of an image; each model samples the rest in raster "
    "order, several samples at once, with the kept pixels fixed. Rows appear as they are "
    "sampled. Click a generated pixel to see where the model looked when it drew it."
)
st.session_state.setdefault("cmp_results", {})

names = require_model_names()
default_models = [m for m in ("strided", "fixed") if m in names] or names[:1]
chosen = st.multiselect("Models (side by side)", names, default=default_models, key="cmp_models")
if not chosen:
    st.info("Choose at least one model.")
    st.stop()
models = {m: load_or_explain(m) for m in chosen}
if any(m is None for m in models.values()):
    st.stop()
geometry = next(iter(models.values())).config.geometry
if any(m.config.geometry != geometry for m in models.values()):
    st.error("These models have different image sizes; complete with one size at a time.")
    st.stop()

left, right = st.columns([1, 2])
with left:
    picked = pick_image("cmp", geometry)
if picked is None:
    st.stop()
image_name, image = picked
with left:
    how = st.radio("Keep", ["top rows", "rectangle"], horizontal=True, key="cmp_keep")
    try:
        if how == "top rows":
            rows = st.slider(
                "Rows to keep", 0, geometry.height, geometry.height // 2, key="cmp_rows"
            )
            keep = keep_mask(geometry, keep_rows=rows)
        else:
            a, b = st.columns(2)
            x0 = a.number_input("x0", 0, geometry.width - 1, 4, key="cmp_x0")
            y0 = b.number_input("y0", 0, geometry.height - 1, 4, key="cmp_y0")
            x1 = a.number_input("x1 (exclusive)", 1, geometry.width, 24, key="cmp_x1")
            y1 = b.number_input("y1 (exclusive)", 1, geometry.height, 20, key="cmp_y1")
            keep = keep_mask(geometry, rect=(x0, y0, x1, y1))
    except ValueError as e:
        st.error(str(e))
        st.stop()
    show_image(hidden_view(image, keep), "kept (gray: to be sampled)")
    n_samples = st.slider("Samples", 1, 16, 4, key="cmp_samples")
    temperature = st.slider("Temperature", 0.0, 2.0, 1.0, 0.05, key="cmp_temperature")
    seed = st.number_input("Seed", 0, 2**31 - 1, 0, key="cmp_seed")
    run = st.button("Complete", type="primary", key="cmp_run")

request = (image_name, image.tobytes(), keep.numpy().tobytes(), n_samples, temperature, seed)
with right:
    if run:
        st.session_state.cmp_results = {}
        row_len = geometry.width * geometry.channels
        todo = max(1, len({int(i) // row_len for i in torch.nonzero(~keep).flatten()}))
        for name, model in models.items():
            panel = st.empty()  # the live view; cleared when this model is done
            box = panel.container()
            box.subheader(name)
            bar = box.progress(0.0, text=f"{name}: sampling...")
            live = box.empty()
            todo = max(
                1,
                len(
                    {
                        int(i) // geometry.width // geometry.channels
                        for i in torch.nonzero(~keep).flatten()
                    }
                ),
            )
            done = []

            def on_row(row: int, tokens: torch.Tensor, bar=bar, live=live, done=done, todo=todo):
                done.append(row)
                bar.progress(min(1.0, len(done) / todo), text=f"row {row} sampled")
                shown = tokens.clone()
                shown[:, (row + 1) * geometry.width * geometry.channels :] = 0
                live.image(image_grid([("", list(tokens_to_image(shown, geometry)))]))

            samples = complete(
                model,
                image,
                keep,
                n_samples=n_samples,
                temperature=temperature,
                seed=int(seed),
                on_row=on_row,
            )
            panel.empty()
            st.session_state.cmp_results[name] = (request, samples)
    results = {k: v for k, (req, v) in st.session_state.cmp_results.items() if req == request}
    if not results:
        st.info("Press Complete to sample.")
        st.stop()
    cols = st.columns(len(results))
    for (name, samples), col in zip(results.items(), cols, strict=True):
        with col:
            st.markdown(f"**{name}**")
            grid = image_grid([("", list(samples))], label_width=0, scale=4)
            st.image(grid, caption=f"{len(samples)} samples, seed {seed}")
            png, npz = io.BytesIO(), io.BytesIO()
            grid.save(png, format="PNG")
            meta = {
                "model": name,
                "image": image_name,
                "keep": how,
                "samples": n_samples,
                "temperature": temperature,
                "seed": int(seed),
            }
            np.savez_compressed(
                npz,
                samples=samples,
                image=image,
                keep=keep.numpy(),
                metadata=np.array(json.dumps(meta)),
            )
            stem = f"{safe_name(name)}_{safe_name(image_name)}_seed{seed}"
            d1, d2 = st.columns(2)
            d1.download_button(
                "PNG", png.getvalue(), f"{stem}_samples.png", "image/png", key=f"cmp_png_{name}"
            )
            d2.download_button(
                "NPZ (data)", npz.getvalue(), f"{stem}_samples.npz", key=f"cmp_npz_{name}"
            )

# where the model looked: recomputed from the finished sample, which equals what the model
# computed while generating (tests/test_capture.py checks this)
st.subheader("Where the model looked")
c1, c2, c3 = st.columns(3)
name = c1.selectbox("Model", list(results), key="cmp_look_model")
index = c2.number_input("Sample", 0, len(results[name]) - 1, 0, key="cmp_look_sample")
layer = c3.selectbox("Layer", list(range(models[name].config.n_layer)), key="cmp_look_layer")
sample_img = results[name][index]
st.session_state.setdefault("cmp_look_px", (geometry.height - 1, geometry.width // 2))
px = clicked_pixel(st.session_state.get("cmp_look_pixels"), geometry.width)
if px is not None:
    st.session_state.cmp_look_px = px
r, c = st.session_state.cmp_look_px
token = (r * geometry.width + c) * geometry.channels
a, b = st.columns(2)
with a:
    st.plotly_chart(
        pixel_grid_figure(
            sample_img.mean(axis=2),
            title="sample: click a pixel",
            query=(r, c),
            colorscale="Greys_r",
            zmin=0,
            zmax=255,
        ),
        key="cmp_look_pixels",
        on_select="rerun",
        selection_mode="points",
    )
with b:
    if keep[token]:
        st.info(f"Pixel ({r}, {c}) was kept from the image, not generated.")
    else:
        caps = models[name].capture(
            image_to_tokens(sample_img)[None], layers=[layer], form="rows", queries=[token]
        )
        probs = caps[layer].probs[0, :, 0].numpy()  # [H, N]
        mean = probs.mean(0).reshape(geometry.height, geometry.width, geometry.channels)
        look_fig = pixel_grid_figure(
            mean.max(axis=2),
            title=f"layer {layer}, mean over heads: where pixel ({r}, {c}) looked",
            query=(r, c),
            colorscale="Viridis",
            zmin=0,
            colorbar_title="weight",
        )
        st.plotly_chart(look_fig, key="cmp_look_attention")
        look_meta = {
            "model": name,
            "image": image_name,
            "sample": int(index),
            "seed": int(seed),
            "layer": layer,
            "query_pixel": [r, c],
            "heads": "mean",
        }
        stem = f"{safe_name(name)}_{safe_name(image_name)}_s{index}_L{layer}_r{r}c{c}_looked"
        export_panel(
            [Exportable(stem, look_fig, {"probs": probs, "sample": sample_img}, look_meta)],
            "cmp_look_export",
        )
show_image(np.asarray(sample_img), f"{name}, sample {index}")
