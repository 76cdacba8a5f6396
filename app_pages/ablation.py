"""Ablation: what a model loses without chosen heads (bits/dim, the map of the difference,
completions), and every head ranked by the bits/dim rise without it."""

import numpy as np
import streamlit as st
import torch

from analysis.ablation import MODES, ablation, all_heads, head_means, rank_heads
from analysis.learned import model_head_types
from analysis.maps import pixel_map
from analysis.prediction import token_bits
from app_pages import limits
from app_pages.bits_maps import bits_mosaic, spread
from app_pages.completion_job import completion_memory, rows_to_sample
from app_pages.export_panel import export_panel
from app_pages.jobs import Cancelled
from app_pages.models_cache import get_model
from app_pages.pickers import channel_picker, choose_model_and_image, show_image
from app_pages.pool_ui import JobWords, pool_job
from app_pages.settings import (
    Setting,
    channel_setting,
    declare_settings,
    image_settings,
    model_setting,
)
from models.completion import complete, keep_mask
from models.datasets import DatasetError
from models.model import NO_INTERVENTION
from models.sampling import SamplingCancelled
from viz.export import Exportable, content_key, safe_name
from viz.grid import image_grid
from viz.head_tables import head_table_figure
from viz.pixels import pixel_grid_figure
from viz.style import DIFF_COLORS, diverging_range

SETTINGS = declare_settings(
    model_setting("abl_model"),
    *image_settings("abl"),
    channel_setting("abl_channel"),  # colour models only
    # the heads to remove, one URL value each as the multiselect shows them
    # (abl_heads=L0H1&abl_heads=L2H3): the page keeps those its model has
    Setting("abl_heads", list, None, 0, 256, pattern=r"L\d{1,3}H\d{1,3}"),
    Setting("abl_mode", str, "mean", choices=tuple(MODES)),
    Setting("abl_count", int, 8, 2, 32),  # test images measured
    Setting("abl_samples", int, 2, 1, 4),  # completions with the heads removed
    Setting("abl_rank", bool),
)
ABLATE_IMAGES = SETTINGS["abl_count"].bounds  # bits/dim under ablation: test images
REFERENCE_IMAGES = 32  # mean-ablation's reference batch (other test images than the measured)
COMPLETION_SAMPLES = SETTINGS["abl_samples"].bounds
ABLATION_WORDS = JobWords(
    "ablation completion",
    "The completion with the heads removed",
    stop="Stop",
    reason="stopped",
    after="press Complete to sample again.",
    hint="Choose fewer samples.",
)

st.title("Ablation")
st.caption("Remove heads from a model and see what it loses: bits/dim, where, and its completions.")
st.markdown(
    "**mean** (the default) replaces a head's output, at each position, by its average over "
    f"{REFERENCE_IMAGES} other test images: later layers still get an input of the size and "
    "direction they were trained on, and only what the head says *about this image* is lost. "
    "**zero** sets the output to 0, an input the later layers never saw in training, so it "
    "also measures the shock of that input: it overstates a head's importance."
)
left, right = st.columns([1, 3])
with left:
    chosen, image_name, image = choose_model_and_image("abl")
    show_image(image, image_name)
with right:
    # a colour pixel is three tokens: one channel's bits, or the pixel's (their sum)
    channel = channel_picker("abl_channel", chosen.model.config.geometry)
abl_name, abl_model, abl_path = chosen.name, chosen.model, chosen.path
geometry = abl_model.config.geometry
image_sha1 = content_key(image)
x2, x3 = st.columns([2, 1])
labels_of = {f"L{i}H{h}": (i, h) for i, h in all_heads(abl_model)}
if "abl_heads" in st.session_state:  # only heads this model has (a link may name others)
    st.session_state.abl_heads = [h for h in st.session_state.abl_heads if h in labels_of]
chosen_labels = x2.multiselect(
    "Heads to remove (layer, head)", list(labels_of), key="abl_heads", placeholder="none"
)
mode = x3.radio("Mode", list(MODES)[::-1], horizontal=True, key="abl_mode")
abl_count = st.slider("Test images measured", *ABLATE_IMAGES, key="abl_count")
heads = tuple(labels_of[label] for label in chosen_labels)


@st.cache_data(max_entries=8, show_spinner="Measuring head means...")
def reference_means(path: str) -> np.ndarray:
    """Every head's output averaged over REFERENCE_IMAGES test images: float32 [L, N, C]."""
    # the cached model itself: head_means and ablation are arguments of the calls they run in
    # (models.model.Intervention), so other sessions sharing the model never see them
    return head_means(get_model(path), spread(geometry, REFERENCE_IMAGES, offset=0.5)).numpy()


def means_for(path: str, mode: str) -> torch.Tensor | None:
    return torch.from_numpy(reference_means(path)) if mode == "mean" else None


@st.cache_data(max_entries=16, show_spinner="Running with the heads removed...")
def ablated_bits(path: str, heads: tuple, mode: str, count: int) -> np.ndarray:
    """Per-token bits, intact and with ``heads`` removed, over ``count`` test images:
    float64 [2, count, N]."""
    m, t = get_model(path), spread(geometry, count)
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
        job = pool_job(
            "abl_completion",
            params,
            completions_work(abl_path, heads, mode, image, keep, samples) if start else None,
            start=start,
            # one completion at a time, and the ablated run's copy of the model
            memory=completion_memory([abl_model], samples) + model_bytes(abl_model),
            words=ABLATION_WORDS,
            replace_stale=True,  # other heads, image or samples: nothing would show it
        )
    if job is not None:
        st.session_state.abl_done = (params, *job.result)
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


@st.cache_data(max_entries=8, show_spinner="Ablating every head in turn...")
def ranking(path: str, mode: str, count: int) -> list[dict]:
    m, t = get_model(path), spread(geometry, count)
    return rank_heads(
        m, t, mode=mode, means=means_for(path, mode), head_types=model_head_types(m, t)
    )


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
