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
bits/dim against steps and seconds, the newest attention snapshot (analysis/timeline.py), a few
completions of held-out images every ``complete_every`` steps, the measured seconds per step and
the attention's nnz. A page reads it from another thread with ``RaceState.view()``.

At the end (its schedule done, its time budget run out, or stopped) every model is written as
an ordinary run folder in ``<out>/<layout>/``: model.safetensors + config.json
(models/checkpoint.py), run.json (models.run_folder.RunRecord, as training writes it, with
the history) and the timeline, which the app's pages open; beside them race.json (what was
raced, each lane's final numbers, and how it ended: END_SCHEDULE, END_BUDGET or the Stop's
reason, the one word the page shows) and race.npz (probe images, kept halves, completions).
``load_race`` reads the folder back as the view a page draws (the Playground's shipped race,
assets/races/). No optimizer state is kept: a race is not resumed. A race stopped before its
first step keeps nothing: the models would be untrained, and would fill every page's model list.

Cancellation is asked while the data loads, between the lanes' set-up, before every step and
between the lanes of every held-out point, snapshot and completion, so a closed tab frees the
CPU within one lane's piece of work. A minutes budget times its first steps to fix the
schedule: CALIBRATION's steps, or fewer in a small budget (a fifth of the time left).

It lives in analysis/, above models/training.py and beside the timeline and the metrics it
records with, and imports no streamlit (docs/DESIGN.md, "Layering"): app_pages/playground_job.py
runs a race in the server's training pool; the tests run it directly. Each phase of a race
(load, train, save) is a method of ``_Race``.
"""

from __future__ import annotations

import io
import json
import math
import shutil
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from analysis.timeline import (
    POINTS,
    TimelineError,
    TimelineRecorder,
    load_npz,
    load_timeline,
    probe_indices,
)
from kernels.dispatch import resolve_backend
from kernels.layouts import FAMILY_PARAMS, image_family_params, image_layout_spec, parse_layout
from models.checkpoint import CheckpointError, model_files, write_atomic
from models.completion import complete, keep_mask
from models.datasets import load_images
from models.evaluation import histogram_baseline_bpd
from models.files import read_file
from models.model import ModelConfig, evaluating
from models.run_folder import RUN_FILE, json_bytes, publish, read_run_record
from models.sampling import SamplingCancelled
from models.tokens import images_to_tokens, tokens_to_image
from models.training import (
    CALIBRATION,
    Ranks,
    Run,
    StepTimer,
    TrainConfig,
    check_train_config,
    describe,
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
    """
    configs = check_race(cfg)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} already holds files: a race writes into a new folder")
    made_out = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    race = _Race(cfg, out, state or RaceState(), cancelled, reason, torch.device(device))
    try:
        race.load(configs)
        race.train()
        return race.save()
    except RaceStopped:  # before the first step: nothing was trained, nothing is kept
        race.discard(made_out)
        why = reason() or END_STOPPED
        race.state.change(lambda s: (setattr(s, "end", why), setattr(s, "phase", "discarded")))
        return {"race": asdict(cfg), "stopped": why, "end": why, "saved": False}
    except BaseException:
        if not any(run.step for run in race.runs):
            race.discard(made_out)
        raise


@dataclass
class _Race:
    """One race as it runs: its settings, its lanes (a run, a timeline recorder and the live
    numbers each) and the race-wide pieces; each phase of run_race is a method."""

    cfg: RaceConfig
    out: Path
    state: RaceState
    cancelled: Callable[[], bool]
    reason: Callable[[], str | None]
    device: torch.device
    runs: list[Run] = field(default_factory=list)
    recorders: list[TimelineRecorder] = field(default_factory=list)
    lanes: list[Lane] = field(default_factory=list)
    baselines: dict[str, float] = field(default_factory=dict)
    images: np.ndarray | None = None  # uint8 [k, H, W, C]: the held-out images completed
    step: int = 0  # rounds taken: every lane has taken this many steps
    total: int | None = None  # the schedule; None while a minutes budget is timed
    end: str = END_SCHEDULE
    trained: float = 0.0  # seconds the training loop ran

    def check(self) -> None:
        if self.cancelled():
            raise RaceStopped

    def lanes_of(self):
        return zip(self.runs, self.recorders, self.lanes, strict=True)

    def load(self, configs: list[ModelConfig]) -> None:
        """The data and its baselines, one run per layout from the same weights, the images to
        complete, and every lane's starting point (a snapshot and a held-out point at step 0)."""
        geometry = configs[0].geometry
        tokens = []
        for split in ("train", "test"):
            self.check()
            images = load_images(self.cfg.data, split, geometry)
            tokens.append(images_to_tokens(images, dtype=np.uint8))
        self.check()
        self.baselines = {
            "uniform over observed values": uniform_observed_bpd(*tokens),
            "pixel histogram": histogram_baseline_bpd(*tokens),
        }
        for spec, mconfig in zip(self.cfg.layouts, configs, strict=True):
            self.check()
            self.add_lane(spec, mconfig, tuple(tokens))
        kept = self.pick_images(tokens[1], geometry)
        self.state.change(
            lambda s: (
                setattr(s, "lanes", self.lanes),
                setattr(s, "baselines", self.baselines),
                setattr(s, "folder", str(self.out)),
                setattr(s, "phase", "training"),
                setattr(s, "kept", kept),
            )
        )
        self.start_points(geometry)

    def add_lane(self, spec: str, mconfig: ModelConfig, tokens: tuple) -> None:
        """One layout's run (start_run seeds torch with the race's seed before building the
        model: the same initial weights), its recorder and its live numbers."""
        name = lane_name(spec)
        run = start_run(
            self.cfg.train_config(spec), self.out / name, Ranks(0, 1, self.device),
            resume=False, tokens=tokens,
        )  # fmt: skip
        run.out.mkdir()
        self.runs.append(run)
        run.record.commands.append(f"playground race (../{RACE_FILE})")
        n = mconfig.geometry.n_tokens
        layout = mconfig.layouts[0]
        query = torch.empty(1, 1, n, mconfig.n_embd // mconfig.n_head, device=self.device)
        self.lanes.append(
            Lane(
                name=name,
                spec=repr(layout),
                nnz=layout.nnz(n),
                tokens=n,
                density=layout.nnz(n) / (n * (n + 1) / 2),
                backend=resolve_backend(query, layout),  # a query of the model's shape decides
                folder=str(run.out),
            )
        )
        self.recorders.append(TimelineRecorder(self.cfg.probes, pixel=self.cfg.pixel))

    def pick_images(self, test_tokens: torch.Tensor, geometry) -> np.ndarray | None:
        """The held-out images every lane completes (self.images), and the same with their
        hidden bottom half gray (what the page shows as kept); None without completions."""
        if not self.cfg.completions:
            return None
        picked = probe_indices(len(test_tokens), self.cfg.completions)
        self.images = tokens_to_image(test_tokens[torch.from_numpy(picked)].long(), geometry)
        kept = self.images.copy()
        kept[:, geometry.height // 2 :] = 128
        return kept

    def start_points(self, geometry) -> None:
        """Step 0, where every layout starts: a snapshot, and a held-out point."""
        for run, recorder, lane in self.lanes_of():
            self.check()
            recorder.begin(run.out, run.model, run.test_tokens, 0)
            _take_snapshot(self.state, lane, recorder, 0)
        first = self.recorders[0]
        probes = tokens_to_image(first.probes.long(), geometry)
        self.state.change(
            lambda s: (setattr(s, "probe_pixel", tuple(first.pixel)), setattr(s, "probes", probes))
        )
        for run, lane in zip(self.runs, self.lanes, strict=True):
            self.check()
            bpd = held_out_bpd(run, self.cfg.eval_images)
            self.state.change(lambda s, lane=lane, bpd=bpd: lane.test.append((0, 0.0, bpd)))
            run.record.history.append({"step": 0, "test_bpd": bpd, "seconds": 0.0})

    def train(self) -> None:
        """Rounds of one step of every lane until the schedule or the budget ends (or a Stop
        after the first step), each followed by the held-out points, snapshots and completions
        that fall due."""
        cfg = self.cfg
        self.total = cfg.steps
        deadline = self.state.started + cfg.minutes * 60 if cfg.minutes is not None else math.inf
        self.state.change(lambda s: setattr(s, "total", self.total))
        timer = StepTimer(deadline=deadline)  # timing for a minutes budget
        started = time.monotonic()
        try:
            while self.total is None or self.step < self.total:
                now = time.monotonic()
                if self.step > 0 and now > deadline:  # at least one step, however small
                    self.end = END_BUDGET
                    break
                if self.total is None and (per_round := timer.at(self.step, now)) is not None:
                    left = int((deadline - now) / per_round)
                    self.set_total(max(self.step + 1, self.step + left))
                self.round()
                self.after_round()
        except RaceStopped:
            if self.step == 0 and not any(run.step for run in self.runs):
                raise  # nothing trained: run_race removes the folders
            self.end = self.reason() or END_STOPPED
        if self.total is None:  # ended while timing (a small budget, or stopped): its steps
            self.total = self.step
            self.state.change(lambda s: setattr(s, "total", self.total))
        self.trained = time.monotonic() - started

    def set_total(self, total: int) -> None:
        """The schedule, fixed once the first steps are timed: every lane's too."""
        self.total = total
        for run in self.runs:
            run.cfg.steps = total
        self.state.change(lambda s: setattr(s, "total", total))

    def round(self) -> None:
        """One step of every lane in turn, each timed on its own."""
        for run, lane in zip(self.runs, self.lanes, strict=True):
            self.check()  # between lanes too: every lane has taken `step` steps
            if self.total is None:  # while timing: the schedule as if it ended far off
                run.cfg.steps = 10**9
            t0 = time.perf_counter()
            loss = train_step(run, run.model, nullcontext())
            dt = time.perf_counter() - t0
            spent = (lane.seconds[-1] if lane.seconds else 0.0) + dt
            bpd = loss / math.log(2)
            entry = {"step": run.step, "train_bpd": round(bpd, 5), "seconds": round(spent, 4)}
            run.record.history.append(entry)
            self.state.change(
                lambda s, lane=lane, st=run.step, sp=spent, b=bpd: (
                    lane.steps.append(st),
                    lane.seconds.append(sp),
                    lane.train_bpd.append(b),
                )
            )
        self.step += 1
        self.state.change(lambda s, step=self.step: setattr(s, "step", step))

    def after_round(self) -> None:
        """The held-out points, snapshots and completions due at this step."""
        cfg, step, total = self.cfg, self.step, self.total
        eval_every = cfg.eval_every or (max(1, total // EVALS) if total else EARLY_EVAL)
        if step % eval_every == 0 or step == total:
            for run, lane in zip(self.runs, self.lanes, strict=True):
                self.check()
                self.held_out(run, lane)
        horizon = total or 10 * CALIBRATION[1]  # while timing: log-spaced over 600
        if snapshot_due(step, horizon) or step == total:
            for run, recorder, lane in self.lanes_of():
                self.check()
                recorder.record(run.model, step, run.record.history[-1]["train_bpd"])
                _take_snapshot(self.state, lane, recorder, step)
        if self.images is not None and total is not None:
            every = cfg.complete_every or max(1, total // 8)
            if step % every == 0 or step == total:
                self.complete()

    def held_out(self, run: Run, lane: Lane) -> float:
        """A held-out point of one lane at its step, on its history and its curve."""
        bpd = held_out_bpd(run, self.cfg.eval_images)
        run.record.history[-1]["test_bpd"] = bpd
        self.state.change(lambda s: lane.test.append((run.step, lane.seconds[-1], bpd)))
        return bpd

    def complete(self) -> None:
        """Each model completes the same held-out images (top half kept), one sample each, with
        the same seed; a Stop in the middle ends the race as stopped."""
        keep = keep_mask(self.runs[0].model.config.geometry)  # the top half kept
        for run, lane in zip(self.runs, self.lanes, strict=True):
            try:
                with evaluating(run.model):
                    done = np.concatenate(
                        [
                            complete(
                                run.model,
                                image,
                                keep,
                                n_samples=1,
                                seed=self.cfg.seed,
                                cancel=self.cancelled,
                            )  # fmt: skip
                            for image in self.images
                        ]
                    )
            except SamplingCancelled:
                raise RaceStopped from None

            def put(s: RaceState, lane=lane, done=done, step=self.step) -> None:
                lane.completion_step, lane.completions = step, done

            self.state.change(put)

    def save(self) -> dict:
        """Every model as a run folder (weights, config and run.json; no optimizer state), then
        the race's arrays (race.npz: probe images, kept halves, completions) and, last, its
        record (race.json): everything load_race needs to show the race again."""
        self.state.change(lambda s: (setattr(s, "phase", "saving"), setattr(s, "end", self.end)))
        stopped = None if self.end == END_SCHEDULE else self.end
        results = {
            lane.name: self.save_lane(run, lane, stopped)
            for run, lane in zip(self.runs, self.lanes, strict=True)
        }
        view = self.state.view()
        arrays = {"probes": view.probes, "kept": view.kept}
        arrays |= {f"completions_{lane.name}": lane.completions for lane in self.lanes}
        buf = io.BytesIO()
        np.savez_compressed(buf, **{k: v for k, v in arrays.items() if v is not None})
        write_atomic(self.out / RACE_NPZ, buf.getvalue())
        record = {
            "race": asdict(self.cfg),
            "layouts": results,
            "baselines": self.baselines,
            "stopped": stopped,
            "end": self.end,
            "steps": view.step,
            "total": view.total,
            "probe_pixel": list(view.probe_pixel) if view.probe_pixel else None,
            "wall_time_s": round(self.trained, 2),
            "saved": True,
        }
        write_atomic(self.out / RACE_FILE, json_bytes(record))  # last: a race.json means a race
        self.state.change(lambda s: setattr(s, "phase", "saved"))
        return record

    def save_lane(self, run: Run, lane: Lane, stopped: str | None) -> dict:
        """One lane's run folder, and its line of race.json."""
        last = run.record.history[-1]
        if "test_bpd" not in last and last.get("step") == run.step and lane.seconds:
            # ended between held-out points (a budget, a Stop): its last step gets one, so
            # every curve ends where its model does
            test_bpd = self.held_out(run, lane)
        else:
            test_bpd = held_out_bpd(run, self.cfg.eval_images)
        final = {
            "step": run.step,
            "train_bpd_last100": _last(run.record.history, 100),
            "test_bpd": round(test_bpd, 4),
            "test_images": min(self.cfg.eval_images, len(run.test_tokens)),
            "seconds": round(lane.seconds[-1], 2) if lane.seconds else 0.0,
            "seconds_per_step": lane.seconds_per_step,  # the median
            "seconds_per_step_p10_p90": lane.step_spread,
        }
        describe(run, size=self.cfg.size)
        run.record.wall_time_s = round(self.trained, 2)
        run.record.playground = {
            "race": RACE_FILE, "stopped": stopped, "end": self.end, "nnz": lane.nnz
        }  # fmt: skip
        run.record.final = final
        publish(run.out, model_files(run.model) | {RUN_FILE: run.record.to_bytes()})
        return final | {
            "spec": lane.spec,
            "nnz": lane.nnz,
            "density": lane.density,
            "tokens": lane.tokens,
            "backend": lane.backend,
            "folder": lane.name,
            "snapshot_step": lane.snapshot_step,
            "completion_step": lane.completion_step,
        }

    def discard(self, made_out: bool) -> None:
        """Remove what a race made before its first step: the lanes' folders (each made by
        the race), then ``out`` when it is left empty (a folder reserved for the race is the
        race's)."""
        for run in self.runs:
            shutil.rmtree(run.out, ignore_errors=True)
        for name in (RACE_FILE, RACE_NPZ):
            (self.out / name).unlink(missing_ok=True)
        try:
            self.out.rmdir()  # only when empty: never anything of someone else's
        except OSError:
            pass


def _take_snapshot(state: RaceState, lane: Lane, recorder: TimelineRecorder, step: int) -> None:
    t = recorder.timeline
    rows = t.rows_u8[-1, 0].astype(np.float32) / 255.0 * t.rows_max[-1, 0][..., None]
    names = t.meta["head_types"]
    types = [[names[int(c)] for c in layer] for layer in t.types[-1]]

    def put(s: RaceState) -> None:
        lane.snapshot_step, lane.rows, lane.types = step, rows, types

    state.change(put)


class RaceFileError(ValueError):
    """A saved race that cannot be shown: named, with the problem."""


def load_race(folder: str | Path) -> RaceView:
    """A finished race's folder (race.json, race.npz, each lane's run.json and timeline) as
    the RaceView a page draws, the same as it was at the race's end. Every file is read through
    models/files.py (a regular file, bounded in size); RaceFileError names what is wrong."""
    folder = Path(folder)
    data = read_file(folder / RACE_FILE, MAX_RACE_JSON, what="race file", error=RaceFileError)
    try:
        record = json.loads(data)
    except (UnicodeDecodeError, ValueError) as e:
        raise RaceFileError(f"{folder / RACE_FILE} is not JSON ({e})") from None
    if not isinstance(record, dict):
        raise RaceFileError(f"{folder / RACE_FILE} is not a race record")
    try:
        arrays = load_npz(
            read_file(folder / RACE_NPZ, MAX_RACE_NPZ, what="race file", error=RaceFileError),
            folder / RACE_NPZ,
            8 * MAX_RACE_NPZ,
            RaceFileError,
        )
        lanes = [_load_lane(folder, str(n), info, arrays) for n, info in record["layouts"].items()]
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


def _load_lane(folder: Path, name: str, info: dict, arrays: dict[str, np.ndarray]) -> Lane:
    """One lane of a saved race: its line of race.json, its run.json and its timeline."""
    sub = folder / str(info["folder"])
    if Path(str(info["folder"])).name != str(info["folder"]):
        raise RaceFileError(f"{folder / RACE_FILE}: lane folder {info['folder']!r}")
    try:
        history = read_run_record(sub / RUN_FILE).history
    except CheckpointError as e:
        raise RaceFileError(str(e)) from None
    trained = [h for h in history if "train_bpd" in h]
    timeline = load_timeline(sub)
    rows = types = None
    if timeline is not None and len(timeline.steps):
        rows = timeline.rows[-1, 0]
        names = timeline.meta.get("head_types", [])
        types = [[str(names[int(c)]) for c in layer] for layer in timeline.types[-1]]
    return Lane(
        name=name,
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
