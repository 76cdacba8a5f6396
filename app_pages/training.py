"""Training: attention as it forms, from the timeline a run records (analysis/timeline.py).

Any run folder under runs/ ($SPARSE_EXPLORER_RUNS; the Playground's races are there too), the
shipped runs (assets/runs/) or the models folder; one without timeline.npz is named as such
(its bits/dim curve from run.json is still drawn when it has one). A slider scrubs through the
snapshots: every head's attention of the probe pixel, the row-pooled maps, each head's metric
and type as curves, and bits/dim.
"""

from pathlib import Path

import numpy as np
import streamlit as st

from analysis.maps import pixel_map, token_map
from analysis.metrics import HEAD_TYPES
from analysis.timeline import TIMELINE_NPZ, Timeline, TimelineError, load_timeline
from app_pages.export_panel import export_panel
from app_pages.models_cache import ROOT, models_dir, runs_dir
from app_pages.pickers import show_image
from app_pages.settings import Setting, declare_settings, pixel, view_fragment
from app_pages.text import as_text
from models.checkpoint import CheckpointError
from models.run_folder import RUN_FILE, RunRecord, read_run_record
from models.tokens import Geometry
from viz.charts import bpd_figure, curves_figure
from viz.export import Exportable, safe_name
from viz.head_tables import type_timeline_figure
from viz.mosaics import head_grid_figure

SHIPPED_RUNS = ROOT / "assets" / "runs"  # runs shipped with a timeline (their cards say how)
SHIPPED_RACES = ROOT / "assets" / "races"  # the Playground's shipped race: <race>/<layout>/
METRIC_HELP = {
    "coverage_strided": "share of attention on pairs strided allows",
    "coverage_fixed": "share of attention on pairs fixed allows",
    "entropy": "bits; log2 k for k keys weighted equally",
    "k90": "fewest keys holding 90 % of the attention",
    "distance": "mean distance in pixels from query to key",
    "same_row": "share on keys in the query's row",
    "same_col": "share on keys in the query's column",
}

# trn_path, the typed folder, is no setting on purpose: it is free text naming a place on the
# server's disk, which a link would have every visitor's server read (the folders listed in
# trn_folder are checked against what is there)
declare_settings(
    Setting("trn_folder", str),
    Setting("trn_step", int, None, 0, None),  # a snapshot's step: the page checks the run has it
    pixel("trn_probe", 0),
    Setting("trn_metric", str),  # the page checks the run recorded it
)
st.title("Training: attention as it forms")
st.caption(
    "A run trained with `--timeline-probes N` records, at log-spaced steps, a small snapshot "
    "on N fixed test images: every head's attention of one probe pixel, the attention pooled "
    "by image rows, each head's metrics and type, and bits/dim. Scrub through the steps to see "
    "heads go from uniform to local, row and column attention."
)


def run_folders() -> list[str]:
    """Folders under runs/ (two levels), the shipped runs and race, and the models folder that
    hold a model or a timeline, as paths relative to the project where they are inside it."""
    found = []
    for base in (runs_dir(), SHIPPED_RUNS, SHIPPED_RACES, models_dir()):
        if not base.is_dir():
            continue
        for p in sorted([*base.glob("*"), *base.glob("*/*")]):
            if p.is_dir() and any((p / f).is_file() for f in (TIMELINE_NPZ, "config.json")):
                found.append(p)
    out = []
    for p in found:
        try:
            out.append(str(p.resolve().relative_to(ROOT)))
        except ValueError:
            out.append(str(p.resolve()))
    # runs with a timeline first; the Playground's shipped race after the shipped run
    races = str(SHIPPED_RACES.relative_to(ROOT))
    return sorted(
        dict.fromkeys(out),
        key=lambda s: (not (ROOT / s / TIMELINE_NPZ).is_file(), s.startswith(races), s),
    )


MAX_PATH_CHARS = 1024  # a typed path longer than this is no folder of a run


def allowed(path: Path) -> bool:
    """Only folders inside the project or the models folder are read (a visitor's text is
    data, not a licence to browse the server's disk)."""
    path = path.resolve()
    return any(path.is_relative_to(base.resolve()) for base in (ROOT, models_dir(), runs_dir()))


def path_problem(text: str) -> str | None:
    """Why a typed folder path cannot be a folder (a NUL byte, too long, a name longer than
    the file system allows), as a message; None when it may be looked up."""
    if "\x00" in text:
        return "holds a NUL character: no file name can"
    if len(text) > MAX_PATH_CHARS:
        return (
            f"is {len(text):,} characters long: this page reads paths of at most {MAX_PATH_CHARS:,}"
        )
    longest = max(
        (len(part.encode("utf-8", "surrogatepass")) for part in Path(text).parts), default=0
    )
    if longest > 255:
        return f"has a name of {longest} bytes: a file name has at most 255"
    return None


def mtime(path: Path) -> float:
    """The modification time of ``path``, 0.0 when it cannot be read (missing, unreadable)."""
    try:
        return path.stat().st_mtime
    except (OSError, ValueError):
        return 0.0


@st.cache_data(max_entries=8, ttl=3600, show_spinner=False)
def cached_timeline(path: str, stamp: float) -> Timeline | None:
    """The timeline of a folder, re-read when its file changes (``stamp``: its mtime)."""
    return load_timeline(path)


@st.cache_data(max_entries=8, ttl=3600, show_spinner=False)
def cached_record(path: str, stamp: float) -> RunRecord | None:
    """run.json of a folder (read through models/files.py: a regular file, bounded), its
    history kept to the entries a curve can use; None when there is none or it is unreadable."""
    file = Path(path) / RUN_FILE
    if not file.exists():
        return None
    try:
        record = read_run_record(file)
    except CheckpointError:
        return None
    history = record.history if isinstance(record.history, list) else []
    record.history = [
        h
        for h in history
        if isinstance(h, dict)
        and isinstance(h.get("step"), int)
        and all(isinstance(h.get(k, 0.0), (int, float)) for k in ("train_bpd", "test_bpd"))
    ]
    return record


choices = run_folders()
if st.session_state.get("trn_folder") not in choices:  # a link from another server, or gone
    st.session_state.pop("trn_folder", None)
c1, c2 = st.columns([2, 3])
folder_name = c1.selectbox(
    "Run folder", choices or ["(none found)"], key="trn_folder", help="runs/ and the models"
)
typed = c2.text_input(
    "or a folder path (inside the project)", key="trn_path", placeholder="runs/my_run"
).strip()
problem = path_problem(typed) if typed else None
if problem:
    st.error(f"{as_text(typed[:80])}{'...' if len(typed) > 80 else ''} {problem}: it is not read.")
    st.stop()
folder = ROOT / (typed or folder_name)
try:
    if typed and not allowed(folder):
        st.error(f"{as_text(typed)} is outside the project and the models folder: it is not read.")
        st.stop()
    is_folder = folder.is_dir()
except (OSError, ValueError) as e:  # what the checks above cannot foresee (a loop of links)
    st.error(f"{as_text(typed or folder_name)} cannot be looked up: {as_text(e)}")
    st.stop()
if not is_folder:
    st.warning(f"{as_text(typed or folder_name)} is not a folder.")
    st.stop()
record = cached_record(str(folder), mtime(folder / RUN_FILE))
npz = folder / TIMELINE_NPZ
try:
    timeline = cached_timeline(str(folder), mtime(npz))
except TimelineError as e:
    st.error(as_text(e))
    st.stop()

history = record.history if record is not None else []
train_xy = test_xy = None
if history:
    steps_h = np.array([h["step"] for h in history if "train_bpd" in h])
    train_h = np.array([h["train_bpd"] for h in history if "train_bpd" in h], dtype=float)
    window = max(1, len(train_h) // 100)  # at most ~100 points: a running mean
    if window > 1 and len(train_h) >= window:
        train_h = np.convolve(train_h, np.ones(window) / window, mode="valid")
        steps_h = steps_h[window - 1 :]
    train_xy = (steps_h, train_h)
    tests = [(h["step"], h["test_bpd"]) for h in history if "test_bpd" in h]
    if tests:
        test_xy = tuple(np.array(v) for v in zip(*tests, strict=True))

if timeline is None:
    st.info(
        f"{as_text(typed or folder_name)} has no timeline ({TIMELINE_NPZ}): it was trained without "
        "`--timeline-probes N`. Train with it (e.g. `python -m tools.train --preset "
        "fmnist-small --layout strided --steps 300 --out runs/demo --timeline-probes 4`) to "
        "see its attention form."
    )
    if train_xy is not None:
        fig = bpd_figure(train=train_xy, test=test_xy, probes=None)
        st.plotly_chart(fig, key="trn_bpd_only")
    st.stop()

meta = timeline.meta
steps = [int(s) for s in timeline.steps]
S, P, L, H, N = timeline.rows_u8.shape
height, width, channels = meta.get("geometry", [28, 28, 1])
geometry = Geometry(height, width, channels)
st.session_state.setdefault("trn_step", steps[-1])
if st.session_state.trn_step not in steps:  # another run's step
    st.session_state.trn_step = steps[-1]
st.session_state.trn_probe = min(max(int(st.session_state.trn_probe), 0), P - 1)

run_name = safe_name(folder.name)
run_meta = {"run": str(folder.relative_to(ROOT)) if folder.is_relative_to(ROOT) else str(folder)}


@view_fragment("trn")
def step_section() -> None:
    """The snapshot at the chosen step and probe: every head's map, the pooled maps and the
    probe's bits/dim there. A move of the slider reruns only this part."""
    left, right = st.columns(2)
    with left:
        step = st.select_slider("Step", options=steps, key="trn_step")
        s = steps.index(step)
        probe = st.selectbox(
            "Probe image",
            list(range(P)),
            key="trn_probe",
            format_func=lambda k: f"{k}: test image {meta.get('probe_images', list(range(P)))[k]}",
        )
    with right:
        image = token_map(np.asarray(timeline.probes[probe]), geometry)  # [h, w, c]
        pr, pc = meta.get("probe_pixel", [height // 2, width // 2])
        marked = np.repeat(image, 3, axis=2) if channels == 1 else image.copy()
        marked[pr, pc] = (255, 0, 0)
        show_image(marked, f"probe pixel ({pr}, {pc}) in red", width=160)
        st.metric("probe bits/dim", f"{timeline.probe_bpd[s]:.3f}")
        if np.isfinite(timeline.train_bpd[s]):
            st.caption(f"training batch at this step: {timeline.train_bpd[s]:.3f} bits/dim")
        st.caption(f"{S} snapshots; layouts: {', '.join(sorted(set(meta.get('layouts', []))))}")
    rows = timeline.rows[s, probe]  # [L, H, N]
    grid_fig = head_grid_figure(
        pixel_map(rows, geometry, None),  # [L, H, h, w]: weight on each key pixel (all tokens)
        f"step {step}: pixel ({pr}, {pc}), every head",
    )
    pooled = timeline.pooled[s].astype(np.float32)  # [L, H, n, n]
    pooled_fig = head_grid_figure(pooled, f"step {step}: pooled by image rows")
    a, b = st.columns(2)
    with a:
        st.plotly_chart(grid_fig, key="trn_grid")
    with b:
        st.plotly_chart(pooled_fig, key="trn_pooled")
    st.caption(
        "Left: where the probe pixel (red on the probe image) looks in every layer and head; "
        "right: each head's attention averaged over the probes in tiles of one image row (query "
        "row down, key row across). Each map is scaled to its own maximum."
    )
    step_meta = run_meta | {"step": step, "probe_image": probe, "probe_pixel": [pr, pc]}
    items = [
        Exportable(f"{run_name}_step{step}_probe{probe}_grid", grid_fig, {"rows": rows}, step_meta),
        Exportable(f"{run_name}_step{step}_pooled", pooled_fig, {"pooled": pooled}, step_meta),
        Exportable(
            f"{run_name}_bpd",
            bpd_fig,
            {"snapshot_steps": np.array(steps), "probe_bpd": timeline.probe_bpd}
            | ({"train_steps": train_xy[0], "train_bpd": train_xy[1]} if train_xy else {}),
            step_meta,
        ),
    ]
    export_panel(items, "trn_export", "Export these figures and data")


# drawn once, below the step's part: the step is not marked on it (a mark would redraw the chart
# at every move of the slider); the step's own bits/dim is the metric beside the probe image
bpd_fig = bpd_figure(train=train_xy, test=test_xy, probes=(np.array(steps), timeline.probe_bpd))
step_section()
st.plotly_chart(bpd_fig, key="trn_bpd")
names = [n for n in METRIC_HELP if n in timeline.metrics]
if st.session_state.get("trn_metric") not in names:  # not recorded by this run (or a link's)
    st.session_state.trn_metric = names[0] if names else None
m1, m2 = st.columns(2)
with m1:
    metric = st.selectbox(
        "Per-head metric",
        names,
        key="trn_metric",
        format_func=lambda n: f"{n}: {METRIC_HELP[n]}",
    )
    values = timeline.metrics[metric]  # [S, L, H]
    series = {f"L{i}H{j}": values[:, i, j] for i in range(L) for j in range(H)}
    metric_fig = curves_figure(
        steps,
        series,
        title=f"{metric} of every head (mean over the probes)",
        y_title=metric,
        # the step is not marked here nor on the types: a mark would redraw both charts at
        # every step of the slider
        x=list(range(S)),
        x_title="step (snapshots, log-spaced)",
        height=380,
    )
    st.plotly_chart(metric_fig, key="trn_metric_fig")
with m2:
    type_names = list(meta.get("head_types", []))
    lookup = np.array([HEAD_TYPES.index(t) if t in HEAD_TYPES else 0 for t in type_names] or [0])
    codes = lookup[timeline.types.astype(np.int64)]  # [S, L, H] into HEAD_TYPES
    types_fig = type_timeline_figure(codes, steps, title="head types over training")
    st.plotly_chart(types_fig, key="trn_types")
items = [
    Exportable(
        f"{run_name}_{metric}",
        metric_fig,
        {"steps": np.array(steps), metric: values},
        run_meta | {"metric": metric},
    ),
    Exportable(
        f"{run_name}_types",
        types_fig,
        {"steps": np.array(steps), "types": codes, "names": np.array(HEAD_TYPES)},
        run_meta,
    ),
]
export_panel(items, "trn_history_export", "Export the history figures and data")
