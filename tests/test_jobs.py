"""app_pages/jobs.py: the worker pool (queue positions, cancel, a session's end, the memory
budget) and the pieces of the app that use it, without a browser."""

from __future__ import annotations

import threading
import time

import pytest

from app_pages.jobs import (
    CANCELLED,
    DONE,
    FAILED,
    MEMORY_BUDGET,
    MEMORY_BUDGET_MB,
    Refused,
    Task,
    WorkerPool,
    over_budget,
)


def blocker(started: threading.Event, release: threading.Event):
    def work(task: Task):
        started.set()
        while not release.wait(0.01):
            task.check()
        return "released"

    return work


def test_tasks_run_first_come_with_their_queue_positions():
    pool = WorkerPool(1, watch_seconds=0.05)
    started, release = threading.Event(), threading.Event()
    first = pool.submit(Task(blocker(started, release), label="first"))
    assert started.wait(5)
    second = pool.submit(Task(lambda t: "second", label="second"))
    third = pool.submit(Task(lambda t: "third", label="third"))
    assert pool.position(first) == 0  # running
    assert pool.position(second) == 1 and pool.position(third) == 2
    assert pool.busy == (1, 2)
    release.set()
    assert third.wait(5) and first.result == "released" and third.result == "third"
    assert first.status == second.status == third.status == DONE
    assert pool.position(third) is None and third.waited >= 0


def test_cancel_stops_a_running_task_and_a_queued_one_never_starts():
    pool = WorkerPool(1, watch_seconds=0.05)
    started, release = threading.Event(), threading.Event()
    running = pool.submit(Task(blocker(started, release), label="running"))
    assert started.wait(5)
    ran = []
    queued = pool.submit(Task(lambda t: ran.append(1), label="queued"))
    queued.cancel("stopped")
    assert pool.position(queued) is None or pool.position(queued) >= 1
    running.cancel("cancelled")
    assert running.wait(5) and running.status == CANCELLED
    assert queued.wait(5) and queued.status == CANCELLED and not ran


def test_a_task_whose_session_ended_is_cancelled_by_the_watcher():
    pool = WorkerPool(1, watch_seconds=0.05)
    started, release = threading.Event(), threading.Event()
    session = {"open": True}
    ended = []
    task = pool.submit(
        Task(
            blocker(started, release),
            label="orphan",
            alive=lambda: session["open"],
            on_cancel=ended.append,
        )
    )
    assert started.wait(5)
    time.sleep(0.2)
    assert not task.finished  # alive: it goes on
    session["open"] = False  # the tab was closed
    assert task.wait(5) and task.status == CANCELLED
    assert task.reason == "the session ended" and ended == ["the session ended"]


def test_work_over_the_memory_budget_is_refused_with_the_budget_named():
    pool = WorkerPool(1)
    with pytest.raises(Refused, match=f"{MEMORY_BUDGET_MB:,} MB per task"):
        pool.submit(Task(lambda t: None, label="big export", memory=MEMORY_BUDGET + 1))
    assert over_budget("x", MEMORY_BUDGET) is None
    assert "about 2,048 MB" in over_budget("This export", 2 * MEMORY_BUDGET)
    said = over_budget("This completion", 2 * MEMORY_BUDGET, "Choose fewer samples.")
    assert said.startswith("This completion would need") and said.endswith("fewer samples.")


def test_a_full_queue_refuses_and_a_failure_is_one_line():
    pool = WorkerPool(1, max_queued=1, watch_seconds=0.05)
    started, release = threading.Event(), threading.Event()
    pool.submit(Task(blocker(started, release), label="a"))
    assert started.wait(5)

    def boom(task):
        raise ValueError("bad input")

    failing = pool.submit(Task(boom, label="b"))
    with pytest.raises(Refused, match="busy"):
        pool.submit(Task(lambda t: None, label="c"))
    release.set()
    assert failing.wait(5) and failing.status == FAILED
    assert failing.error == "ValueError: bad input"


def test_session_alive_asks_the_runtime(monkeypatch):
    """pool_ui.session_alive: a session the runtime no longer lists as active is over (what a
    closed tab does: Runtime.disconnect_session drops it at once)."""
    from streamlit import runtime

    import app_pages.pool_ui as pool_ui

    class Ctx:
        session_id = "abc"

    class FakeRuntime:
        active = {"abc"}

        def is_active_session(self, session_id):
            return session_id in self.active

    fake = FakeRuntime()
    monkeypatch.setattr("streamlit.runtime.scriptrunner.get_script_run_ctx", lambda *a, **k: Ctx())
    monkeypatch.setattr(runtime, "exists", lambda: True)
    monkeypatch.setattr(runtime, "get_instance", lambda: fake)
    alive = pool_ui.session_alive()
    assert alive()
    fake.active = set()
    assert not alive()
