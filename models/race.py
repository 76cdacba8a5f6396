"""The Playground's race: several layouts trained side by side, fairly, with live numbers.

A race trains one model per layout (dense, strided, fixed by default; any static family of
kernels/layouts.py, one lane a family) from the same preset, image size,
seed and schedule. The models start from the same weights (the seed is set before each is
built, and a layout has no parameters of its own) and see the same batches in the same order
(models.training.batch_indices is a pure function of seed and step). Their steps are
interleaved in one thread, one step of each in turn, so at any moment they have taken the same
number of steps and had the same share of the CPU: a race at equal steps and equal wall-clock.
Each model's "seconds" are the time of its own optimizer steps only (held-out evaluations,
attention snapshots and completions are not counted), so the curves against seconds compare
the layouts' cost and nothing else.

While it runs, ``RaceState`` holds what a page draws: per layout the train and held-out
bits/dim against steps and seconds, the newest attention snapshot (models/timeline.py), a few
completions of held-out images every ``complete_every`` steps, the measured seconds per step and
the attention's nnz. A page reads it from another thread with ``RaceState.view()``.

At the end (its schedule done, its time budget run out, or stopped) every model is written as
an ordinary run folder in ``<out>/<layout>/``: model.safetensors + config.json
(models/checkpoint.py), run.json (the record tools/train.py writes, with the history) and the
timeline, which the app's pages open; beside them race.json (what was raced, each lane's final
numbers, and how it ended: END_SCHEDULE, END_BUDGET or the Stop's reason, the one word the page
shows) and race.npz (probe images, kept halves, completions). ``load_race`` reads the folder
back as the view a page draws (the Playground's shipped race, assets/races/). No optimizer state
is kept: a race is not resumed. A race stopped before its first step keeps nothing: the models
would be untrained, and would fill every page's model list.

Cancellation is asked while the data loads, between the lanes' set-up, before every step and
between the lanes of every held-out point, snapshot and completion, so a closed tab frees the
CPU within one lane's piece of work. A minutes budget times its first steps to fix the
schedule: CALIBRATION's steps, or fewer in a small budget (a fifth of the time left).

No streamlit here (docs/DESIGN.md, "Layering"): app_pages/playground_job.py runs a race in the
server's training pool; the tests run it directly.
"""

from __future__ import annotations

import io
import json
import math
import platform
import shutil
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from kernels.dispatch import resolve_backend
from kernels.layouts import FAMILY_PARAMS, image_family_params, image_layout_spec, parse_layout
from models.checkpoint import model_files, write_atomic
from models.completion import complete, keep_mask
from models.datasets import load_images
from models.evaluation import device_name, histogram_baseline_bpd
from models.files import read_file
from models.model import ModelConfig
from models.sampling import SamplingCancelled
from models.timeline import (
    POINTS,
    Classify,
    Measure,
    TimelineError,
    TimelineRecorder,
    load_npz,
    load_timeline,
    probe_indices,
)
from models.tokens import images_to_tokens, tokens_to_image
from models.training import (
    CALIBRATION,
    RUN_FILE,
    Ranks,
    Run,
    TrainConfig,
    _record_bytes,
    check_train_config,
    held_out_bpd,
    model_config,
    start_run,
    train_step,
    training_memory,
)

RACE_FILE = "race.json"  # in the race folder: what was raced, and each layout's folder
RACE_NPZ = "race.npz"  # beside it: the probe images, the kept halves and every completion
MAX_RACE_JSON = 2**20  # bytes a race.json may have when read back (a few kilobytes written)
MAX_RACE_NPZ = 8 * 2**20  # bytes of a race.npz (kilobytes written)
MAX_RUN_JSON = 64 * 2**20  # bytes of a lane's run.json (its history: ~40 bytes a step)
#: how a race ended, as race.json and the page both say it (one truth)
END_SCHEDULE = "finished: every step of its schedule"
END_BUDGET = "the time budget ran out"
END_STOPPED = "stopped"
LAYOUT_KINDS = ("dense", "strided", "fixed")  # the default race
#: every static family a race may train (kernels.layouts.FAMILY_PARAMS), one lane each
RACE_FAMILIES = tuple(FAMILY_PARAMS)
MAX_LANES = 4  # the Playground's limit: more lanes share one CPU, each gets fewer steps
SNAPSHOTS = 32  # about this many attention snapshots a run besides the log-spaced early ones
EVALS = 24  # about this many held-out points a race (one every EARLY_EVAL steps while timing)
EARLY_EVAL = 20
# what each costs on one core (fmnist-mini, 14 x 14): a training step of 16 images ~0.1 s, a
# snapshot ~0.07 s, a held-out point of 64 images ~0.25 s, one completion ~0.2 s; with these
# counts about a fifth of a race's wall-clock goes to them, none of it counted as training


class RaceStopped(Exception):
    """Raised inside the race loop when ``cancelled()`` turns true; the race still saves."""


@dataclass(frozen=True)
class RaceConfig:
    """What a race trains: ``layouts`` as specs ("dense", "strided", "fixed(l=14, c=2)"; the
    names alone mean l = one image row), and one set of settings they all share."""

    layouts: tuple[str, ...] = LAYOUT_KINDS
    preset: str = "fmnist-mini"
    size: int | None = 14  # image side: 14 is Fashion-MNIST downsampled by 2 (None: 28)
    data: str = "fashion-mnist"
    seed: int = 0
    steps: int | None = None  # a budget in steps, or
    minutes: float | None = 2.0  # in minutes of the whole race (steps set from its speed)
    batch_size: int = 16
    lr: float = 3e-3
    warmup: int = CALIBRATION[1]  # the schedule is fixed at the end of the timed steps
    eval_every: int | None = None  # steps between held-out points; None: about EVALS a race
    eval_images: int = 64  # test images of each held-out point (12,544 tokens at 14 x 14)
    complete_every: int | None = None  # steps between completions; None: about 8 a race
    completions: int = 2  # held-out images completed (the top half kept), one sample each
    probes: int = 2  # probe images of the attention snapshots
    pixel: tuple[int, int] | None = None  # the probe pixel; None: the image's centre

    def train_config(self, layout: str) -> TrainConfig:
        """The TrainConfig of one lane (minutes are the race's, not passed on)."""
        return TrainConfig(
            preset=self.preset,
            layout=layout,
            data=self.data,
            steps=self.steps or 1,
            batch_size=self.batch_size,
            lr=self.lr,
            warmup=self.warmup,
            eval_every=self.eval_every or EARLY_EVAL,
            eval_images=self.eval_images,
            seed=self.seed,
            size=self.size,
            threads=None,
        )


def check_race(cfg: RaceConfig) -> list[ModelConfig]:
    """The model config of each layout; ValueError naming what is wrong with ``cfg``."""
    problems = []
    if not cfg.layouts:
        problems.append("choose at least one layout")
    names = [lane_name(spec) for spec in cfg.layouts]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        problems.append(
            f"each layout kind once: {', '.join(twice)} appears more than once in "
            f"{', '.join(cfg.layouts)} (a lane's name is its family, and its run folder too; "
            "race two settings of one family in two races)"
        )
    if (cfg.steps is None) == (cfg.minutes is None):
        problems.append("give a budget in steps or in minutes (one of them)")
    if cfg.minutes is not None and not (isinstance(cfg.minutes, (int, float)) and cfg.minutes > 0):
        problems.append(f"minutes must be > 0, got {cfg.minutes!r}")
    for name in ("completions", "probes"):
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 16:
            problems.append(f"{name} must be a whole number in 0..16, got {v!r}")
    if cfg.probes == 0:
        problems.append("probes must be at least 1 (the head maps are drawn from them)")
    for name in ("complete_every", "eval_every"):
        v = getattr(cfg, name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            problems.append(f"{name} must be a whole number >= 1, got {v!r}")
    if problems:
        raise ValueError("; ".join(problems))
    configs = []
    for spec in cfg.layouts:
        tcfg = cfg.train_config(spec)
        if cfg.minutes is not None:  # the check of --minutes: the warm-up spans the timed steps
            tcfg = replace(tcfg, minutes=float(cfg.minutes))
        check_train_config(tcfg)
        configs.append(model_config(tcfg))
    if cfg.pixel is not None:
        g = configs[0].geometry
        r, c = cfg.pixel
        if not (0 <= r < g.height and 0 <= c < g.width):
            raise ValueError(
                f"the probe pixel {cfg.pixel} is outside the {g.height} x {g.width} image"
            )
    return configs


def lane_name(spec: str) -> str:
    """A layout's short name, also its run folder: "fixed(l=14, c=2)" -> "fixed"."""
    return spec.split("(", 1)[0].strip() or spec


def race_memory(cfg: RaceConfig) -> int:
    """Bytes the race is estimated to need: every model's weights, gradients and optimizer
    moments, and one training step's activations at a time (the steps take turns), plus the
    data (one byte a token)."""
    configs = check_race(cfg)
    models = sum(training_memory(c, 0) for c in configs)
    step = max(training_memory(c, cfg.batch_size) - training_memory(c, 0) for c in configs)
    g = configs[0].geometry
    data = 70_000 * g.n_tokens  # Fashion-MNIST's 60,000 + 10,000 images as uint8 tokens
    return models + step + data


def uniform_observed_bpd(train: np.ndarray, test: np.ndarray) -> float:
    """Bits/dim of a model that gives every pixel value observed in the data (train and
    test) the same probability: log2 of how many there are (8.0 when all 256 occur)."""
    seen = np.union1d(np.unique(np.asarray(train)), np.unique(np.asarray(test)))
    return math.log2(len(seen))


@dataclass
class Lane:
    """One layout's live numbers (written by the race thread, read through RaceState.view)."""

    name: str
    spec: str  # as the model runs it, e.g. "strided(l=14)"
    nnz: int  # allowed (query, key) pairs per layer and head
    tokens: int  # N, the tokens of an image
    density: float  # nnz over the N (N + 1) / 2 causal pairs
    backend: str = ""  # the attention kernel "auto" runs for it here (kernels/dispatch.py)
    folder: str = ""
    steps: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)  # its own training time so far
    train_bpd: list[float] = field(default_factory=list)
    test: list[tuple[int, float, float]] = field(default_factory=list)  # (step, seconds, bpd)
    snapshot_step: int | None = None
    rows: np.ndarray | None = None  # [L, H, N]: the probe pixel's attention, first probe
    types: list[list[str]] | None = None  # [L][H] head types of the snapshot
    completion_step: int | None = None
    completions: np.ndarray | None = None  # uint8 [k, H, W, C]

    def step_times(self) -> np.ndarray | None:
        """Its measured step times in seconds, the first two (warming up) left out; None before
        the fourth step."""
        if len(self.seconds) < 4:
            return None
        return np.diff([0.0, *self.seconds])[2:]

    @property
    def seconds_per_step(self) -> float | None:
        """Median of its measured step times (the first few, warming up, left out): a stall of
        one step (another process, a page drawn) moves a median by at most one rank."""
        times = self.step_times()
        return None if times is None else float(np.median(times))

    @property
    def step_spread(self) -> tuple[float, float] | None:
        """(10th, 90th percentile) of its step times in seconds: the spread around the median."""
        times = self.step_times()
        if times is None:
            return None
        p10, p90 = np.percentile(times, [10, 90])
        return float(p10), float(p90)

    def copy(self) -> Lane:
        return replace(
            self,
            steps=list(self.steps),
            seconds=list(self.seconds),
            train_bpd=list(self.train_bpd),
            test=list(self.test),
        )


@dataclass
class RaceView:
    """A consistent copy of a race's state at one moment."""

    lanes: list[Lane]
    step: int
    total: int | None  # the steps of the schedule (None while a minutes budget is timed)
    elapsed: float  # seconds since the race started
    phase: str  # "loading", "training", "saving", "saved"; "discarded": stopped before step 1
    end: str | None  # how it ended (END_SCHEDULE, END_BUDGET, "stopped"...): race.json's word
    baselines: dict[str, float]
    folder: str
    probe_pixel: tuple[int, int] | None
    probes: np.ndarray | None  # uint8 [P, H, W, C]: the probe images
    kept: np.ndarray | None  # uint8 [k, H, W, C]: the completed images, hidden half gray
    version: int  # grows with every change: a page redraws only when it moved


class RaceState:
    """The live state of one race, shared between the race thread and the pages."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.lanes: list[Lane] = []
        self.step = 0
        self.total: int | None = None
        self.started = time.monotonic()
        self.phase = "loading"
        self.end: str | None = None
        self.baselines: dict[str, float] = {}
        self.folder = ""
        self.probe_pixel: tuple[int, int] | None = None
        self.probes: np.ndarray | None = None
        self.kept: np.ndarray | None = None
        self.version = 0

    def change(self, fn: Callable[[RaceState], None]) -> None:
        """Apply ``fn(self)`` under the lock, and count the change."""
        with self._lock:
            fn(self)
            self.version += 1

    def view(self) -> RaceView:
        with self._lock:
            return RaceView(
                lanes=[lane.copy() for lane in self.lanes],
                step=self.step,
                total=self.total,
                elapsed=time.monotonic() - self.started,
                phase=self.phase,
                end=self.end,
                baselines=dict(self.baselines),
                folder=self.folder,
                probe_pixel=self.probe_pixel,
                probes=self.probes,
                kept=self.kept,
                version=self.version,
            )


def snapshot_due(step: int, total: int, points: int = SNAPSHOTS) -> bool:
    """Whether a race of ``total`` steps records attention at ``step``: log-spaced while the
    heads form fastest (steps 1, 2, 3, 5, 8, ...), then every total / points steps."""
    if step in _log_steps(total):
        return True
    return step % max(1, total // points) == 0 or step == total


def _log_steps(total: int) -> set[int]:
    spaced = np.geomspace(1, max(total, 1), POINTS)
    return {int(s) for s in np.unique(np.round(spaced))}


def run_race(
    cfg: RaceConfig,
    out: Path,
    *,
    measure: Measure,
    classify: Classify,
    state: RaceState | None = None,
    cancelled: Callable[[], bool] = lambda: False,
    reason: Callable[[], str | None] = lambda: None,
    device: torch.device | str = "cpu",
) -> dict:
    """Train ``cfg``'s layouts side by side into ``out`` (a new or empty folder, e.g. one
    reserved by the page when the race was queued; one folder per layout), updating ``state``;
    returns the race record (also ``out``/race.json). ``cancelled()`` is asked while the data
    loads, between the lanes' set-up, before every step and between the lanes of every held-out
    point, snapshot and completion: a race stopped after its first step saves what it has,
    marked with ``reason()`` (or "stopped"); one stopped before it leaves nothing behind (the
    lanes' folders and ``out`` itself are removed) and returns a record with ``"saved": False``.
    ``measure`` and ``classify`` are analysis.metrics.head_metrics and head_type (models/ may
    not import analysis/)."""
    configs = check_race(cfg)
    state = state or RaceState()
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} already holds files: a race writes into a new folder")
    made_out = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    runs: list[Run] = []
    try:
        return _race(cfg, configs, out, runs, measure, classify, state, cancelled, reason, device)
    except RaceStopped:  # before the first step: nothing was trained, nothing is kept
        _discard(out, runs, made_out)
        why = reason() or END_STOPPED
        state.change(lambda s: (setattr(s, "end", why), setattr(s, "phase", "discarded")))
        return {"race": asdict(cfg), "stopped": why, "end": why, "saved": False}
    except BaseException:
        if not any(run.step for run in runs):
            _discard(out, runs, made_out)
        raise


def _discard(out: Path, runs: list[Run], made_out: bool) -> None:
    """Remove what a race made before its first step: the lanes' folders (each made by the
    race), then ``out`` when it is left empty (a folder reserved for the race is the race's)."""
    for run in runs:
        shutil.rmtree(run.out, ignore_errors=True)
    for name in (RACE_FILE, RACE_NPZ):
        (out / name).unlink(missing_ok=True)
    try:
        out.rmdir()  # only when empty: never anything of someone else's
    except OSError:
        pass


def _race(cfg, configs, out, runs, measure, classify, state, cancelled, reason, device) -> dict:
    def check() -> None:
        if cancelled():
            raise RaceStopped

    device = torch.device(device)
    ranks = Ranks(0, 1, device)
    geometry = configs[0].geometry
    check()
    train_tokens = images_to_tokens(load_images(cfg.data, "train", geometry), dtype=np.uint8)
    check()
    test_tokens = images_to_tokens(load_images(cfg.data, "test", geometry), dtype=np.uint8)
    check()
    baselines = {
        "uniform over observed values": uniform_observed_bpd(train_tokens, test_tokens),
        "pixel histogram": histogram_baseline_bpd(train_tokens, test_tokens),
    }
    recorders: list[TimelineRecorder] = []
    lanes: list[Lane] = []
    for spec, mconfig in zip(cfg.layouts, configs, strict=True):
        check()
        name = lane_name(spec)
        tcfg = cfg.train_config(spec)
        run = start_run(
            tcfg, out / name, ranks, resume=False, tokens=(train_tokens, test_tokens)
        )  # seeds torch with cfg.seed before building the model: the same initial weights
        run.out.mkdir()
        runs.append(run)
        run.record["commands"].append(f"playground race (../{RACE_FILE})")
        n = geometry.n_tokens
        layout = mconfig.layouts[0]
        lanes.append(
            Lane(
                name=name,
                spec=repr(layout),
                nnz=layout.nnz(n),
                tokens=n,
                density=layout.nnz(n) / (n * (n + 1) / 2),
                backend=resolve_backend(  # a query of the model's shape decides it
                    torch.empty(1, 1, n, mconfig.n_embd // mconfig.n_head, device=device), layout
                ),
                folder=str(out / name),
            )
        )
        recorders.append(
            TimelineRecorder(cfg.probes, measure=measure, classify=classify, pixel=cfg.pixel)
        )
    complete_idx = probe_indices(len(test_tokens), cfg.completions) if cfg.completions else None
    complete_images = (
        tokens_to_image(test_tokens[torch.from_numpy(complete_idx)].long(), geometry)
        if complete_idx is not None
        else None
    )
    keep = keep_mask(geometry)  # the top half kept
    kept = None
    if complete_images is not None:
        hidden = complete_images.copy()
        hidden[:, geometry.height // 2 :] = 128
        kept = hidden

    def loaded(s: RaceState) -> None:
        s.lanes = lanes
        s.baselines = baselines
        s.folder = str(out)
        s.phase = "training"
        s.kept = kept

    state.change(loaded)
    for run, recorder, lane in zip(runs, recorders, lanes, strict=True):
        check()
        recorder.begin(run.out, run.model, run.test_tokens, 0)
        _take_snapshot(state, lane, recorder, 0)
    state.change(
        lambda s: (
            setattr(s, "probe_pixel", tuple(recorders[0].pixel)),
            setattr(s, "probes", tokens_to_image(recorders[0].probes.long(), geometry)),
        )
    )
    for run, lane in zip(runs, lanes, strict=True):  # step 0: where every layout starts
        check()
        bpd = held_out_bpd(run, cfg.eval_images)
        state.change(lambda s, lane=lane, bpd=bpd: lane.test.append((0, 0.0, bpd)))
        run.record["history"].append({"step": 0, "test_bpd": bpd, "seconds": 0.0})

    total = cfg.steps
    deadline = state.started + cfg.minutes * 60 if cfg.minutes is not None else math.inf
    state.change(lambda s: setattr(s, "total", total))
    calibration_start = None
    end = END_SCHEDULE
    started = time.monotonic()
    complete_every = cfg.complete_every
    step = 0
    try:
        while total is None or step < total:
            now = time.monotonic()
            if step > 0 and now > deadline:  # at least one step, however small the budget
                end = END_BUDGET
                break
            if total is None and step == CALIBRATION[0]:
                calibration_start = now
            # the timing ends after CALIBRATION[1] steps, or sooner in a small budget: once it
            # has taken a fifth of the time left when it began (0.5 min: a few seconds)
            if (
                total is None
                and calibration_start is not None
                and step > CALIBRATION[0]
                and (
                    step == CALIBRATION[1]
                    or now - calibration_start > (deadline - calibration_start) / 5
                )
            ):
                per_round = (now - calibration_start) / (step - CALIBRATION[0])
                left = deadline - now
                total = max(step + 1, step + int(left / per_round))
                for run in runs:
                    run.cfg.steps = total
                state.change(lambda s, total=total: setattr(s, "total", total))
            for run, lane in zip(runs, lanes, strict=True):
                if cancelled():  # between lanes too: every lane has taken `step` steps
                    raise RaceStopped
                if total is None:  # while timing: the schedule as if it ended far off
                    run.cfg.steps = 10**9
                t0 = time.perf_counter()
                loss = train_step(run, run.model, nullcontext())
                dt = time.perf_counter() - t0
                bpd = loss / math.log(2)
                spent = (lane.seconds[-1] if lane.seconds else 0.0) + dt
                run.record["history"].append(
                    {"step": run.step, "train_bpd": round(bpd, 5), "seconds": round(spent, 4)}
                )
                state.change(
                    lambda s, lane=lane, st=run.step, sp=spent, b=bpd: (
                        lane.steps.append(st),
                        lane.seconds.append(sp),
                        lane.train_bpd.append(b),
                    )
                )
            step += 1
            state.change(lambda s, step=step: setattr(s, "step", step))
            horizon = total or 10 * CALIBRATION[1]  # while timing: log-spaced over 600
            eval_every = cfg.eval_every or (max(1, total // EVALS) if total else EARLY_EVAL)
            if step % eval_every == 0 or step == total:
                for run, lane in zip(runs, lanes, strict=True):
                    check()
                    bpd = held_out_bpd(run, cfg.eval_images)
                    run.record["history"][-1]["test_bpd"] = bpd
                    state.change(
                        lambda s, lane=lane, b=bpd, st=step: lane.test.append(
                            (st, lane.seconds[-1], b)
                        )
                    )
            if snapshot_due(step, horizon) or step == total:
                for run, recorder, lane in zip(runs, recorders, lanes, strict=True):
                    check()
                    recorder.record(run.model, step, run.record["history"][-1]["train_bpd"])
                    _take_snapshot(state, lane, recorder, step)
            if complete_images is not None and total is not None:
                complete_every = complete_every or max(1, total // 8)
                if step % complete_every == 0 or step == total:
                    _complete(state, runs, lanes, complete_images, keep, step, cfg, cancelled)
    except RaceStopped:
        if step == 0 and not any(run.step for run in runs):
            raise  # nothing trained: run_race removes the folders
        end = reason() or END_STOPPED
    if total is None:  # ended while timing (a small budget, or stopped): the steps it ran
        total = step
        state.change(lambda s, total=total: setattr(s, "total", total))
    trained = time.monotonic() - started
    state.change(lambda s: (setattr(s, "phase", "saving"), setattr(s, "end", end)))
    stopped = None if end == END_SCHEDULE else end
    record = _save(cfg, out, runs, lanes, baselines, stopped, trained, state, end)
    state.change(lambda s: setattr(s, "phase", "saved"))
    return record


def _take_snapshot(state: RaceState, lane: Lane, recorder: TimelineRecorder, step: int) -> None:
    t = recorder.timeline
    rows = t.rows_u8[-1, 0].astype(np.float32) / 255.0 * t.rows_max[-1, 0][..., None]
    names = t.meta["head_types"]
    types = [[names[int(c)] for c in layer] for layer in t.types[-1]]

    def put(s: RaceState) -> None:
        lane.snapshot_step, lane.rows, lane.types = step, rows, types

    state.change(put)


def _complete(state, runs, lanes, images, keep, step, cfg, cancelled) -> None:
    """Each model completes the same held-out images (top half kept), one sample each, with
    the same seed; a Stop in the middle ends the race as stopped."""
    for run, lane in zip(runs, lanes, strict=True):
        run.model.eval()
        try:
            out = np.concatenate(
                [
                    complete(run.model, image, keep, n_samples=1, seed=cfg.seed, cancel=cancelled)
                    for image in images
                ]
            )
        except SamplingCancelled:
            raise RaceStopped from None
        finally:
            run.model.train()

        def put(s: RaceState, lane=lane, out=out) -> None:
            lane.completion_step, lane.completions = step, out

        state.change(put)


def _save(cfg, out, runs, lanes, baselines, stopped, trained, state, end) -> dict:
    """Every model as a run folder (weights and config, no optimizer state), and the race
    record (race.json) with its arrays (race.npz: probe images, kept halves, completions)
    beside them: everything load_race needs to show the race again."""
    results = {}
    for run, lane in zip(runs, lanes, strict=True):
        test_bpd = held_out_bpd(run, cfg.eval_images)
        last = run.record["history"][-1]
        if "test_bpd" not in last and last.get("step") == run.step and lane.seconds:
            # ended between held-out points (a budget, a Stop): its last step gets one, so
            # every curve ends where its model does
            last["test_bpd"] = test_bpd
            state.change(
                lambda s, lane=lane, st=run.step, b=test_bpd: lane.test.append(
                    (st, lane.seconds[-1], b)
                )
            )
        final = {
            "step": run.step,
            "train_bpd_last100": _last(run.record["history"], 100),
            "test_bpd": round(test_bpd, 4),
            "test_images": min(cfg.eval_images, len(run.test_tokens)),
            "seconds": round(lane.seconds[-1], 2) if lane.seconds else 0.0,
            "seconds_per_step": lane.seconds_per_step,  # the median
            "seconds_per_step_p10_p90": lane.step_spread,
        }
        run.record.update(
            {
                "train_config": asdict(run.cfg),
                "model_config": run.model.config.to_dict(),
                "params": sum(p.numel() for p in run.model.parameters()),
                "data": {
                    "source": cfg.data,
                    "size": cfg.size,
                    "train_images": len(run.train_tokens),
                    "test_images": len(run.test_tokens),
                },
                "steps": run.step,
                "images_seen": run.step * cfg.batch_size,
                "wall_time_s": round(trained, 2),
                "device": device_name(run.ranks.device),
                "torch": torch.__version__,
                "python": platform.python_version(),
                "playground": {"race": RACE_FILE, "stopped": stopped, "end": end, "nnz": lane.nnz},
                "final": final,
            }
        )
        files = model_files(run.model)
        for name, data in files.items():
            write_atomic(run.out / name, data)
        write_atomic(run.out / RUN_FILE, _record_bytes(run.record))
        results[lane.name] = final | {
            "spec": lane.spec,
            "nnz": lane.nnz,
            "density": lane.density,
            "tokens": lane.tokens,
            "backend": lane.backend,
            "folder": lane.name,
            "snapshot_step": lane.snapshot_step,
            "completion_step": lane.completion_step,
        }
    view = state.view()
    arrays = {}
    if view.probes is not None:
        arrays["probes"] = view.probes
    if view.kept is not None:
        arrays["kept"] = view.kept
    for lane in lanes:
        if lane.completions is not None:
            arrays[f"completions_{lane.name}"] = lane.completions
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    write_atomic(out / RACE_NPZ, buf.getvalue())
    record = {
        "race": asdict(cfg),
        "layouts": results,
        "baselines": baselines,
        "stopped": stopped,
        "end": end,
        "steps": view.step,
        "total": view.total,
        "probe_pixel": list(view.probe_pixel) if view.probe_pixel else None,
        "wall_time_s": round(trained, 2),
        "saved": True,
    }
    write_atomic(out / RACE_FILE, _record_bytes(record))  # last: a race.json means a whole race
    return record


class RaceFileError(ValueError):
    """A saved race that cannot be shown: named, with the problem."""


def load_race(folder: str | Path) -> RaceView:
    """A finished race's folder (race.json, race.npz, each lane's run.json and timeline) as
    the RaceView a page draws, the same as it was at the race's end. Every file is read through
    models/files.py (a regular file, bounded in size); RaceFileError names what is wrong."""
    folder = Path(folder)

    def read_json(path: Path, limit: int) -> dict:
        data = read_file(path, limit, what="race file", error=RaceFileError)
        try:
            value = json.loads(data)
        except (UnicodeDecodeError, ValueError) as e:
            raise RaceFileError(f"{path} is not JSON ({e})") from None
        if not isinstance(value, dict):
            raise RaceFileError(f"{path} is not a race record")
        return value

    record = read_json(folder / RACE_FILE, MAX_RACE_JSON)
    try:
        arrays = load_npz(
            read_file(folder / RACE_NPZ, MAX_RACE_NPZ, what="race file", error=RaceFileError),
            folder / RACE_NPZ,
            8 * MAX_RACE_NPZ,
            RaceFileError,
        )
        lanes = []
        for name, info in record["layouts"].items():
            sub = folder / str(info["folder"])
            if Path(str(info["folder"])).name != str(info["folder"]):
                raise RaceFileError(f"{folder / RACE_FILE}: lane folder {info['folder']!r}")
            history = read_json(sub / RUN_FILE, MAX_RUN_JSON)["history"]
            trained = [h for h in history if "train_bpd" in h]
            timeline = load_timeline(sub)
            rows = types = None
            if timeline is not None and len(timeline.steps):
                rows = timeline.rows[-1, 0]
                names = timeline.meta.get("head_types", [])
                types = [[str(names[int(c)]) for c in layer] for layer in timeline.types[-1]]
            lanes.append(
                Lane(
                    name=str(name),
                    spec=str(info["spec"]),
                    nnz=int(info["nnz"]),
                    tokens=int(info["tokens"]),
                    density=float(info["density"]),
                    backend=str(info.get("backend", "")),
                    folder=str(sub),
                    steps=[int(h["step"]) for h in trained],
                    seconds=[float(h["seconds"]) for h in trained],
                    train_bpd=[float(h["train_bpd"]) for h in trained],
                    test=[
                        (int(h["step"]), float(h["seconds"]), float(h["test_bpd"]))
                        for h in history
                        if "test_bpd" in h
                    ],
                    snapshot_step=int(timeline.steps[-1]) if rows is not None else None,
                    rows=rows,
                    types=types,
                    completion_step=info.get("completion_step"),
                    completions=arrays.get(f"completions_{name}"),
                )
            )
        pixel = record.get("probe_pixel")
        return RaceView(
            lanes=lanes,
            step=int(
                record.get("steps")
                or max((lane.steps[-1] for lane in lanes if lane.steps), default=0)
            ),
            total=record.get("total"),
            elapsed=float(record.get("wall_time_s", 0.0)),
            phase="saved",
            end=record.get("end") or record.get("stopped") or END_SCHEDULE,
            baselines={str(k): float(v) for k, v in record.get("baselines", {}).items()},
            folder=str(folder),
            probe_pixel=tuple(pixel) if pixel else None,
            probes=arrays.get("probes"),
            kept=arrays.get("kept"),
            version=0,
        )
    except RaceFileError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, OSError, EOFError, TimelineError) as e:
        raise RaceFileError(f"{folder} is not a readable race ({type(e).__name__}: {e})") from None


def _last(history: list[dict], k: int) -> float | None:
    values = [h["train_bpd"] for h in history if "train_bpd" in h][-k:]
    return round(float(np.mean(values)), 4) if values else None


def family_param_ranges(kind: str, n_tokens: int) -> dict[str, tuple[int, int]]:
    """The values each parameter of a family may take in a race of ``n_tokens`` tokens:
    {name: (lowest, highest)}, the lowest as kernels/layouts.py checks it, the highest the
    sequence's length (a window, a stride or a block longer than the image means nothing more);
    bigbird's random blocks at most 16 and its seed any int a spec holds."""
    if kind not in FAMILY_PARAMS:
        raise ValueError(f"layout kind must be one of {', '.join(RACE_FAMILIES)}, got {kind!r}")
    special = {
        ("bigbird", "globals"): (0, n_tokens),
        ("bigbird", "random"): (0, 16),
        ("bigbird", "seed"): (0, 2**20),
        ("fixed", "num_verts"): (1, n_tokens),
    }
    return {p: special.get((kind, p), (1, n_tokens)) for p in FAMILY_PARAMS[kind]}


def family_defaults(kind: str, geometry_row: int, n_tokens: int) -> dict[str, int]:
    """A family's parameters sized for the image (kernels.layouts.image_family_params; fixed's
    c the one whose density reaches strided's, as image_layout_spec sets it)."""
    params = dict(image_family_params(kind, geometry_row))
    if kind == "fixed":
        params["c"] = parse_layout(image_layout_spec("fixed", geometry_row, n_tokens)).c
        params.setdefault("num_verts", 1)
    return params


def layout_spec_for(kind: str, geometry_row: int, n_tokens: int, **params: int) -> str:
    """The spec of a family with the page's parameters, each defaulting to family_defaults
    (``dense`` takes none): e.g. ``axial(width=14)``. ValueError with the family, the parameter
    and its valid range when one is wrong (kernels/layouts.py's own check for the rest, such as
    fixed's c * num_verts <= l)."""
    if kind not in FAMILY_PARAMS:
        raise ValueError(f"layout kind must be one of {', '.join(RACE_FAMILIES)}, got {kind!r}")
    unknown = sorted(set(params) - set(FAMILY_PARAMS[kind]))
    if unknown:
        takes = ", ".join(FAMILY_PARAMS[kind]) or "no parameters"
        raise ValueError(f"{kind} takes {takes}; not {', '.join(unknown)}")
    if kind == "dense":
        return "dense"
    values = family_defaults(kind, geometry_row, n_tokens) | params
    for name, (lo, hi) in family_param_ranges(kind, n_tokens).items():
        v = values[name]
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not lo <= v <= hi:
            raise ValueError(f"{kind}: {name} must be a whole number in {lo}..{hi}, got {v!r}")
    if kind == "fixed" and values.get("num_verts") == 1:
        del values["num_verts"]  # "fixed(l=14, c=2)", as the default race has always named it
    spec = f"{kind}({', '.join(f'{k}={int(v)}' for k, v in values.items())})"
    try:
        parse_layout(spec)
    except ValueError as e:
        raise ValueError(f"{kind}: {e}") from None
    return spec
