"""Frontier page: a trained model's bits/dim under each family of sparse attention, against the
keys a query keeps (analysis/frontier.py, python -m tools.frontier; drawn by
viz/frontier_figure.py). Opens on the shipped result for the shipped dense model
(assets/frontier/dense.json, or $SPARSE_EXPLORER_FRONTIER); another model or more images are
measured in the server's worker pool. A click on a point opens the Attention page with the
model run under that point's attention."""

from __future__ import annotations

import threading
import time

import streamlit as st

from app_pages.export_panel import export_panel
from app_pages.models_cache import get_model, model_names, model_path, require_model_names
from app_pages.pool_ui import JobWords, pool_job
from app_pages.settings import Setting, declare_settings, model_setting
from app_pages.text import as_text
from viz.export import Exportable, safe_name
from viz.frontier_figure import (
    FrontierError,
    clicked_target,
    families_of,
    frontier_arrays,
    frontier_figure,
    frontier_summary,
    read_frontier,
    recorded_model,
    shipped_frontier_path,
)

# the model a point opens is loaded this long after the page is sent (warm_attention)
WARM_AFTER_S = 1.0
# measured here: the batch of images a forward takes (the attention's [B, H, N, N] scores)
BATCH = 16
FRONTIER_WORDS = JobWords(
    "frontier",
    "The frontier",
    stop="Stop",
    reason="stopped",
    after="nothing to draw.",
    hint="Choose a smaller model.",
)


frontier_file = shipped_frontier_path


@st.cache_data(max_entries=4, ttl=3600, show_spinner=False)
def shipped_result(path: str, stamp: tuple) -> dict | str:
    """The frontier at ``path`` (cached per file and its size and time), or why it cannot be
    drawn."""
    try:
        return read_frontier(path)
    except FrontierError as e:
        return str(e)


def load_shipped() -> dict | str:
    path = frontier_file()
    try:
        info = path.stat()
        stamp = (info.st_size, info.st_mtime_ns)
    except OSError:
        stamp = ()
    return shipped_result(str(path), stamp)


def model_of(result: dict, names: list[str]) -> str | None:
    """The name (among ``names``) of the model a frontier file was measured on (its "model"
    path, relative to the project), or None when this server has no such model."""
    where = recorded_model(result)
    for name in names:
        if model_path(name).resolve() == where:
            return name
    return None


def measure_memory(config) -> int:
    """Bytes measure_frontier takes at its peak for a model: the intact attention's mean
    [L, H, N, N] float64 with a batch's scores, masked scores, probabilities and their
    top-k / block sums (five [B, H, N, N] float32 copies), or the evaluation's scores of a batch
    (three copies). Measured by tools.bench_load --frontier: the server grew by 757-825 MB for
    the shipped dense model, which this puts at 944 MB (docs/BENCHMARKS.md)."""
    n, layers, heads = config.geometry.n_tokens, config.n_layer, config.n_head
    mass = 8 * layers * heads * n * n + 5 * 4 * BATCH * heads * n * n
    evaluation = 3 * 4 * BATCH * heads * n * n
    return max(mass, evaluation)


@st.cache_resource(max_entries=8, ttl=3600, show_spinner=False)
def warm_attention(path: str) -> threading.Thread:
    """Once per model and server: load the model a click on a point opens, and import what
    the Attention page runs with, in a thread, while the frontier is being read (this page
    itself needs neither torch nor a model: the first click would wait for both)."""

    def warm() -> None:
        time.sleep(WARM_AFTER_S)  # the figure drawn first: torch's import takes the GIL
        import analysis.attention  # noqa: F401  (torch, the capture)
        import analysis.maps  # noqa: F401
        import analysis.metrics  # noqa: F401
        import viz.layout_view  # noqa: F401
        import viz.maps  # noqa: F401
        import viz.mosaics  # noqa: F401
        import viz.pixels  # noqa: F401

        try:
            get_model(path)
        except Exception:  # noqa: BLE001  (the click explains a model that cannot be loaded)
            pass

    thread = threading.Thread(target=warm, name="warm-attention", daemon=True)
    thread.start()
    return thread


def frontier_work(name: str, images: int, families: list[str]):
    """The pool's work: measure_frontier of model ``name`` on the first ``images`` test
    images, with the shipped strided and fixed models as trained points when ``name`` is
    dense and they read the same images."""
    path = str(model_path(name))
    model = get_model(path)  # the caches are read in this run, not in the pool's thread
    trained = {
        other: get_model(str(model_path(other)))
        for other in ("strided", "fixed")
        if name == "dense" and other in model_names()
    }
    trained = {k: m for k, m in trained.items() if m.config.geometry == model.config.geometry}

    def work(task):
        from analysis.frontier import measure_frontier
        from app_pages.jobs import Cancelled
        from models.datasets import held_out_source, load_images
        from models.evaluation import evaluate_bpd
        from models.tokens import images_to_tokens

        geometry = model.config.geometry
        task.report(0.0, "loading the test images")
        pictures = load_images(held_out_source(geometry), "test", geometry)[:images]
        tokens = images_to_tokens(pictures)

        def progress(done: int, total: int, label: str) -> None:
            task.report(done / (total + len(trained)), f"{done} of {total}: {label}")

        try:
            result = measure_frontier(
                model,
                tokens,
                families,
                batch=BATCH,
                progress=progress,
                cancel=lambda: task.cancelled,
            )
        except InterruptedError:
            raise Cancelled(task.reason or "stopped") from None
        result["trained"] = []
        n = model.config.block_size
        for other, m in trained.items():
            task.check()
            start = time.perf_counter()
            lays = m.layouts
            result["trained"].append(
                {
                    "model": other,
                    "spec": repr(lays[0]) if len(set(lays)) == 1 else "per layer",
                    "density": sum(lay.density(n) for lay in lays) / len(lays),
                    "keys": sum(lay.nnz(n) for lay in lays) / len(lays) / n,
                    "bpd": evaluate_bpd(m, tokens, batch_size=BATCH, progress=False),
                    "seconds": round(time.perf_counter() - start, 1),
                }
            )
        result.update({"model": name, "image_indices": list(range(len(tokens)))})
        return result

    return work


declare_settings(  # the model, the test images and the families measured
    model_setting("fr_model"),
    Setting("fr_images", int, None, 1, 1024),
    Setting("fr_families", list, None, 1, 16, pattern=r"[a-z_]{1,20}"),
)
st.title("The sparsity frontier")
st.caption(
    "How much a trained model loses when its attention is cut to a sparse pattern, for every "
    "family of patterns: each point runs the trained weights with one pattern in every layer "
    "(no retraining; the softmax renormalised over the keys kept) and measures test bits/dim. "
    "Left is cheaper (fewer keys a query keeps, log scale), down is better. Each family's line "
    "is its lower envelope: the choices no cheaper choice of the same family beats (its other "
    "choices are the faint rings). The dashed line is the model with all its attention; top-k, "
    "thick and red, keeps each query's largest weights: an oracle bound for what a fixed "
    "pattern could keep. Stars: models trained under their own sparse layout; diamonds: a "
    "layout fitted per head to this model's attention. Hover for the exact numbers; click a "
    "point to open the Attention page with the model run under that attention."
)
names = require_model_names()
shipped = load_shipped()
shipped_name = model_of(shipped, names) if isinstance(shipped, dict) else None
if isinstance(shipped, str):
    st.warning(
        as_text(f"The shipped frontier cannot be drawn: {shipped}.")
        + " Measure one below, or write it with python -m tools.frontier --out "
        + as_text(frontier_file())
        + "."
    )
st.session_state.setdefault("fr_model", shipped_name or names[0])
if st.session_state.fr_model not in names:
    st.session_state.fr_model = shipped_name or names[0]
default_images = int(shipped["images"]) if isinstance(shipped, dict) else 16
st.session_state.setdefault("fr_images", min(default_images, 1024))
c1, c2, c3 = st.columns([1, 1, 2])
name = c1.selectbox("Model", names, key="fr_model")
images = c2.number_input("Test images", 1, 1024, key="fr_images")
if isinstance(shipped, dict):  # its families (by default every one tools.frontier measures):
    all_families = families_of(shipped)  # listed without importing torch (a second or more)
else:  # no shipped file to list them: analysis.frontier's families
    from analysis.frontier import FAMILIES

    all_families = list(FAMILIES)
if "fr_families" not in st.session_state:  # every family at first; an empty choice stays empty
    st.session_state.fr_families = list(all_families)
st.session_state.fr_families = [f for f in st.session_state.fr_families if f in all_families]
families = c3.multiselect("Families", all_families, key="fr_families")
params = (str(model_path(name)), int(images), tuple(families))

# a click on a point: the Attention page, the model run under that point's attention
target = clicked_target(st.session_state.get("fr_chart"))
if target is None:
    st.session_state.pop("fr_chart_last", None)
elif target != st.session_state.get("fr_chart_last"):
    st.session_state.fr_chart_last = target
    open_model, spec = target
    if open_model in names:
        st.session_state.att_model = open_model
        if spec:
            st.session_state.att_under = spec
        else:
            st.session_state.pop("att_under", None)
        st.switch_page("app_pages/attention.py")
    st.warning(as_text(f"This server has no model '{open_model}' to open."))

measured = st.session_state.get("fr_result")
result, source = None, ""
if measured and measured[0] == params:
    result, source = measured[1], f"measured here on the first {images} test images"
elif isinstance(shipped, dict) and name == shipped_name:
    result, source = shipped, f"the shipped result: {as_text(frontier_file().name)}"

m1, m2 = st.columns([1, 3])
seconds_each = (
    float(shipped["seconds"]) / max(1, int(shipped["images"]))
    if isinstance(shipped, dict) and isinstance(shipped.get("seconds"), (int, float))
    else None
)
guess = (
    f" (the shipped one took {seconds_each * images / 60:.0f} min for {images} images)"
    if seconds_each
    else ""
)
start = m1.button(
    "Measure",
    key="fr_run",
    disabled=not families,
    help="Measure this model's frontier on the first N test images, in the server's worker "
    "pool: every family's points, the fitted layouts (and, for dense, the trained strided and "
    "fixed models)." + guess,
)
with m2:
    if not families:
        st.info("Choose at least one family.")
    work = None
    if start:
        work = frontier_work(name, int(images), list(families))
    job = pool_job(
        "fr_measure",
        params,
        work,
        start=start,
        memory=measure_memory(get_model(params[0]).config) if start else 0,
        words=FRONTIER_WORDS,
        replace_stale=True,  # another model, images or families: nothing would show it
    )
    if job is not None:
        st.session_state.fr_result = (params, job.result)
        result, source = job.result, f"measured here on the first {images} test images"

if result is None:
    st.info(
        as_text(f"No frontier of {name} on {images} test images yet: Measure computes it{guess}.")
    )
    st.stop()

fig = frontier_figure(result, name)
st.plotly_chart(fig, key="fr_chart", on_select="rerun", selection_mode="points")
st.caption(
    f"{as_text(name)}, {source}; {len(result['points'])} points in "
    f"{len(result['envelopes'])} families. Click a legend entry to hide a family."
)
st.markdown("**What it says**")
st.markdown("\n".join(f"- {as_text(line)}" for line in frontier_summary(result)))
with st.expander("Every point"):
    st.dataframe(
        [
            {k: p.get(k) for k in ("family", "spec", "keys", "density", "bpd", "coverage")}
            for p in result["points"]
        ],
        hide_index=True,
    )
meta = {
    "model": name,
    "images": result.get("images"),
    "source": source,
    "dense_bpd": result["dense_bpd"],
    "command": result.get("command"),
    "date": result.get("date"),
}
export_panel(
    [Exportable(safe_name(f"{name}_frontier"), fig, frontier_arrays(result), meta)],
    "fr_export",
)
# last: the figure is sent first, then the model a click opens is loaded meanwhile
warm_attention(str(model_path(name)))
