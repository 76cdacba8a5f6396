"""The Playground's training job: a race (analysis/race.py) in the server's training pool.

Training takes minutes, so it gets a pool of its own (TRAINING_POOL: one worker, the same Task,
queue, Stop, memory refusal and session watch as app_pages/jobs.py) instead of a worker of the
completions' pool, which it would hold for the whole race: one playground training per server
at a time, the others queued with their place shown, and completions and exports still served
meanwhile. The worker runs at the pool's lower priority and torch on one thread, so pages drawn
for other visitors get the CPU first.

A public server switches the page off: SPARSE_EXPLORER_PLAYGROUND=off (README, "Security and
limits"); every visitor could otherwise spend the server's CPU for minutes at a time. The words
it takes (any case, spaces around ignored) are ON_WORDS and OFF_WORDS; unset means on. Any other
value, the empty one included, fails closed: the Playground is off, and the server log says so
once for that value (a typo such as "disabled" or "of" never opens training to every visitor).

A race's folder is reserved (created, empty) when it is queued, not when it starts: two races
queued in the same second get two folders, and a race cancelled in the queue or stopped before
its first step leaves none behind (analysis.race.run_race removes what it made).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from analysis.race import RaceConfig, RaceState, race_memory, run_race
from app_pages.jobs import QUEUED, Job, Task, WorkerPool

PLAYGROUND_ENV = "SPARSE_EXPLORER_PLAYGROUND"
ON_WORDS = ("on", "1", "true", "yes", "y", "enable", "enabled")
OFF_WORDS = ("off", "0", "false", "no", "n", "none", "disable", "disabled")
OFF = OFF_WORDS  # the older name
_warned: set[str] = set()  # the unknown values already named in the server log
_warn_lock = threading.Lock()
TRAINING_QUEUE = 4  # races waiting for the one training worker; one more is refused
TRAINING_POOL = WorkerPool(workers=1, max_queued=TRAINING_QUEUE)


DATA_ENV = "SPARSE_EXPLORER_PLAYGROUND_DATA"  # where the races' images come from


def playground_data() -> str:
    """The data source of the races (models.datasets.load_images): Fashion-MNIST from the
    Debian package, or $SPARSE_EXPLORER_PLAYGROUND_DATA (e.g. fashion-mnist:<folder>)."""
    return os.environ.get(DATA_ENV, "fashion-mnist")


def playground_setting() -> tuple[bool, str | None]:
    """(on, the unknown value or None) from $SPARSE_EXPLORER_PLAYGROUND, read on every call:
    unset or one of ON_WORDS is on, one of OFF_WORDS off; anything else (the empty value too)
    is off, and named once in the server log."""
    raw = os.environ.get(PLAYGROUND_ENV)
    if raw is None:
        return True, None
    word = raw.strip().lower()
    if word in ON_WORDS:
        return True, None
    if word in OFF_WORDS:
        return False, None
    with _warn_lock:
        first = raw not in _warned
        _warned.add(raw)
    if first:
        print(
            f"{PLAYGROUND_ENV}={raw!r} is not one of {', '.join(ON_WORDS)} (on) or "
            f"{', '.join(OFF_WORDS)} (off): the Playground stays off",
            file=sys.stderr,
            flush=True,
        )
    return False, raw


def playground_enabled() -> bool:
    """False unless $SPARSE_EXPLORER_PLAYGROUND is unset or says on (playground_setting)."""
    return playground_setting()[0]


def race_folder(runs: Path, prefix: str, now: float | None = None) -> Path:
    """A new folder for a race, reserved (created empty) at once: ``runs``/``prefix``
    YYYYMMDD-HHMMSS, with -2, -3... when taken (mkdir decides: two pages asking in the same
    second, or two servers on one runs folder, get two folders)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    runs.mkdir(parents=True, exist_ok=True)
    folder = runs / f"{prefix}{stamp}"
    k = 2
    while True:
        try:
            folder.mkdir()
        except FileExistsError:
            folder = runs / f"{prefix}{stamp}-{k}"
            k += 1
        else:
            return folder


def release_folder(folder: Path) -> None:
    """Remove a reserved race folder that is still empty (a race that never ran)."""
    try:
        folder.rmdir()
    except OSError:  # not empty, or gone: not ours to remove
        pass


@dataclass(eq=False)
class RaceJob(Job):
    """A race submitted from a page (the app's Job shape: start, progress, cancel, result): its
    live state, what it trains, where it is written, and its task in TRAINING_POOL."""

    state: RaceState
    cfg: RaceConfig
    folder: Path
    task: Task | None = None

    @property
    def progress(self) -> tuple[float, str]:
        """(steps done of the race's total, 0 while it is timed; its phase)."""
        view = self.state.view()
        return (min(1.0, view.step / view.total) if view.total else 0.0), view.phase


def start_race(
    cfg: RaceConfig,
    folder: Path,
    *,
    alive=None,
    device: str = "cpu",
    pool: WorkerPool | None = None,
) -> RaceJob:
    """Submit a race of ``cfg`` into ``folder`` (new, or reserved by race_folder) to the
    training pool (Refused when it is over the memory budget or the queue is full; ValueError
    when ``cfg`` is impossible: either way an empty ``folder`` is released). The task is
    cancelled by Stop (task.cancel) or when ``alive()`` turns false; a race that has taken a
    step saves what it has trained, one cancelled in the queue or before its first step leaves
    no folder."""
    try:
        memory = race_memory(cfg)  # checks cfg first
    except ValueError:
        release_folder(folder)
        raise
    job = RaceJob(RaceState(), cfg, folder)
    state = job.state

    def work(task: Task) -> dict:
        import torch

        # one core: the pages' threads keep the other (get_model sets the same, process-wide)
        torch.set_num_threads(1)
        state.change(lambda s: setattr(s, "started", time.monotonic()))
        return run_race(
            cfg,
            folder,
            state=state,
            cancelled=lambda: task.cancelled,
            reason=lambda: task.reason,
            device=device,
        )

    def on_cancel(reason: str) -> None:
        if job.task.status == QUEUED:  # cancelled in the queue: its work never runs
            release_folder(folder)
            state.change(lambda s: (setattr(s, "end", reason), setattr(s, "phase", "discarded")))

    try:
        job.start(
            pool or TRAINING_POOL,
            work,
            label=f"race {folder.name}",
            memory=memory,
            alive=alive,
            on_cancel=on_cancel,
        )
    except Exception:
        release_folder(folder)
        raise
    return job
