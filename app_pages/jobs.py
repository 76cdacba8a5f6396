"""The app's long work (completions, exports) runs in one small pool of worker threads.

One pool per server process (POOL): WORKERS threads take tasks from one first-come queue, so a
few people sampling cannot take every core from someone browsing (on a 2-core machine one
worker samples while the other core draws pages). A page submits a Task and waits for it in its
own script run, showing the task's place in the queue and its progress (app_pages/pool_ui.py,
follow). A task ends done, failed (a short message, never a traceback) or cancelled: by its
Cancel or Stop button, by its page (a new request), or because its session ended, which the
pool's watcher notices within WATCH_SECONDS by asking the task's ``alive`` (Streamlit has no
callback for a closed tab: pool_ui.session_alive asks the runtime whether the session is still
active).

Work whose estimated memory is over MEMORY_BUDGET_MB is refused before it is queued, with the
estimate and the budget in the message; at most WORKERS tasks run at once, so the pool's work
stays under WORKERS x the budget. No streamlit here: tests drive the pool directly
(tests/test_jobs.py).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable

# the most memory one task may be estimated to need: a server of 2 workers keeps its work
# under ~2 GB on top of the ~0.7 GB that torch, streamlit and the models take (a 4 GB machine)
MEMORY_BUDGET_MB = 1024
MEMORY_BUDGET = MEMORY_BUDGET_MB * 2**20
# threads that run tasks: every core but one ($SPARSE_EXPLORER_WORKERS to choose)
WORKERS = int(os.environ.get("SPARSE_EXPLORER_WORKERS", max(1, (os.cpu_count() or 2) - 1)))
WORKER_NICE = int(os.environ.get("SPARSE_EXPLORER_WORKER_NICE", 10))  # 0: as pages
MAX_QUEUED = 32  # tasks waiting; one more is refused ("the server is busy")
WATCH_SECONDS = 0.5  # how often the pool checks that each task's session is still there

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"


class Refused(Exception):
    """The pool will not take this task (over the memory budget, or too many waiting)."""


class Cancelled(Exception):
    """Raised by Task.check inside a task's work once the task is cancelled."""


def over_budget(
    what: str, memory: int, hint: str = "Choose fewer items, formats or a lower resolution."
) -> str | None:
    """The refusal of ``what`` needing ``memory`` bytes, or None when it fits the budget;
    ``hint`` says what to choose instead."""
    if memory <= MEMORY_BUDGET:
        return None
    return (
        f"{what} would need about {memory / 2**20:,.0f} MB of memory; this server allows "
        f"{MEMORY_BUDGET_MB:,} MB per task. {hint}"
    )


class Task:
    """One piece of work for the pool: ``work(task)`` returns the result; it may call
    ``task.report(share, text)`` and should call ``task.check()`` (or read
    ``task.cancelled``) often, so that Cancel and a closed session stop it promptly."""

    def __init__(
        self,
        work: Callable[[Task], object],
        *,
        label: str,
        memory: int = 0,
        alive: Callable[[], bool] | None = None,
        on_cancel: Callable[[str], None] | None = None,
    ) -> None:
        self.work = work
        self.label = label
        self.memory = memory
        self.alive = alive
        self.on_cancel = on_cancel
        self.status = QUEUED
        self.result: object = None
        self.error: str | None = None
        self.reason: str | None = None  # why it was cancelled
        self.share = 0.0
        self.text = ""
        self.queued_at = time.monotonic()
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self._cancel = threading.Event()
        self._done = threading.Event()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    @property
    def finished(self) -> bool:
        return self._done.is_set()

    @property
    def waited(self) -> float:
        """Seconds spent in the queue (so far, while it waits)."""
        end = self.started_at if self.started_at is not None else time.monotonic()
        return end - self.queued_at

    def cancel(self, reason: str = "cancelled") -> None:
        """Stop it: at once when still queued, else at its next check."""
        if self.finished or self._cancel.is_set():
            return
        self.reason = reason
        self._cancel.set()
        if self.on_cancel is not None:
            self.on_cancel(reason)

    def check(self) -> None:
        if self._cancel.is_set():
            raise Cancelled(self.reason or "cancelled")

    def report(self, share: float, text: str = "") -> None:
        self.share, self.text = min(max(share, 0.0), 1.0), text

    def wait(self, timeout: float | None = None) -> bool:
        """True once it has ended (done, failed or cancelled)."""
        return self._done.wait(timeout)

    def _run(self) -> None:
        self.started_at = time.monotonic()
        if self._cancel.is_set():
            self._end(CANCELLED)
            return
        self.status = RUNNING
        try:
            self.result = self.work(self)
        except Cancelled:
            self._end(CANCELLED)
        except Exception as e:  # shown as one line; the server log has the type
            self.error = f"{type(e).__name__}: {e}"
            print(f"task {self.label!r} failed: {self.error}", file=sys.stderr, flush=True)
            self._end(FAILED)
        else:
            self._end(CANCELLED if self._cancel.is_set() else DONE)

    def _end(self, status: str) -> None:
        self.status = status
        self.ended_at = time.monotonic()
        if status == CANCELLED and self.reason:
            print(f"task {self.label!r} cancelled: {self.reason}", file=sys.stderr, flush=True)
        if os.environ.get("SPARSE_EXPLORER_LOG_TASKS"):  # tools/bench_load.py reads these
            ran = self.ended_at - self.started_at if self.started_at is not None else 0.0
            print(
                f"task {self.label!r} {status}: waited {self.waited:.2f} s, ran {ran:.2f} s",
                file=sys.stderr,
                flush=True,
            )
        self._done.set()


def _lower_priority() -> None:
    """Make this worker thread nicer than the threads that draw pages (Linux: a thread's nice
    value is its own), so that browsing gets the CPU first while others sample."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WORKER_NICE)
    except (AttributeError, OSError):  # not Linux, or not allowed: same priority
        pass


class WorkerPool:
    """``workers`` threads running Tasks first come, first served (started on first use)."""

    def __init__(
        self,
        workers: int = WORKERS,
        *,
        max_queued: int = MAX_QUEUED,
        budget: int = MEMORY_BUDGET,
        watch_seconds: float = WATCH_SECONDS,
    ) -> None:
        self.workers = max(1, workers)
        self.max_queued = max_queued
        self.budget = budget
        self.watch_seconds = watch_seconds
        self._queue: deque[Task] = deque()
        self._running: list[Task] = []
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []

    def submit(self, task: Task) -> Task:
        """Queue ``task``; Refused when it is over the memory budget or the queue is full."""
        if task.memory > self.budget:
            raise Refused(
                over_budget(task.label, task.memory)
                or f"{task.label} is over this pool's memory budget"
            )
        with self._cond:
            waiting = sum(not t.cancelled for t in self._queue)
            if waiting >= self.max_queued:
                raise Refused(
                    f"The server is busy: {waiting} tasks are waiting. Try again in a minute."
                )
            self._queue.append(task)
            self._start()
            self._cond.notify()
        return task

    def position(self, task: Task) -> int | None:
        """0 while it runs, k >= 1 while k - 1 tasks are ahead of it, None once ended."""
        with self._cond:
            if task in self._running:
                return 0
            ahead = 0
            for t in self._queue:
                if t is task:
                    return ahead + 1
                ahead += not t.cancelled
        return None

    @property
    def busy(self) -> tuple[int, int]:
        """(tasks running, tasks waiting)."""
        with self._cond:
            return len(self._running), sum(not t.cancelled for t in self._queue)

    def _start(self) -> None:  # with the lock held
        if self._threads:
            return
        for i in range(self.workers):
            t = threading.Thread(target=self._work, name=f"pool-worker-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        watcher = threading.Thread(target=self._watch, name="pool-watcher", daemon=True)
        watcher.start()
        self._threads.append(watcher)

    def _work(self) -> None:
        _lower_priority()
        while True:
            with self._cond:
                while not self._queue:
                    self._cond.wait()
                task = self._queue.popleft()
                self._running.append(task)
            try:
                task._run()
            finally:
                with self._cond:
                    self._running.remove(task)

    def _watch(self) -> None:
        """Cancel the tasks whose session has gone (queued or running)."""
        while True:
            time.sleep(self.watch_seconds)
            with self._cond:
                tasks = list(self._running) + list(self._queue)
            for task in tasks:
                if task.alive is None or task.cancelled:
                    continue
                try:
                    alive = task.alive()
                except Exception:  # cannot tell: keep it
                    alive = True
                if not alive:
                    task.cancel("the session ended")
            with self._cond:  # cancelled tasks leave the queue (they would only be skipped)
                for task in [t for t in self._queue if t.cancelled]:
                    self._queue.remove(task)
                    task._run()  # ends it as cancelled, at once


POOL = WorkerPool()  # the server's one pool


class Job:
    """The one shape of a page's background work (a completion, an ablation's completions, an
    export, a frontier measure, a Playground race): ``start`` submits its work to a pool as its
    ``task`` (Refused: over the memory budget, or the queue is full), ``progress`` says how far
    it is, ``cancel`` stops it (in the queue or at its next check), ``result`` is what it made
    once done. A page keeps its Job in the session's state and draws it from there
    (app_pages/pool_ui.py follows one: its place in the queue, its progress, Stop)."""

    task: Task | None = None

    def start(
        self,
        pool: WorkerPool,
        work: Callable[[Task], object],
        *,
        label: str,
        memory: int = 0,
        alive: Callable[[], bool] | None = None,
        on_cancel: Callable[[str], None] | None = None,
    ) -> Task:
        """Submit ``work(task)`` to ``pool`` as this job's task (see Task)."""
        self.task = Task(work, label=label, memory=memory, alive=alive, on_cancel=on_cancel)
        return pool.submit(self.task)

    @property
    def progress(self) -> tuple[float, str]:
        """(share done, 0..1; what it is doing), as its work last reported."""
        return (0.0, "") if self.task is None else (self.task.share, self.task.text)

    def cancel(self, reason: str = "cancelled") -> None:
        """Stop it: a queued job never runs, a running one ends at its next check."""
        if self.task is not None:
            self.task.cancel(reason)

    @property
    def finished(self) -> bool:
        return self.task is not None and self.task.finished

    @property
    def result(self):
        """What its work returned, once done; None before, or when cancelled or failed."""
        return self.task.result if self.task is not None and self.task.status == DONE else None
