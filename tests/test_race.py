"""analysis/race.py: layouts trained side by side, fairly, into ordinary run folders; and the
14 x 14 Fashion-MNIST the race trains on (models.datasets.downsample), on tiny synthetic data."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
import torch

from analysis.race import (
    END_BUDGET,
    END_SCHEDULE,
    RACE_FAMILIES,
    Lane,
    RaceConfig,
    RaceFileError,
    RaceState,
    check_race,
    family_defaults,
    family_param_ranges,
    layout_spec_for,
    load_race,
    race_memory,
    run_race,
    snapshot_due,
    uniform_observed_bpd,
)
from analysis.timeline import load_timeline
from kernels.composed import CROSSOVER_N
from kernels.layouts import parse_layout
from models import load_model
from models.datasets import downsample, held_out_source, load_images
from models.tokens import Geometry
from models.training import Ranks, TrainConfig, model_config, start_run
from tests.test_training import tiny_data  # noqa: F401  (a fixture)

RANKS = Ranks(0, 1, torch.device("cpu"))


def race(data: str, **kw) -> RaceConfig:
    base = dict(
        layouts=("dense", "strided", "fixed"),
        preset="fmnist-tiny",
        size=14,
        data=data,
        steps=6,
        minutes=None,
        batch_size=4,
        warmup=2,
        eval_every=3,
        eval_images=4,
        completions=1,
        complete_every=3,
    )
    return RaceConfig(**(base | kw))


def test_downsample_is_a_block_mean_and_a_data_option(tiny_data):  # noqa: F811
    images = np.arange(16, dtype=np.uint8).reshape(1, 4, 4, 1)
    small = downsample(images, 2)
    assert small.shape == (1, 2, 2, 1)
    assert small[0, :, :, 0].tolist() == [[3, 5], [11, 13]]  # (0+1+4+5)/4 = 2.5 -> 3
    with pytest.raises(ValueError):
        downsample(images, 3)
    full = load_images(tiny_data, "train", Geometry(28, 28, 1))
    half = load_images(tiny_data, "train", Geometry(14, 14, 1))
    assert half.shape == (len(full), 14, 14, 1)
    assert np.array_equal(half, downsample(full, 2))
    assert held_out_source(Geometry(14, 14, 1)) == "fashion-mnist"
    with pytest.raises(ValueError, match="divides 28"):
        load_images(tiny_data, "train", Geometry(12, 12, 1))
    # the training code's option: --size 14 makes the model's geometry and layouts follow
    mc = model_config(TrainConfig(preset="fmnist-tiny", layout="strided", size=14))
    assert mc.geometry == Geometry(14, 14, 1) and mc.layout == "strided(l=14)"


def test_a_race_is_fair_and_ends_in_run_folders(tiny_data, tmp_path):  # noqa: F811
    state = RaceState()
    out = tmp_path / "race"
    record = run_race(race(tiny_data), out, state=state)
    view = state.view()
    assert view.phase == "saved" and record["stopped"] is None
    names = [lane.name for lane in view.lanes]
    assert names == ["dense", "strided", "fixed"]
    # equal steps, the same start (same seed and weights), the same batches
    assert all(lane.steps == list(range(1, 7)) for lane in view.lanes)
    # the same start: same seed, so the same weights (a layout has no parameters)
    a, b = (
        start_run(race(tiny_data).train_config(spec), tmp_path / spec, RANKS, resume=False)
        for spec in ("dense", "strided")
    )
    assert all(
        torch.equal(x, y)
        for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values(), strict=True)
    )
    for lane in view.lanes:
        assert lane.seconds == sorted(lane.seconds) and lane.seconds[-1] > 0
        assert lane.rows.shape == (2, 2, 196) and lane.snapshot_step == 6
        assert lane.completions.shape == (1, 14, 14, 1)
        assert [t[0] for t in lane.test] == [0, 3, 6]
        folder = out / lane.name
        model = load_model(folder)  # an ordinary run folder
        assert model.config.geometry == Geometry(14, 14, 1)
        run = json.loads((folder / "run.json").read_text())
        assert run["steps"] == 6 and run["final"]["step"] == 6
        assert any("test_bpd" in h for h in run["history"])
        timeline = load_timeline(folder)
        assert timeline.steps[0] == 0 and timeline.steps[-1] == 6
    assert view.lanes[1].nnz < view.lanes[0].nnz  # strided keeps fewer pairs than dense
    # at 196 tokens on the CPU the masked SDPA beats composing (kernels.composed.CROSSOVER_N)
    assert min(CROSSOVER_N.values()) > 196
    assert [lane.backend for lane in view.lanes] == ["sdpa"] * 3
    saved = json.loads((out / "race.json").read_text())
    assert set(saved["layouts"]) == {"dense", "strided", "fixed"}
    assert saved["layouts"]["strided"]["backend"] == "sdpa"
    assert saved["baselines"]["uniform over observed values"] <= 8.0
    assert saved["end"] == view.end == END_SCHEDULE and saved["stopped"] is None
    # weights only: no optimizer state, nothing but the run folder's files
    for lane in view.lanes:
        assert sorted(p.name for p in (out / lane.name).iterdir()) == [
            "config.json",
            "model.safetensors",
            "run.json",
            "timeline.json",
            "timeline.npz",
        ]
    # the saved folder reads back as the view the page drew at the end (curves, head maps,
    # completions, probes and how it ended): what the Playground shows of a shipped race
    back = load_race(out)
    assert back.end == view.end and back.step == view.step == 6 and back.total == 6
    assert back.probe_pixel == view.probe_pixel and back.baselines == view.baselines
    assert np.array_equal(back.probes, view.probes) and np.array_equal(back.kept, view.kept)
    for a, b in zip(back.lanes, view.lanes, strict=True):
        assert (a.name, a.spec, a.nnz, a.backend) == (b.name, b.spec, b.nnz, b.backend)
        assert a.steps == b.steps and [t[::2] for t in a.test] == [t[::2] for t in b.test]
        assert [t[1] for t in a.test] == pytest.approx([t[1] for t in b.test], abs=1e-4)
        assert a.train_bpd == pytest.approx(b.train_bpd, abs=1e-5)
        assert a.seconds == pytest.approx(b.seconds, abs=1e-4)
        assert a.snapshot_step == b.snapshot_step and a.types == b.types
        assert np.allclose(a.rows, b.rows, atol=b.rows.max() / 255)
        assert a.completion_step == b.completion_step
        assert np.array_equal(a.completions, b.completions)
    (out / "race.json").write_text("[1]")
    with pytest.raises(RaceFileError, match="not a race record"):
        load_race(out)
    (out / "race.json").unlink()
    os.mkfifo(out / "race.json")  # a FIFO is refused, not read (reading it would block)
    with pytest.raises(RaceFileError, match="FIFO"):
        load_race(out)


def test_a_stopped_race_saves_what_it_has(tiny_data, tmp_path):  # noqa: F811
    state = RaceState()
    calls = []

    def cancelled() -> bool:
        calls.append(1)  # after two rounds of three layouts and one step more
        return sum(len(lane.steps) for lane in state.lanes) >= 7

    record = run_race(
        race(tiny_data, steps=50),
        tmp_path / "r",
        state=state,
        cancelled=cancelled,
    )
    assert record["stopped"] == "stopped" == record["end"] == state.view().end
    steps = {name: r["step"] for name, r in record["layouts"].items()}
    assert steps["dense"] == 3 and steps["strided"] == 2  # stopped mid-round
    assert load_model(tmp_path / "r" / "dense").config.n_layer == 2


@pytest.mark.parametrize("after", [0, 1, 2, 4, 6, 9, 12])
def test_a_race_stopped_before_its_first_step_leaves_nothing(tiny_data, tmp_path, after):  # noqa: F811
    """Stopped while it loads the data, builds the lanes or takes their first snapshots and
    held-out points: no model is saved (none would be trained), and the folder reserved for it
    goes too; cancellation is asked during loading and set-up, not only once a step."""
    state = RaceState()
    phases = []

    def cancelled() -> bool:
        phases.append(state.phase)
        return len(phases) > after

    runs = tmp_path / "runs"
    runs.mkdir()
    out = runs / "playground-1"
    out.mkdir()  # reserved when it was queued
    record = run_race(
        race(tiny_data),
        out,
        state=state,
        cancelled=cancelled,
        reason=lambda: "the session ended",
    )
    assert record["saved"] is False and record["end"] == "the session ended"
    assert state.view().phase == "discarded" and state.view().end == "the session ended"
    assert list(runs.iterdir()) == []  # nothing behind: no models, no folder
    assert state.view().step == 0
    if after == 0:
        assert phases == ["loading"]  # asked before the data is read


def test_cancellation_is_asked_while_loading_and_setting_up(tiny_data, tmp_path):  # noqa: F811
    state = RaceState()
    phases = []

    def cancelled() -> bool:
        phases.append((state.phase, state.step))
        return False

    run_race(
        race(tiny_data, steps=1, completions=0),
        tmp_path / "r",
        state=state,
        cancelled=cancelled,
    )
    before_first_step = [p for p in phases if p[1] == 0]
    assert sum(phase == "loading" for phase, _ in before_first_step) >= 5  # data, 3 lanes
    assert sum(phase == "training" for phase, _ in before_first_step) >= 6  # snapshots, evals


def test_a_small_minutes_budget_sets_its_schedule_and_ends_by_its_budget(tiny_data, tmp_path):  # noqa: F811
    """The smallest budgets (the page's 0.5 minutes) cannot time 60 rounds: the timing ends
    after a fifth of the budget, the schedule is set while the race trains (the page leaves
    "timing the first steps"), and the race ends by its budget or its schedule, saying which."""
    state = RaceState()
    totals = []

    def cancelled() -> bool:
        if state.phase == "training" and state.step > 0:
            totals.append(state.total)
        return False

    slow = 0.15  # seconds a step of each lane: 60 rounds of three would take 27 s of a 30 s race
    from analysis import race as race_module

    real = race_module.train_step

    def train_step(*a, **k):
        time.sleep(slow)
        return real(*a, **k)

    race_module.train_step = train_step
    try:
        record = run_race(
            race(tiny_data, steps=None, minutes=0.5, warmup=60, completions=0),
            tmp_path / "r",
            state=state,
            cancelled=cancelled,
        )
    finally:
        race_module.train_step = real
    assert any(t is not None for t in totals), (len(totals), record["total"], record["steps"])
    assert record["total"] is not None and record["steps"] < 60  # never 60 rounds: timed fewer
    assert record["end"] in (END_BUDGET, END_SCHEDULE) and record["end"] == state.view().end
    assert record["stopped"] == (None if record["end"] == END_SCHEDULE else END_BUDGET)
    assert load_race(tmp_path / "r").end == record["end"]


def test_race_checks_and_memory(tiny_data):  # noqa: F811
    with pytest.raises(ValueError, match="at least one layout"):
        check_race(race(tiny_data, layouts=()))
    with pytest.raises(ValueError, match="steps or in minutes"):
        check_race(race(tiny_data, minutes=2.0))
    with pytest.raises(ValueError, match="each layout kind once: strided appears more than"):
        check_race(race(tiny_data, layouts=("strided(l=14)", "strided(l=7)")))
    with pytest.raises(ValueError, match="sinks: s must be >= 1"):
        check_race(race(tiny_data, layouts=("sinks(s=0, w=3)",)))
    small = race_memory(race(tiny_data))
    big = race_memory(race(tiny_data, preset="fmnist-small", size=None, batch_size=16))
    assert 0 < small < big and big > 500 * 2**20  # 28 x 28: attention of 784 tokens
    assert snapshot_due(1, 1000) and snapshot_due(1000, 1000) and not snapshot_due(999, 1000)
    assert uniform_observed_bpd(np.array([0, 1, 2, 3]), np.array([1, 2])) == 2.0
    assert uniform_observed_bpd(np.array([0, 1]), np.array([5, 6])) == 2.0


def test_a_race_of_new_families_reports_kernel_and_median_step(tiny_data, tmp_path):  # noqa: F811
    """Any static family races: axial, neighborhood and sinks by name, sized for 14 x 14, end
    in ordinary run folders, and race.json says each one's kernel and median step time."""
    state = RaceState()
    out = tmp_path / "race"
    cfg = race(tiny_data, layouts=("axial", "neighborhood", "sinks"))
    record = run_race(cfg, out, state=state)
    view = state.view()
    assert [lane.name for lane in view.lanes] == ["axial", "neighborhood", "sinks"]
    assert [lane.spec for lane in view.lanes] == [
        "axial(width=14)",
        "neighborhood(kh=4, kw=5, width=14)",
        "sinks(s=2, w=17)",
    ]
    # at 196 tokens: axial's composed plan pays only from its crossover on; the others are
    # never composed (kernels.composed.composed_misfit): the masked SDPA
    assert CROSSOVER_N["axial"] > 196
    for lane in view.lanes:
        assert lane.backend == "sdpa" and 0 < lane.density < 1
        assert load_model(out / lane.name).config.geometry == Geometry(14, 14, 1)
        final = record["layouts"][lane.name]
        assert final["backend"] == "sdpa" and final["spec"] == lane.spec
        p10, p90 = final["seconds_per_step_p10_p90"]
        assert p10 <= final["seconds_per_step"] <= p90
    saved = json.loads((out / "race.json").read_text())
    assert saved["layouts"]["axial"]["seconds_per_step_p10_p90"] is not None


def test_step_time_is_the_median_with_its_spread_not_a_mean():
    """A single 9.6 s stall does not become the number."""
    steps = [0.5, 0.3] + [0.1] * 20 + [9.6] + [0.1] * 20  # two warm-up steps, then one stall
    lane = Lane("strided", "strided(l=14)", 1, 196, 0.1, seconds=list(np.cumsum(steps)))
    assert lane.seconds_per_step == pytest.approx(0.1)
    p10, p90 = lane.step_spread
    assert p10 == pytest.approx(0.1) and p90 == pytest.approx(0.1)
    assert Lane("x", "x", 1, 1, 1.0, seconds=[0.1, 0.2, 0.3]).step_spread is None


@pytest.mark.parametrize("kind", RACE_FAMILIES)
def test_every_family_has_a_spec_with_stated_ranges(kind):
    """Defaults sized for the image lie in the stated ranges and parse; a value outside is
    refused naming the family, the parameter and the range."""
    defaults = family_defaults(kind, 14, 196)
    ranges = family_param_ranges(kind, 196)
    assert set(defaults) == set(ranges)
    assert all(lo <= defaults[p] <= hi for p, (lo, hi) in ranges.items())
    spec = layout_spec_for(kind, 14, 196)
    assert parse_layout(spec).family == kind
    for name, (lo, hi) in ranges.items():
        with pytest.raises(ValueError, match=f"{kind}: {name} must be a whole number in {lo}"):
            layout_spec_for(kind, 14, 196, **{name: hi + 1})


def test_specs_keep_the_old_defaults_and_name_a_bad_value():
    assert layout_spec_for("dense", 14, 196) == "dense"
    assert layout_spec_for("strided", 14, 196) == "strided(l=14)"
    assert layout_spec_for("fixed", 28, 784) == "fixed(l=28, c=2)"
    assert layout_spec_for("fixed", 14, 196, l=7, c=3) == "fixed(l=7, c=3)"
    assert layout_spec_for("axial", 14, 196, width=7) == "axial(width=7)"
    with pytest.raises(ValueError, match="c \\* num_verts <= l"):
        layout_spec_for("fixed", 14, 196, l=5, c=6)
    with pytest.raises(ValueError, match="axial takes width; not l"):
        layout_spec_for("axial", 14, 196, l=3)
    with pytest.raises(ValueError, match="layout kind must be one of"):
        layout_spec_for("topk", 14, 196)


def test_curves_that_coincide_are_named_and_a_difference_is_dated():
    from viz.race_figures import Curve, coinciding, separation

    def curve(name, train, test):
        n = len(train)
        return Curve(
            name,
            np.arange(1, n + 1),
            np.arange(1, n + 1) * 0.5,
            np.asarray(train, float),
            np.array([0, 2, 4]),
            np.array([0.0, 1.0, 2.0]),
            np.asarray(test, float),
        )

    a = curve("dense", [5, 4, 3, 2], [8, 5, 3])
    b = curve("strided", [5, 4, 3, 2], [8, 5, 3])
    c = curve("fixed", [5, 4, 3, 2.5], [8, 5.01, 3.5])
    assert coinciding([a, b, c]) == [["dense", "strided"]]
    assert coinciding([a, c]) == [] and coinciding([a]) == []
    assert coinciding([a, b, curve("local", [5, 4, 3, 2], [8, 5, 3])]) == [
        ["dense", "strided", "local"]
    ]
    # held-out spreads 0, 0.01, 0.5: at least 0.1 apart from step 4 (2 s) on; never 1.0
    assert separation([a, c], 0.1) == (4, 2.0)
    assert separation([a, c], 0.005) == (2, 1.0)
    assert separation([a, c], 1.0) is None and separation([a], 0.1) is None
