"""Playground: train up to four layout families side by side from the browser, and watch them.

Any static family of kernels/layouts.py can race (dense, strided and fixed by default), each
with its parameters sized for the image (analysis.race.family_defaults) and editable within the
range the page states; a bad value is named in one message and Train waits for a good one.

The race (analysis/race.py) runs in the server's training pool (app_pages/playground_job.py);
this page starts it, shows its place in the queue, and redraws what it has so far every
REFRESH_SECONDS in a fragment (only this part of the page reruns): bits/dim against steps and
against seconds, each layout's cost, every head's attention of the probe pixel, and the
completions. At the end each model is an ordinary run folder that the other pages open.

Before anyone trains, the page shows a finished race shipped with the project (SHIPPED_RACE:
dense, strided and fixed at 14 x 14, trained with python -m tools.bench_race on a CPU; its
README says how), drawn by the same code from its saved folder (analysis.race.load_race).
"""

import streamlit as st

from analysis.race import (
    LAYOUT_KINDS,
    MAX_LANES,
    RACE_FAMILIES,
    RaceConfig,
    RaceFileError,
    RaceView,
    check_race,
    family_defaults,
    family_param_ranges,
    layout_spec_for,
    load_race,
    race_memory,
)
from app_pages import limits
from app_pages.jobs import Refused, over_budget
from app_pages.models_cache import PLAYGROUND_PREFIX, ROOT, model_device, runs_dir
from app_pages.playground_job import (
    OFF_WORDS,
    ON_WORDS,
    PLAYGROUND_ENV,
    TRAINING_POOL,
    playground_data,
    playground_setting,
    race_folder,
    start_race,
)
from app_pages.playground_race import draw_race, folder_name
from app_pages.pool_ui import queue_place, session_alive
from app_pages.settings import LAYOUT_FAMILIES, Setting, clamp_setting, declare_settings
from app_pages.text import as_text
from models.tokens import Geometry

REFRESH_SECONDS = 1.0  # how often the live part redraws while a race runs
PRESETS = ("fmnist-tiny", "fmnist-mini", "fmnist-small")  # small enough for a CPU
SIZES = {"14 x 14 (Fashion-MNIST downsampled by 2)": 14, "28 x 28 (Fashion-MNIST)": 28}
STEPS_MAX, MINUTES_MAX = 20_000, 30.0
SHIPPED_RACE = ROOT / "assets" / "races" / "fmnist14-dense-strided-fixed"

st.title("Playground: race layouts and watch their heads form")
st.caption(
    f"Train small models with up to {MAX_LANES} attention layouts side by side (dense, strided "
    "and fixed by default; any static family: axial, neighborhood, sinks, dilated, "
    "block-sparse, BigBird...), on this server's CPU. They start from the same weights, see "
    "the same images in the same order and take "
    "turns step by step, so at any moment they have had the same steps and the same time. "
    "Watch bits/dim fall, the attention of a probe pixel sharpen in every head, and the "
    "models complete held-out images; the result is saved as run folders that the Attention, "
    "Training and other pages open."
)
_on, _unknown = playground_setting()
if not _on:
    why = (
        f"{PLAYGROUND_ENV} is {_unknown!r}, which is not one of its words, so it stays off "
        f"(on: {', '.join(ON_WORDS)}; off: {', '.join(OFF_WORDS)})"
        if _unknown is not None
        else f"{PLAYGROUND_ENV}=off"
    )
    st.info(
        as_text(f"The Playground is switched off on this server ({why}): ")
        + "training would let every visitor spend its CPU for minutes. Run the app on your own "
        "machine to use it, or train from the command line: python -m tools.train --size 14 "
        "--timeline-probes 2 ..."
    )
    st.stop()

declare_settings(  # what to race (declared once the Playground is on)
    Setting("pg_layouts", list, list(LAYOUT_KINDS), 0, MAX_LANES, choices=LAYOUT_FAMILIES),
    Setting(
        "pg_preset", str, "fmnist-mini", choices=("fmnist-tiny", "fmnist-mini", "fmnist-small")
    ),
    Setting("pg_size", str, next(iter(SIZES))),  # the page checks it is one of its sizes
    Setting("pg_budget", str, "minutes", choices=("minutes", "steps")),
    Setting("pg_minutes", float, 2.0, 0.5, 30.0),
    Setting("pg_steps", int, 300, 1, 20_000),
    Setting("pg_seed", int, 0, limits.SEED.low, limits.SEED.high),
    Setting("pg_strided_l", int, None, 1, 784),
    Setting("pg_fixed_l", int, None, 1, 784),
    Setting("pg_fixed_c", int, None, 1, 784),
)

if st.session_state.pg_size not in SIZES:  # a link's
    st.session_state.pg_size = next(iter(SIZES))
c1, c2, c3 = st.columns([3, 2, 3])
st.session_state.pg_layouts = [k for k in st.session_state.pg_layouts if k in RACE_FAMILIES][
    :MAX_LANES
]  # a link's list may hold names this page does not race, or too many
kinds = c1.multiselect(
    "Layouts to race",
    list(RACE_FAMILIES),
    key="pg_layouts",
    max_selections=MAX_LANES,
    help=f"Up to {MAX_LANES} families, each once: a lane is named after its family, and so is "
    "its run folder (race two settings of one family in two races).",
)
preset = c2.selectbox(
    "Preset",
    PRESETS,
    key="pg_preset",
    help="fmnist-tiny: 2 layers x 2 heads, width 32; fmnist-mini: 4 x 4, width 64; "
    "fmnist-small: 4 x 4, width 128 (about 2x mini's time a step)",
)
size = SIZES[c3.radio("Image size", list(SIZES), key="pg_size", horizontal=True)]
geometry = Geometry(size, size, 1)
row = geometry.row_stride
b1, b2, b3 = st.columns([2, 2, 2])
budget = b1.radio("Budget", ["minutes", "steps"], key="pg_budget", horizontal=True)
if budget == "minutes":
    minutes = b2.number_input(
        "Minutes (the whole race)", 0.5, MINUTES_MAX, step=0.5, key="pg_minutes"
    )
    steps = None
else:
    steps = int(b2.number_input("Steps (each layout)", 1, STEPS_MAX, step=50, key="pg_steps"))
    minutes = None
seed = int(b3.number_input("Seed", 0, 2**31 - 1, key="pg_seed"))

# every family's parameters, sized for the image (one image row where the family has a
# period; fixed's c the one whose density reaches strided's, as on the Layouts page); a new image
# size sets them back to its defaults (fixed's c stays: it is no length)
n_tokens = geometry.n_tokens
resized = st.session_state.get("pg_row_for") != row
for kind in RACE_FAMILIES:
    for name, value in family_defaults(kind, row, n_tokens).items():
        key = f"pg_{kind}_{name}"
        if key not in st.session_state or resized and key != "pg_fixed_c":
            st.session_state[key] = value
        clamp_setting(key, *family_param_ranges(kind, n_tokens)[name])  # a link's may not fit
st.session_state.pg_row_for = row
with st.expander("Layout parameters and probe pixel"):
    params: dict[str, dict[str, int]] = {}
    for kind in (k for k in RACE_FAMILIES if k in kinds and k != "dense"):
        ranges = family_param_ranges(kind, n_tokens)
        cols = st.columns(max(5, len(ranges)))
        params[kind] = {
            name: int(
                col.number_input(
                    f"{kind} {name}",
                    lo,
                    hi,
                    key=f"pg_{kind}_{name}",
                    help=f"{lo}..{hi}; default {family_defaults(kind, row, n_tokens)[name]}",
                )
            )
            for col, (name, (lo, hi)) in zip(cols, ranges.items(), strict=False)
        }
        st.caption(
            as_text(
                f"{kind}: "
                + ", ".join(f"{name} in {lo}..{hi}" for name, (lo, hi) in ranges.items())
            )
        )
    p4, p5 = st.columns(2)
    probe_row = int(p4.number_input("probe row", 0, size - 1, size // 2, key=f"pg_prow{size}"))
    probe_col = int(p5.number_input("probe column", 0, size - 1, size // 2, key=f"pg_pcol{size}"))
specs: dict[str, str] = {}
problem = None
for kind in (k for k in RACE_FAMILIES if k in kinds):
    try:
        specs[kind] = layout_spec_for(kind, row, n_tokens, **params.get(kind, {}))
    except ValueError as e:
        problem = problem or str(e)
cfg = RaceConfig(
    layouts=tuple(specs.values()),
    preset=preset,
    size=size,
    data=playground_data(),
    seed=seed,
    steps=steps,
    minutes=minutes,
    pixel=(probe_row, probe_col),
)
memory = 0
if problem is None:
    try:
        memory = race_memory(cfg)
    except ValueError as e:
        problem = str(e)
refusal = problem or over_budget(
    "This race", memory, "Choose a smaller preset, 14 x 14 images or fewer layouts."
)
if not problem:
    configs = check_race(cfg)
    n = configs[0].geometry.n_tokens
    parts = [
        f"{c.layouts[0]!r}: {c.layouts[0].nnz(n) / n:.1f} keys a query"
        for c in configs  # the same for every layer: one spec per race lane
    ]
    st.caption(
        as_text(f"{len(configs)} models of {n} tokens; {'; '.join(parts)}; about ")
        + f"{memory / 2**20:,.0f} MB of memory."
    )

job = st.session_state.get("pg_job")
running = job is not None and not job.finished
t1, t2 = st.columns([1, 5])
if t1.button("Train", key="pg_train", type="primary", disabled=running or bool(refusal)):
    try:  # the folder is reserved now: two races queued in one second get two
        folder = race_folder(runs_dir(), PLAYGROUND_PREFIX)
        job = start_race(cfg, folder, alive=session_alive(), device=model_device())
    except (Refused, ValueError, OSError) as e:  # start_race released the empty folder
        st.error(as_text(e))
    else:
        st.session_state.pg_job = job
        running = True
if refusal:
    st.error(as_text(refusal))
if running:
    t2.button("Stop", key="pg_stop", on_click=job.cancel, args=("stopped",))


@st.cache_resource(show_spinner=False, max_entries=2)
def shipped_race(path: str, stamp: float) -> RaceView:
    """The shipped race's folder as a RaceView (kept while race.json's time stays)."""
    return load_race(path)


def shipped_view() -> RaceView | str:
    """The shipped race, or a message saying why it cannot be shown."""
    try:
        stamp = (SHIPPED_RACE / "race.json").stat().st_mtime
        return shipped_race(str(SHIPPED_RACE), stamp)
    except (OSError, RaceFileError) as e:
        return f"The shipped race cannot be shown: {e}"


@st.fragment(run_every=REFRESH_SECONDS if running else None)
def live(was_running: bool) -> None:
    job = st.session_state.get("pg_job")
    if job is None:
        view = shipped_view()
        if isinstance(view, str):
            st.info("Choose the layouts and a budget, then press Train.")
            st.warning(as_text(view))
            return
        st.info(
            "Choose the layouts and a budget, then press Train. Until then, here is a finished "
            "race shipped with the project: "
            + as_text(
                f"{', '.join(lane.name for lane in view.lanes)} at "
                f"{view.probes.shape[1]} x {view.probes.shape[2]}, {view.step} steps each in "
                f"{view.elapsed / 60:.1f} minutes on a CPU ({folder_name(view.folder)}/README.md "
                "says how it was trained)."
            )
        )
        st.progress(
            min(1.0, view.step / view.total) if view.total else 1.0,
            text=f"shipped race: step {view.step} · {view.elapsed:.0f} s · {view.end}",
        )
        draw_race(view, shipped=True, geometry=geometry)
        return
    task = job.task
    if was_running and task.finished:
        st.rerun()  # the whole page: Train comes back, Stop goes
    waiting = queue_place(TRAINING_POOL, task, "Your race")
    if waiting is not None:
        st.info(
            waiting + " Another playground training is running on this server (one at a time); "
            "yours starts when the one before it ends."
        )
        return
    view = job.state.view()
    if task.finished and task.error:
        st.error("The race failed: " + as_text(task.error))
        if not view.lanes:  # before its first step: nothing was kept
            return
    if view.phase == "discarded" or (task.finished and not view.lanes and not task.error):
        st.info(
            as_text(
                f"The race ended before its first step ({view.end or task.reason or 'stopped'}): "
                "nothing was trained, so nothing was saved."
            )
        )
        return
    total = view.total
    if view.phase == "loading":
        st.caption("Loading the images and building the models...")
        return
    # one truth: how the race ended is the word race.json holds (analysis.race END_*)
    if view.end is not None:
        status = f"{view.phase} ({view.end})"
    elif task.cancelled and not task.finished:
        status = "stopping"
    else:
        status = view.phase
    if total:
        of = f" of {total}"
    elif view.phase == "training":
        of = " (timing the first steps to set the schedule)"
    else:
        of = ""
    st.progress(
        min(1.0, view.step / total) if total else 0.0,
        text=f"step {view.step}{of} · {view.elapsed:.0f} s · {status}",  # our own words
    )
    draw_race(view, shipped=False, geometry=geometry)


live(running)
