"""Predictions & ablation: what the models predict at a pixel, where they are surprised (bits
maps, side by side and averaged over test images), and what they lose without chosen heads."""

import numpy as np
import streamlit as st
import torch

from analysis.ablation import MODES, ablation, all_heads, head_means, rank_heads
from analysis.maps import pixel_map
from analysis.metrics import default_queries, head_metrics, head_type
from analysis.prediction import entropy_bits, mean_pixel_bits, predicted_probs, token_bits
from app_pages import limits
from app_pages.common import (
    CHANNEL_NAMES,
    SETTINGS,
    JobWords,
    channel_picker,
    clamp_setting,
    export_panel,
    get_model,
    load_or_explain,
    model_path,
    pick_image,
    pixel_values_hover,
    pool_job,
    require_model_names,
    share_settings,
    show_image,
    take_pixel_click,
)
from app_pages.completion_job import completion_memory, rows_to_sample
from app_pages.jobs import Cancelled
from models.completion import complete, keep_mask
from models.datasets import DatasetError, held_out_source, load_images
from models.model import NO_INTERVENTION
from models.sampling import SamplingCancelled
from models.tokens import image_to_tokens, images_to_tokens, pixel_tokens
from viz.charts import distribution_figure
from viz.export import Exportable, content_key, safe_name
from viz.grid import image_grid
from viz.head_tables import head_table_figure
from viz.mosaics import mosaic_figure
from viz.pixels import pixel_grid_figure
from viz.style import BITS_COLORS, DIFF_COLORS, diverging_range

MAX_MODELS = int(SETTINGS["prd_models"].high)


def bounds(key: str) -> tuple[int, int]:
    """A slider's bounds: those of its setting (a link's value is checked against them)."""
    return int(SETTINGS[key].low), int(SETTINGS[key].high)


MEAN_IMAGES = bounds("prd_mean_count")  # the average bits map: test images
ABLATE_IMAGES = bounds("abl_count")  # bits/dim under ablation: test images
REFERENCE_IMAGES = 32  # mean-ablation's reference batch (other test images than the measured)
COMPLETION_SAMPLES = bounds("abl_samples")
ABLATION_WORDS = JobWords(
    "ablation completion",
    "The completion with the heads removed",
    stop="Stop",
    reason="stopped",
    after="press Complete to sample again.",
    hint="Choose fewer samples.",
)

st.title("Predictions & ablation")
st.caption(
    "Every token's prediction is a distribution over the 256 pixel values given the pixels "
    "before it. Click a pixel to see each model's distribution there, with the true value "
    "marked. The bits maps show, for every pixel, how surprised the model was by the true "
    "value (-log2 p): their mean over the image is its bits/dim. Below: remove heads and see "
    "what the model loses."
)
for key, default in {"prd_row": 8, "prd_col": 12, "prd_mean_count": 8}.items():
    st.session_state.setdefault(key, default)

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
grid = (geometry.height, geometry.width, geometry.channels)


@st.cache_data(max_entries=24, show_spinner="Predicting every pixel...")
def image_probs(path: str, img_key: str, _image: np.ndarray) -> np.ndarray:
    """p(value | pixels before) at every token of one image: float32 [N, 256]."""
    return predicted_probs(get_model(path), image_to_tokens(_image)[None])[0].float().numpy()


@st.cache_data(max_entries=4, show_spinner=False)
def test_images(data: str, height: int, width: int, channels: int) -> np.ndarray:
    from models.tokens import Geometry

    return load_images(data, "test", Geometry(height, width, channels))


def spread(count: int, offset: float = 0.0) -> torch.Tensor:
    """``count`` test images spread over the test split, as tokens [count, N]; ``offset`` (0..1
    of the spacing) picks other images at the same spread."""
    images = test_images(held_out_source(geometry), *grid)
    step = len(images) / count
    idx = (np.arange(count) * step + offset * step).astype(int) % len(images)
    return images_to_tokens(images[idx])


@st.cache_data(max_entries=24, show_spinner="Averaging over test images...")
def mean_bits(path: str, count: int) -> np.ndarray:
    """The bits map averaged over ``count`` test images: float64 [H, W, C]."""
    return mean_pixel_bits(get_model(path), spread(count)).numpy()


def bits_mosaic(maps: np.ndarray, *, title: str, col_labels, value_name: str, tile_px: int):
    """Bits-per-pixel maps [M, h, w] side by side, on one scale from 0 to their 99.5th
    percentile."""
    return mosaic_figure(
        maps,
        title=title,
        col_labels=col_labels,
        colorscale=BITS_COLORS,
        zmin=0,
        zmax=float(np.percentile(maps, 99.5)),
        colorbar_title="bits",
        value_name=value_name,
        tile_px=tile_px,
    )


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
    """Each curve's p(true value), bits, entropy and most likely value."""
    st.dataframe(
        [
            {
                "model": label,
                "p(true value)": float(dist[label][truth[label]]),
                "bits": float(bits[n][t]),
                "entropy (bits)": float(entropy_bits(torch.from_numpy(dist[label]))),
                "most likely value": int(np.argmax(dist[label])),
            }
            for label, n, t, _ in curves
        ],
        hide_index=True,
        key="prd_dist_table",
    )


@st.fragment
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
    share_settings(("prd", "abl"), script=False)  # a rerun of this part runs no app.py


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

# -- Head ablation ---------------------------------------------------------------------------
st.divider()
st.subheader("Head ablation: what a model loses without chosen heads")
st.markdown(
    "**mean** (the default) replaces a head's output, at each position, by its average over "
    f"{REFERENCE_IMAGES} other test images: later layers still get an input of the size and "
    "direction they were trained on, and only what the head says *about this image* is lost. "
    "**zero** sets the output to 0, an input the later layers never saw in training, so it "
    "also measures the shock of that input: it overstates a head's importance."
)
for key, default in {"abl_mode": "mean", "abl_count": 8, "abl_samples": 2}.items():
    st.session_state.setdefault(key, default)
if st.session_state.get("abl_model") not in models:  # a link's model not picked above
    st.session_state.pop("abl_model", None)
x1, x2, x3 = st.columns([1, 2, 1])
abl_name = x1.selectbox("Model", list(models), key="abl_model")
abl_model = models[abl_name]
labels_of = {f"L{i}H{h}": (i, h) for i, h in all_heads(abl_model)}
if "abl_heads" in st.session_state:  # only heads this model has (a link may name others)
    st.session_state.abl_heads = [h for h in st.session_state.abl_heads if h in labels_of]
chosen_labels = x2.multiselect(
    "Heads to remove (layer, head)", list(labels_of), key="abl_heads", placeholder="none"
)
mode = x3.radio("Mode", list(MODES)[::-1], horizontal=True, key="abl_mode")
abl_count = st.slider("Test images measured", *ABLATE_IMAGES, key="abl_count")
heads = tuple(labels_of[label] for label in chosen_labels)
abl_path = paths[abl_name]


@st.cache_data(max_entries=8, show_spinner="Measuring head means...")
def reference_means(path: str) -> np.ndarray:
    """Every head's output averaged over REFERENCE_IMAGES test images: float32 [L, N, C]."""
    # the cached model itself: head_means and ablation are arguments of the calls they run in
    # (models.model.Intervention), so other sessions sharing the model never see them
    return head_means(get_model(path), spread(REFERENCE_IMAGES, offset=0.5)).numpy()


def means_for(path: str, mode: str) -> torch.Tensor | None:
    return torch.from_numpy(reference_means(path)) if mode == "mean" else None


@st.cache_data(max_entries=16, show_spinner="Running with the heads removed...")
def ablated_bits(path: str, heads: tuple, mode: str, count: int) -> np.ndarray:
    """Per-token bits, intact and with ``heads`` removed, over ``count`` test images:
    float64 [2, count, N]."""
    m, t = get_model(path), spread(count)
    intact = token_bits(m, t)
    removed = ablation(m, list(heads), mode=mode, means=means_for(path, mode))
    ablated = token_bits(m, t, intervention=removed)
    return torch.stack([intact, ablated]).numpy()


def model_bytes(model) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def completions_work(path: str, heads: tuple, mode: str, image, keep, samples: int):
    """The pool's work for Complete: ``samples`` completions of ``image`` (``keep`` kept, seed
    0) with the model intact, then with ``heads`` removed (an Intervention passed to those
    calls alone); the rows are reported as they come. Its result: (intact, ablated), uint8
    [samples, H, W, C] each."""
    model = get_model(path)  # the caches are read in this run, not in the pool's thread
    means = means_for(path, mode)
    todo = rows_to_sample(keep, model.config.geometry)

    def work(task):
        def sample(intervention, phase: int, name: str) -> np.ndarray:
            done = []

            def row(r: int, tokens) -> None:
                done.append(r)
                task.report((phase * todo + len(done)) / (2 * todo), f"{name}: row {r} sampled")

            try:
                return complete(
                    model,
                    image,
                    keep,
                    n_samples=samples,
                    seed=0,
                    on_row=row,
                    cancel=lambda: task.cancelled,
                    intervention=intervention,
                )
            except SamplingCancelled:
                raise Cancelled(task.reason or "stopped") from None

        intact = sample(NO_INTERVENTION, 0, "intact")
        removed = ablation(model, list(heads), mode=mode, means=means)
        return intact, sample(removed, 1, "without the heads")

    return work


abl_items = []
if not heads:
    st.info("Pick heads to remove (e.g. from the ranking below).")
else:
    try:
        both = ablated_bits(abl_path, heads, mode, abl_count)  # [2, count, N]
    except DatasetError as e:
        st.error(str(e))
        st.stop()
    before, after = both[0].mean(), both[1].mean()
    m1, m2, m3 = st.columns(3)
    m1.metric("bits/dim intact", f"{before:.4f}")
    m2.metric(
        f"without {', '.join(chosen_labels)}",
        f"{after:.4f}",
        f"{after - before:+.4f}",
        delta_color="inverse",
    )
    m3.metric("test images", abl_count)
    diff = pixel_map((both[1] - both[0]).mean(0), geometry, channel)  # [h, w]
    span = diverging_range(diff)
    d1, d2 = st.columns(2)
    with d1:
        pair = pixel_map(both.mean(1), geometry, channel)  # [2, h, w]
        pair_fig = bits_mosaic(
            pair,
            title=f"{abl_name}: mean bits per pixel over {abl_count} test images",
            col_labels=["intact", f"without {len(heads)} head(s) ({mode})"],
            value_name="bits",
            tile_px=230,
        )
        st.plotly_chart(pair_fig, key="abl_pair")
    with d2:
        diff_fig = pixel_grid_figure(
            diff,
            title=f"bits without minus with the heads ({mode}): red = the heads helped",
            colorscale=DIFF_COLORS,
            zmin=-span,
            zmax=span,
            colorbar_title="Δ bits",
            size_px=300,
        )
        st.plotly_chart(diff_fig, key="abl_diff")
    ameta = {
        "model": abl_name,
        "heads": [list(h) for h in heads],
        "mode": mode,
        "test_images": abl_count,
        "bpd_intact": float(before),
        "bpd_ablated": float(after),
    }
    astem = f"{safe_name(abl_name)}_ablate_{'_'.join(chosen_labels)}_{mode}"
    abl_items += [
        Exportable(f"{astem}_bits", pair_fig, {"intact": pair[0], "ablated": pair[1]}, ameta),
        Exportable(f"{astem}_diff", diff_fig, {"diff": diff}, ameta),
    ]

    st.markdown("**Completions with the heads removed** (top half kept, same seed as intact)")
    e1, e2 = st.columns([1, 3])
    samples = e1.slider("Samples", *COMPLETION_SAMPLES, key="abl_samples")
    limits_ok = limits.SAMPLES.low <= samples <= limits.SAMPLES.high
    start = e1.button("Complete", key="abl_complete", disabled=not limits_ok)
    params = (abl_name, heads, mode, image_sha1, samples)
    keep = keep_mask(geometry, keep_rows=geometry.height // 2)
    with e2:  # sampled in the server's worker pool: its queue place, progress and Stop here
        task = pool_job(
            "abl_completion",
            params,
            completions_work(abl_path, heads, mode, image, keep, samples) if start else None,
            start=start,
            # one completion at a time, and the ablated run's copy of the model
            memory=completion_memory([abl_model], samples) + model_bytes(abl_model),
            words=ABLATION_WORDS,
            replace_stale=True,  # other heads, image or samples: nothing would show it
        )
    if task is not None:
        st.session_state.abl_done = (params, *task.result)
    done = st.session_state.get("abl_done")
    if done and done[0] == params:
        picture = np.asarray(
            image_grid([("intact", list(done[1])), ("ablated", list(done[2]))], scale=4)
        )
        e2.image(picture, caption=f"{abl_name}, seed 0: intact (top), without the heads")
        abl_items.append(
            Exportable(
                f"{astem}_completions",
                None,
                {"intact": done[1], "ablated": done[2]},
                ameta | {"seed": 0, "kept_rows": geometry.height // 2},
                picture=picture,
            )
        )


def head_types(m, tokens: torch.Tensor) -> dict[tuple[int, int], str]:
    """Each head's type (analysis.metrics) from its rows at every 7th query from the second
    image row on (the Learned vs prescribed page reads every query: 7x the time, same types
    to within the thresholds)."""
    geometry = m.config.geometry
    queries = default_queries(geometry)[::7]
    caps = m.capture(tokens, form="rows", queries=torch.from_numpy(queries))
    out = {}
    for layer, cap in caps.items():
        metrics = head_metrics(cap.probs.float().numpy(), queries, geometry)  # each [B, H]
        for h in range(m.config.n_head):
            out[(layer, h)] = head_type({k: float(v[:, h].mean()) for k, v in metrics.items()})
    return out


@st.cache_data(max_entries=8, show_spinner="Ablating every head in turn...")
def ranking(path: str, mode: str, count: int) -> list[dict]:
    m, t = get_model(path), spread(count)
    return rank_heads(m, t, mode=mode, means=means_for(path, mode), head_types=head_types(m, t))


RANK_LABEL = "Rank every head (one run per head: about half a minute on the CPU, then cached)"
if st.toggle(RANK_LABEL, key="abl_rank"):
    try:
        table = ranking(abl_path, mode, abl_count)
    except DatasetError as e:
        st.error(str(e))
        st.stop()
    n_layer, n_head = abl_model.config.n_layer, abl_model.config.n_head
    rise = np.zeros((n_layer, n_head))
    kinds = np.empty((n_layer, n_head), dtype=object)
    for r in table:
        rise[r["layer"], r["head"]] = r["rise"]
        kinds[r["layer"], r["head"]] = r["type"] or "?"
    t1, t2 = st.columns([2, 3])
    with t1:
        rank_fig = head_table_figure(
            rise,
            title=f"{abl_name}: bits/dim rise without each head ({mode})",
            colorbar_title="Δ bits/dim",
            labels=kinds,
            colorscale="Reds",
            zmin=0,
        )
        st.plotly_chart(rank_fig, key="abl_rank_fig")
    with t2:
        st.dataframe(
            [
                {
                    "head": f"L{r['layer']}H{r['head']}",
                    "type": r["type"],
                    "bits/dim without": round(r["bpd"], 4),
                    "rise": round(r["rise"], 4),
                }
                for r in table
            ],
            hide_index=True,
            key="abl_rank_table",
            height=300,
        )
    st.caption(
        "Types (Learned vs prescribed page): local, row, column, sparse or global, from the "
        "head's attention on the same test images."
    )
    abl_items.append(
        Exportable(
            f"{safe_name(abl_name)}_head_ranking_{mode}",
            rank_fig,
            {"rise": rise, "types": kinds.astype(str)},
            {"model": abl_name, "mode": mode, "test_images": abl_count},
        )
    )
if abl_items:
    export_panel(abl_items, "abl_export", "Export the ablation figures and data")
