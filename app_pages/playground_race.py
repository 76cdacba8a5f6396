"""The Playground page's race as it is drawn (live or saved, or the shipped one): bits/dim
curves, each layout's costs, every head's attention of the probe pixel, completions, and once
saved the folders, links to the Training page and exports."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import streamlit as st

from analysis.maps import pixel_map
from analysis.race import RaceView
from app_pages.export_panel import export_panel
from app_pages.models_cache import ROOT
from app_pages.pickers import show_image
from app_pages.text import as_text
from kernels.composed import CROSSOVER_N
from models.tokens import Geometry
from viz.export import Exportable
from viz.mosaics import head_grid_figure
from viz.race_figures import Curve, coinciding, race_curves_figure, separation

GAP = 0.1  # bits/dim: held-out curves this far apart (best to worst) count as a difference


def curves_of(view: RaceView) -> list[Curve]:
    return [
        Curve(
            name=lane.name,
            steps=np.asarray(lane.steps),
            seconds=np.asarray(lane.seconds),
            train_bpd=np.asarray(lane.train_bpd),
            test_steps=np.asarray([t[0] for t in lane.test]),
            test_seconds=np.asarray([t[1] for t in lane.test]),
            test_bpd=np.asarray([t[2] for t in lane.test]),
        )
        for lane in view.lanes
    ]


def cost_table(view: RaceView) -> str:
    """Markdown: each layout's cost beside its bits/dim (numbers and our own layout specs)."""
    lines = [
        "| layout | keys a query (nnz / N) | density | attention kernel | "
        "ms a step: median (p10-p90) | steps | train bits/dim (last 20) | held-out bits/dim |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for lane in view.lanes:
        per_step, spread = lane.seconds_per_step, lane.step_spread
        timing = (
            ""
            if per_step is None or spread is None
            else f"{per_step * 1e3:.0f} ({spread[0] * 1e3:.0f}-{spread[1] * 1e3:.0f})"
        )
        train = np.mean(lane.train_bpd[-20:]) if lane.train_bpd else float("nan")
        test = lane.test[-1][2] if lane.test else float("nan")
        lines.append(
            f"| {as_text(lane.spec)} | {lane.nnz / lane.tokens:.1f} | {lane.density:.3f} | "
            f"{lane.backend} | {timing} | "
            f"{lane.steps[-1] if lane.steps else 0} | {train:.3f} | {test:.3f} |"
        )
    return "\n".join(lines)


def type_counts(types: list[list[str]] | None) -> str:
    if not types:
        return ""
    flat = [t for layer in types for t in layer]
    return ", ".join(f"{t} {flat.count(t)}" for t in sorted(set(flat), key=flat.index))


def strip(images: np.ndarray) -> np.ndarray:
    """Images [k, H, W, 1] side by side with a one-pixel gray gap: [H, k (W + 1) - 1, 1]."""
    k, h, w, c = images.shape
    out = np.full((h, k * (w + 1) - 1, c), 96, np.uint8)
    for i in range(k):
        out[:, i * (w + 1) : i * (w + 1) + w] = images[i]
    return out


def folder_name(path: str) -> str:
    """A run folder as the Training page lists it (relative to the project where inside)."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(ROOT))
    except ValueError:
        return str(p)


def difference_note(view: RaceView, curves: list[Curve]) -> str:
    """How long a live race needs to show a difference, read off a finished race: from which
    step the held-out curves stay GAP apart (best to worst), in each model's training seconds
    and in minutes of the race at its pace; and how close the closest two ended."""
    apart = separation(curves, GAP)
    steps = max(view.step, 1)
    if apart is None:
        when = (
            f"the layouts' held-out bits/dim never stay {GAP} apart in its "
            f"{view.elapsed / 60:.0f} minutes: a live race shows them learning together"
        )
    else:
        when = (
            f"the layouts' held-out bits/dim stay at least {GAP} apart (best to worst) from step "
            f"{apart[0]} on: {apart[1]:.0f} s of each model's own training, about "
            f"{view.elapsed * apart[0] / steps / 60:.1f} minutes of this race "
            f"(evaluations and snapshots included); a live race needs at least that"
        )
    ends = sorted((lane.test[-1][2], lane.name) for lane in view.lanes if lane.test)
    close = ""
    if len(ends) >= 2:
        gap, a, b = min((y[0] - x[0], x[1], y[1]) for x, y in zip(ends, ends[1:], strict=False))
        close = (
            f". The closest two, {a} and {b}, end {gap:.3f} bits/dim apart after "
            f"{view.elapsed / 60:.0f} minutes: a gap that small needs a longer race (and more "
            "than a few dozen held-out images) to tell from noise"
        )
    return f"How long a live race needs to show a difference: in this race {when}{close}."


def draw_race(view: RaceView, *, shipped: bool, geometry: Geometry) -> None:
    """Curves, costs, head maps and completions of a race (live or saved), and once saved its
    folders, links to the Training page and exports (``geometry``: the page's, for a race
    that has no probe yet)."""
    curves = curves_of(view)
    by_step, by_time = draw_curves(view, curves)
    if shipped:
        st.caption(as_text(difference_note(view, curves)))
    st.markdown(cost_table(view))
    st.caption(COSTS_NOTE)
    grids = draw_heads(view, geometry)
    if view.phase == "saved":
        draw_saved(view, shipped=shipped)
        items = [
            Exportable(
                "race_bpd_steps",
                by_step,
                {f"{c.name}_train": c.train_bpd for c in curves},
                {"race": folder_name(view.folder)},
            ),
            Exportable(
                "race_bpd_seconds",
                by_time,
                {f"{c.name}_seconds": c.seconds for c in curves},
                {"race": folder_name(view.folder)},
            ),
        ] + [
            Exportable(
                f"race_{lane.name}_heads_step{lane.snapshot_step}",
                fig,
                {"rows": lane.rows},
                {"race": folder_name(view.folder), "layout": lane.spec},
            )
            for lane, fig in grids
        ]
        export_panel(items, "pg_export", "Export these figures and data")


def draw_curves(view: RaceView, curves: list[Curve]):
    """Bits/dim against steps and against seconds, side by side, and a note for curves drawn
    on top of each other. Returns the two figures."""
    a, b = st.columns(2)
    by_step = race_curves_figure(curves, against="steps", baselines=view.baselines)
    by_time = race_curves_figure(curves, against="seconds", baselines=view.baselines)
    a.plotly_chart(by_step, key="pg_by_step")
    b.plotly_chart(by_time, key="pg_by_time")
    for group in coinciding(curves):
        nnz = {lane.nnz for lane in view.lanes if lane.name in group}
        why = (
            "their layouts allow the same (query, key) pairs at this image size, so the models "
            "compute the same numbers"
            if len(nnz) == 1
            else "their layouts differ, but have not yet changed any number the curves show "
            "(the same start, the same batches)"
        )
        st.caption(
            as_text(
                f"{' and '.join(group)}: the same bits/dim at every step so far, so their curves "
                f"are drawn on top of each other and look like one line ({why})."
            )
        )
    return by_step, by_time


COSTS_NOTE = (
    "Seconds are each model's own training steps (evaluations, snapshots and completions "
    "not counted); ms a step is their median, with the 10th-90th percentiles beside it, "
    "so that one stalled step does not become the number. nnz: the (query, key) pairs a "
    "layer's head may use. Attention kernel: "
    "what kernels/dispatch.py runs for the layout at this many tokens. `sdpa` is torch's "
    "dense attention under a mask: it computes every pair, so there fewer pairs do not mean "
    "fewer seconds. `composed` computes only the layout's pairs; on a CPU it pays only "
    f"from a measured length on ({CROSSOVER_N['strided']} tokens for strided; the Models & "
    "speed page)."
)


def draw_heads(view: RaceView, geometry: Geometry) -> list:
    """Each lane's heads on the probe pixel and its completions, then the probe image.
    Returns (lane, figure) for each lane drawn."""
    g = Geometry(*view.probes.shape[1:]) if view.probes is not None else geometry
    pr, pc = view.probe_pixel or (g.height // 2, g.width // 2)
    cols = st.columns(len(view.lanes))
    grids = []
    for col, lane in zip(cols, view.lanes, strict=True):
        with col:
            if lane.rows is None:
                continue
            fig = head_grid_figure(
                pixel_map(lane.rows, g, None),  # [L, H, h, w]
                f"{lane.name}, step {lane.snapshot_step}: pixel ({pr}, {pc}), every head",
            )
            st.plotly_chart(fig, key=f"pg_heads_{lane.name}")
            st.caption("head types: " + as_text(type_counts(lane.types)))
            grids.append((lane, fig))
            if lane.completions is not None and view.kept is not None:
                show_image(
                    strip(np.concatenate([view.kept, lane.completions])),
                    f"step {lane.completion_step}: kept halves, then {lane.name}'s completions",
                    width=60 * (len(view.kept) + len(lane.completions)),
                )
    if view.probes is not None:
        marked = np.repeat(view.probes[0], 3, axis=2)
        marked[pr, pc] = (255, 0, 0)
        show_image(marked, f"probe image, pixel ({pr}, {pc}) in red", width=110)
    return grids


def draw_saved(view: RaceView, *, shipped: bool) -> None:
    """A saved race's folders, each model's button to the Training page."""
    lanes = ", ".join(lane.name for lane in view.lanes)
    word = "Shipped" if shipped else "Saved"
    st.success(f"{word}: " + as_text(f"{folder_name(view.folder)}/ ({lanes})"))
    o = st.columns(len(view.lanes) + 1)
    for k, lane in enumerate(view.lanes):
        if o[k].button(f"Open {lane.name} on the Training page", key=f"pg_open_{lane.name}"):
            st.session_state.trn_folder = folder_name(lane.folder)
            st.switch_page("app_pages/training.py")
    if not shipped:
        race = Path(view.folder).name
        names = ", ".join(f"{race}/{lane.name}" for lane in view.lanes)
        st.caption("The models are also in every page's model list: " + as_text(names) + ".")
