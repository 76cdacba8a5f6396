"""Complete page: keep part of an image, let the models sample the rest, row by row.

A completion is a CompletionJob in this session's state (app_pages/completion_job.py: its
request, status, cancel flag, the rows sampled so far and the samples); this page draws it.
Results are shown only for the request that made them, so a new upload or setting never shows
stale samples.
"""

import time

import numpy as np
import streamlit as st

from analysis.attention import query_rows
from analysis.maps import pixel_map
from app_pages import limits
from app_pages.completion_job import CANCELLED, DONE, CompletionJob, CompletionRequest, Partial
from app_pages.export_panel import export_panel
from app_pages.jobs import POOL, Refused
from app_pages.models_cache import load_or_explain, require_model_names
from app_pages.pickers import pick_image, show_image
from app_pages.pool_ui import follow, session_alive
from app_pages.settings import (
    Setting,
    clamp_setting,
    declare_settings,
    image_settings,
    model_setting,
    pixel,
)
from app_pages.text import as_text
from models.completion import hidden_view, keep_mask
from models.tokens import pixel_tokens
from viz.export import Exportable, export_bytes, safe_name
from viz.grid import image_grid
from viz.pixels import clicked_pixel, pixel_grid_figure

PER_ROW = 4  # samples per line of a model's grid
RECT = ("x0", "y0", "x1", "y1")  # the kept rectangle: corners, the end exclusive
MODELS_PER_ROW = 2  # models side by side
LIVE_EVERY = 0.5  # seconds between two drawings of the rows being sampled
SAMPLES_DPI = 96  # the PNG of the samples: 4 screen pixels per image pixel at 96 dpi


def stop_completion() -> None:
    """Stop's callback (it may run while the sampling run is still going, in another thread)."""
    job = st.session_state.get("cmp_job")
    if job is not None:
        job.stop()


SETTINGS = declare_settings(
    Setting("cmp_models", list, None, 0, limits.MAX_MODELS, models=True),
    *image_settings("cmp"),
    Setting("cmp_keep", str, choices=("top rows", "rectangle")),
    # the rows and rectangle kept: checked again against the model's image below
    Setting("cmp_rows", int, None, 0, 255, label="Rows to keep"),
    *(Setting(f"cmp_{k}", int, None, 0, 255, label=f"Rectangle {k}") for k in RECT),
    limits.SAMPLES,
    limits.TEMPERATURE,
    limits.TOP_K,
    limits.TOP_P,
    limits.SEED,
    model_setting("cmp_look_model"),
    pixel("cmp_look_sample", 0),
    pixel("cmp_look_layer"),
)
st.title("Complete an image")
st.caption(
    "Keep the top rows (or a rectangle) of an image; each model samples the rest in raster "
    "order, several samples at once, with the kept pixels fixed. Rows appear as they are "
    "sampled. Click a generated pixel to see where the model looked when it drew it."
)
st.session_state.setdefault("cmp_job", None)
job = st.session_state.cmp_job
if job is not None:
    job.interrupt()  # still running: this rerun (a click, an upload) cut its run short


def samples_caption(n: int, temperature: float, top_k: int, seed: int) -> str:
    """The caption of a model's samples: greedy sampling (temperature 0, or top-k 1) takes the
    most likely value at every pixel, so its samples are identical and the seed does nothing."""
    if n > 1 and (temperature == 0 or top_k == 1):
        why, fix = (
            ("temperature 0", "a temperature above 0")
            if temperature == 0
            else ("top-k 1", "a top-k of 0 (off) or above 1")
        )
        return (
            f"{n} identical samples: {why} is greedy (every pixel takes its most likely "
            f"value), so the seed changes nothing; {fix} gives different samples"
        )
    if temperature == 0 or top_k == 1:
        return "1 sample, greedy (every pixel its most likely value)"
    return f"{n} sample{'s' if n != 1 else ''}, seed {seed}"


names = require_model_names()
st.session_state.setdefault(
    "cmp_models", [m for m in ("strided", "fixed") if m in names] or names[:1]
)
chosen = st.multiselect(
    "Models (side by side)", names, max_selections=limits.MAX_MODELS, key="cmp_models"
)
if not chosen:
    st.info("Choose at least one model.")
    st.stop()
if len(chosen) > limits.MAX_MODELS:
    st.error(f"Choose at most {limits.MAX_MODELS} models at once, got {len(chosen)}.")
    st.stop()
models = {m: load_or_explain(m) for m in chosen}
if any(m is None for m in models.values()):
    st.stop()
geometry = next(iter(models.values())).config.geometry
if any(m.config.geometry != geometry for m in models.values()):
    st.error("These models have different image sizes; complete with one size at a time.")
    st.stop()

rows_bound = limits.keep_rows(geometry.height)
w, h = geometry.width, geometry.height
corners = {  # the rectangle's widgets: start in 0..size-1, exclusive end in 1..size
    "x0": Setting("cmp_x0", int, min(4, w - 1), 0, w - 1, label="Rectangle x0"),
    "y0": Setting("cmp_y0", int, min(4, h - 1), 0, h - 1, label="Rectangle y0"),
    "x1": Setting("cmp_x1", int, min(24, w), 1, w, label="Rectangle x1"),
    "y1": Setting("cmp_y1", int, min(20, h), 1, h, label="Rectangle y1"),
}
# the bounds of this model's image (a value out of them is reset to its default, as one out of
# the settings' own bounds was at the top: nothing starts in this run)
problems = SETTINGS.problems + limits.reset_out_of_bounds([rows_bound, *corners.values()])
for message in problems:
    st.error(f"{message} It was reset to its default.")
S, T, K, P, D = limits.SAMPLES, limits.TEMPERATURE, limits.TOP_K, limits.TOP_P, limits.SEED

left, right = st.columns([1, 2])
with left:
    picked = pick_image("cmp", geometry)
if picked is None:
    st.stop()
image_name, image = picked
with left:
    how = st.radio("Keep", ["top rows", "rectangle"], horizontal=True, key="cmp_keep")
    if how == "top rows":
        rows = st.slider("Rows to keep", rows_bound.low, rows_bound.high, key="cmp_rows")
        rect = None
        problem = rows_bound.problem(rows)
    else:
        a, b = st.columns(2)
        rect_values = []
        for k, col, label in (
            ("x0", a, "x0"),
            ("y0", b, "y0"),
            ("x1", a, "x1 (exclusive)"),
            ("y1", b, "y1 (exclusive)"),
        ):
            c = corners[k]
            rect_values.append(col.number_input(label, c.low, c.high, key=f"cmp_{k}"))
        rows, rect = None, tuple(rect_values)
        problem = limits.rect_problem(rect, geometry.width, geometry.height)
        st.caption(
            "Sampling runs in raster order and a pixel sees only the pixels before it: the "
            "pixels above the rectangle, and those left of it on its rows, are sampled "
            "without seeing it. Only pixels after a kept one can take it into account."
        )
    if problem is not None:
        st.error(problem)
        st.stop()
    keep = keep_mask(geometry, keep_rows=rows, rect=rect)
    show_image(hidden_view(image, keep), "kept (gray: to be sampled)")
    n_samples = st.slider(S.label, S.low, S.high, key="cmp_samples")
    temperature = st.slider(T.label, T.low, T.high, step=0.05, key="cmp_temperature")
    k_col, p_col = st.columns(2)
    top_k = k_col.number_input(K.label, K.low, K.high, key="cmp_top_k")
    top_p = p_col.number_input(P.label, P.low, P.high, step=0.05, key="cmp_top_p")
    seed = st.number_input(D.label, D.low, D.high, key="cmp_seed")
    run_col, stop_col = st.columns(2)
    run = run_col.button("Complete", type="primary", key="cmp_run")
    stop_slot = stop_col.empty()  # Stop is shown only while this run is sampling

# checked again here, whatever the widgets did: nothing starts with a value out of bounds
late = limits.completion_problems(
    n_samples=n_samples, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed
)
for message in late:
    st.error(message)
if (problems or late) and run:
    st.error("Nothing was sampled: the values above are out of bounds.")
    run = False

request = CompletionRequest(
    models=tuple(chosen),
    image_name=image_name,
    image_bytes=image.tobytes(),
    keep_bytes=keep.numpy().tobytes(),
    n_samples=n_samples,
    temperature=temperature,
    top_k=top_k,
    top_p=top_p,
    seed=seed,
)
with right:
    if run:
        job = st.session_state.cmp_job = CompletionJob(request)
        stop_slot.button("Stop", key="cmp_stop", on_click=stop_completion)
        live = {}  # the live view of the model being sampled; cleared when it is done

        def start_model(name: str) -> None:
            if live:
                live["panel"].empty()
            panel = st.empty()
            box = panel.container()
            box.subheader(as_text(name))
            bar = box.progress(0.0, text=f"{as_text(name)}: sampling...")
            live.update(panel=panel, bar=bar, images=box.empty())

        def show_row(name: str, partial: Partial, share: float) -> None:
            live["bar"].progress(share, text=f"row {partial.row} sampled")
            live["images"].image(
                image_grid([("", list(partial.images))], label_width=0, columns=PER_ROW)
            )

        # sampled in the server's worker pool (its queue position shown while it waits); this
        # run draws each new row, and Stop, a rerun or the session's end stop it
        try:
            job.submit(POOL, models, image, keep, alive=session_alive())
        except Refused as e:
            job.interrupt()
            st.error(as_text(e))
            st.stop()
        drawn = {}

        def draw_rows() -> None:
            name = job.current
            if name is None:
                return
            if drawn.get("model") != name:
                drawn.update(model=name, row=None)
                start_model(name)
            partial = job.partial.get(name)
            # at most LIVE_EVERY: each drawing is a PNG to encode, send and decode, work that
            # slows everyone else's pages when several people sample at once
            soon = time.monotonic() - drawn.get("at", 0.0) < LIVE_EVERY
            if partial is not None and partial.row != drawn["row"] and not soon:
                drawn.update(row=partial.row, at=time.monotonic())
                show_row(name, partial, min(1.0, partial.row / max(1, geometry.height - 1)))

        follow(job, what="The completion", on_tick=draw_rows, bar=False)
        if job.task.error:  # one line, never a traceback
            job.interrupt()
            st.error(as_text(f"The completion failed: {job.task.error}"))
        if live:
            live["panel"].empty()
        stop_slot.empty()
    job = st.session_state.cmp_job
    current = job is not None and job.is_for(request)
    results = dict(job.results) if current else {}
    if current and job.status != DONE:
        how_ended = "cancelled" if job.status == CANCELLED else "interrupted"
        st.warning(
            f"The completion was {how_ended} before it finished. Shown below: what was "
            "sampled by then (gray: not sampled). Press Complete to sample again."
        )
        for name, (row, partial) in job.partial.items():
            st.markdown(f"**{as_text(name)}** (partial: up to row {row})")
            st.image(image_grid([("", list(partial))], label_width=0, scale=4, columns=PER_ROW))
    if not results:
        if not current:
            st.info("Press Complete to sample.")
        st.stop()
    # at most MODELS_PER_ROW models side by side, each sample wrapped PER_ROW to a line: 16
    # samples of 3 models stay ~60 px or more each at an 800 px window, not 8 px strips
    places = [
        col
        for start in range(0, len(results), MODELS_PER_ROW)
        for col in st.columns(MODELS_PER_ROW)[: len(results) - start]
    ]
    for (name, samples), col in zip(results.items(), places, strict=True):
        with col:
            st.markdown(f"**{as_text(name)}**")
            grid = image_grid([("", list(samples))], label_width=0, scale=4, columns=PER_ROW)
            st.image(grid, caption=samples_caption(len(samples), temperature, top_k, seed))
            meta = {
                "model": name,
                "image": image_name,
                "keep": how,
                "samples": n_samples,
                "temperature": temperature,
                "top_k": int(top_k),
                "top_p": float(top_p),
                "seed": int(seed),
            }
            stem = f"{safe_name(name)}_{safe_name(image_name)}_seed{seed}"
            # through the one export path: metadata (and the PNG's dpi) in every file
            picture = Exportable(
                f"{stem}_samples",
                None,
                {"samples": samples, "image": image, "keep": keep.numpy()},
                meta,
                picture=np.asarray(grid),
            )
            d1, d2 = st.columns(2)
            # on_click="ignore": a download does not rerun the page, so quick clicks on
            # several buttons each download instead of cancelling one another
            d1.download_button(
                "PNG",
                export_bytes(picture, "png", dpi=SAMPLES_DPI),
                f"{stem}_samples.png",
                "image/png",
                key=f"cmp_png_{name}",
                on_click="ignore",
            )
            d2.download_button(
                "NPZ (data)",
                export_bytes(picture, "npz"),
                f"{stem}_samples.npz",
                key=f"cmp_npz_{name}",
                on_click="ignore",
            )

# where the model looked: recomputed from the finished sample, which equals what the model
# computed while generating (tests/test_capture.py checks this)
st.subheader("Where the model looked")
c1, c2, c3 = st.columns(3)
name = c1.selectbox("Model", list(results), key="cmp_look_model")
clamp_setting("cmp_look_sample", 0, len(results[name]) - 1)
index = c2.number_input("Sample", 0, len(results[name]) - 1, key="cmp_look_sample")
layer = c3.selectbox("Layer", list(range(models[name].config.n_layer)), key="cmp_look_layer")
sample_img = results[name][index]
st.session_state.setdefault("cmp_look_px", (geometry.height - 1, geometry.width // 2))
px = clicked_pixel(st.session_state.get("cmp_look_pixels"), geometry.width)
if px is not None:
    st.session_state.cmp_look_px = px
r, c = st.session_state.cmp_look_px
# the pixel's tokens (three for a colour pixel): where it looked is their mean
tokens_of_px = list(pixel_tokens(r, c, geometry).values())
token = tokens_of_px[0]
a, b = st.columns(2)
with a:
    st.plotly_chart(
        pixel_grid_figure(
            sample_img.mean(axis=2),
            rgb=sample_img if geometry.channels == 3 else None,  # a colour sample in colour
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
        probs = np.mean(  # [H, N]: the pixel's query tokens' rows, averaged
            [query_rows(models[name], sample_img, t, layers=[layer])[0] for t in tokens_of_px],
            axis=0,
        )
        mean = probs.mean(0)  # [N]: mean over heads
        look_fig = pixel_grid_figure(
            pixel_map(mean, geometry, None),  # the weight on each key pixel (all its tokens)
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
