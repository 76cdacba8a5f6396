"""The app's one shape of background work (app_pages.jobs.Job: start, progress, cancel, result):
a completion, a race and a page's pool job (ablation completions, exports, a frontier measure)
are all Jobs, and a Job's life in a pool reads the same for each."""

from __future__ import annotations

import threading

from app_pages.completion_job import CompletionJob
from app_pages.jobs import CANCELLED, Job, Refused, Task, WorkerPool
from app_pages.playground_job import RaceJob
from app_pages.pool_ui import PoolJob


def test_every_background_job_of_the_app_is_a_job():
    for kind in (CompletionJob, RaceJob, PoolJob):
        assert issubclass(kind, Job)
        for name in ("start", "progress", "cancel", "result"):
            assert hasattr(kind, name), (kind, name)


def test_a_job_starts_reports_progress_and_gives_its_result():
    pool = WorkerPool(1, watch_seconds=0.05)
    job = PoolJob(params=("a", 1))
    assert job.result is None and job.progress == (0.0, "") and not job.finished

    def work(task: Task) -> str:
        task.report(0.5, "half way")
        return "made"

    job.start(pool, work, label="test job", memory=1)
    assert job.task.wait(30) and job.finished
    assert job.progress == (0.5, "half way")
    assert job.result == "made"


def test_a_cancelled_job_has_no_result():
    pool = WorkerPool(1, watch_seconds=0.05)
    started = threading.Event()

    def work(task: Task) -> str:
        started.set()
        while True:
            task.check()  # raises Cancelled once cancelled
            threading.Event().wait(0.01)

    job = PoolJob(params=None)
    job.start(pool, work, label="endless")
    assert started.wait(30)
    job.cancel("stopped")
    assert job.task.wait(30)
    assert job.task.status == CANCELLED and job.task.reason == "stopped"
    assert job.result is None


def test_a_job_over_the_memory_budget_is_refused_at_start():
    pool = WorkerPool(1, budget=10)
    job = PoolJob(params=None)
    try:
        job.start(pool, lambda task: None, label="big", memory=11)
    except Refused:
        pass
    else:
        raise AssertionError("not refused")
    assert job.result is None
