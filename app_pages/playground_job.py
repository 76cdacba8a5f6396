"""The Playground's training job: a race (models/race.py) in the server's training pool.

Training takes minutes, so it gets a pool of its own (TRAINING_POOL: one worker, the same Task,
queue, Stop, memory refusal and session watch as app_pages/jobs.py) instead of a worker of the
completions' pool, which it would hold for the whole race: one playground training per server
at a time, the others queued with their place shown, and completions and exports still served
meanwhile. The worker runs at the pool's lower priority and torch on one thread, so pages drawn
for other visitors get the CPU first.

A public server switches the page off: SPARSE_EXPLORER_PLAYGROUND=off (README, "Security and
limits"); every visitor could otherwise spend the server's CPU for minutes at a time.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from app_pages.jobs import Task, WorkerPool
from models.race import RaceConfig, RaceState, race_memory, run_race

PLAYGROUND_ENV = "SPARSE_EXPLORER_PLAYGROUND"
OFF = ("0", "off", "false", "no")
TRAINING_QUEUE = 4  # races waiting for the one training worker; one more is refused
TRAINING_POOL = WorkerPool(workers=1, max_queued=TRAINING_QUEUE)


DATA_ENV = "SPARSE_EXPLORER_PLAYGROUND_DATA"  # where the races' images come from


def playground_data() -> str:
    """The data source of the races (models.datasets.load_images): Fashion-MNIST from the
    Debian package, or $SPARSE_EXPLORER_PLAYGROUND_DATA (e.g. fashion-mnist:<folder>)."""
    return os.environ.get(DATA_ENV, "fashion-mnist")


def playground_enabled() -> bool:
    """False when $SPARSE_EXPLORER_PLAYGROUND says off (read on every call)."""
    return os.environ.get(PLAYGROUND_ENV, "on").strip().lower() not in OFF


def race_folder(runs: Path, prefix: str, now: float | None = None) -> Path:
    """A new folder for a race: ``runs``/``prefix``YYYYMMDD-HHMMSS, with -2, -3... when taken."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    folder = runs / f"{prefix}{stamp}"
    k = 2
    while folder.exists():
        folder = runs / f"{prefix}{stamp}-{k}"
        k += 1
    return folder


@dataclass
class RaceJob:
    """A race submitted from a page: its task in TRAINING_POOL, its live state, what it trains
    and where it is written."""

    task: Task
    state: RaceState
    cfg: RaceConfig
    folder: Path


def start_race(
    cfg: RaceConfig,
    folder: Path,
    *,
    alive=None,
    device: str = "cpu",
    pool: WorkerPool | None = None,
) -> RaceJob:
    """Submit a race of ``cfg`` into ``folder`` to the training pool (Refused when it is over
    the memory budget or the queue is full; ValueError when ``cfg`` is impossible). The task is
    cancelled by Stop (task.cancel) or when ``alive()`` turns false; either way the race saves
    what it has trained."""
    memory = race_memory(cfg)  # checks cfg first
    state = RaceState()

    def work(task: Task) -> dict:
        import torch

        from analysis.metrics import head_metrics, head_type

        # one core: the pages' threads keep the other (get_model sets the same, process-wide)
        torch.set_num_threads(1)
        state.change(lambda s: setattr(s, "started", time.monotonic()))
        return run_race(
            cfg,
            folder,
            measure=head_metrics,
            classify=head_type,
            state=state,
            cancelled=lambda: task.cancelled,
            device=device,
        )

    task = Task(work, label=f"race {folder.name}", memory=memory, alive=alive)
    (pool or TRAINING_POOL).submit(task)
    return RaceJob(task, state, cfg, folder)
