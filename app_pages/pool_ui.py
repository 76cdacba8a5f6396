"""The worker pool (app_pages/jobs.py) as a page shows it: a job started, followed (its place
in the queue, its progress, a stop button), explained when refused, stopped or failed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import streamlit as st

from app_pages.jobs import Job
from app_pages.text import as_text


def session_alive() -> Callable[[], bool]:
    """A check that this run's session is still open, for work that outlives the run (the
    worker pool asks it every half second). Streamlit has no callback for a closed tab, but its
    runtime drops a disconnected session from its active sessions at once
    (Runtime.is_active_session); without a real runtime (AppTest, bare mode) it says yes."""
    from streamlit import runtime
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    session_id = ctx.session_id if ctx is not None else None

    def alive() -> bool:
        if session_id is None or not runtime.exists():
            return True
        answer = runtime.get_instance().is_active_session(session_id)
        return answer is not False  # a test's mock runtime answers a mock: alive

    return alive


def queue_place(pool, task, what: str) -> str | None:
    """The line telling a person where ``task`` waits in ``pool`` (an app_pages.jobs.WorkerPool)
    for a worker, or None once it runs (or ended)."""
    place = pool.position(task)
    if place is None or place < 1:
        return None
    running, waiting = pool.busy
    return (
        f"{what} is waiting for a worker: number {place} in the queue "
        f"({running} running, {waiting} waiting; {task.waited:.0f} s so far)."
    )


# a click on a widget of a fragment (Cancel, Stop) does not stop a run under way (Streamlit
# queues it behind the run), so a job followed in a fragment's run is followed in short runs of
# the fragment, each taking the clicks made meanwhile: this many seconds each
FRAGMENT_POLL_S = 1.0


def in_fragment_run() -> bool:
    """Whether this run is a rerun of fragments only (not of the whole page)."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    return bool(ctx is not None and ctx.fragment_ids_this_run)


def follow(job, *, what: str, on_tick: Callable[[], None] | None = None, bar: bool = True):
    """Wait in this run for ``job`` (an app_pages.jobs.Job started in the pool), showing its
    place in the queue and, with ``bar``, its progress; ``on_tick()`` draws more (the Complete
    page's rows). A rerun (a click) ends this wait and leaves the job to its page (Streamlit's
    fast reruns stop this run with StopException, so a stopped run is no sign that the session
    ended); the session's end is the pool watcher's to see (session_alive). In a fragment's
    run the fragment reruns every FRAGMENT_POLL_S while the job runs, so that its Cancel
    button's click is taken."""
    import time

    from app_pages.jobs import POOL

    poll = in_fragment_run()
    began = time.monotonic()
    slot = st.empty()
    while True:
        ended = job.task.wait(0.2)
        waiting = queue_place(POOL, job.task, what)
        if waiting is not None:
            slot.info(waiting)
        elif bar and not ended:
            share, text = job.progress
            slot.progress(share, text=as_text(text or f"{what}: working..."))
        else:  # a message each tick: Streamlit checks for a rerun or a stop at each one
            slot.empty()
        if on_tick is not None:
            on_tick()
        if ended:
            break
        if poll and time.monotonic() - began > FRAGMENT_POLL_S:
            st.rerun(scope="fragment")
    slot.empty()


@dataclass(frozen=True)
class JobWords:
    """What a page's pool job is called: ``noun`` ("export": its task's label in the server's
    log), ``what`` ("The export") in its messages, its ``stop`` button ("Cancel", key
    ``{key}_{stop.lower()}``, the reason it gives), and ``after`` ("nothing to download.") in
    the message shown when it was stopped."""

    noun: str
    what: str
    stop: str = "Cancel"
    reason: str = "cancelled"
    after: str = "nothing to download."
    hint: str = "Choose fewer items, formats or a lower resolution."  # when over the budget


@dataclass(eq=False)
class PoolJob(Job):
    """A page's job in the server's worker pool, with the ``params`` it is for (its result is
    shown only for them)."""

    params: object


def pool_job(
    key: str,
    params,
    work: Callable | None,
    *,
    start: bool,
    memory: int,
    words: JobWords,
    replace_stale: bool = False,
) -> PoolJob | None:
    """A page's work in the server's worker pool (app_pages/jobs.py), kept under ``{key}_job``
    as a PoolJob with the ``params`` it is for: ``work(task)`` (needed only then) is started
    when ``start`` (over the memory budget or with the queue full: refused and explained),
    followed while it runs (queue place, progress, the stop button), and returned once it is
    done and for ``params`` (else None; a stopped or failed one is explained). With
    ``replace_stale`` a job still running for other params (another image, other settings) is
    cancelled: nothing would show its result."""
    from app_pages.jobs import CANCELLED, DONE, POOL, Refused, over_budget

    made = st.session_state.get(f"{key}_job")
    if replace_stale and made is not None and made.params != params:
        made.cancel("its settings changed")
    if start:
        refusal = over_budget(f"This {words.noun}", memory, words.hint)
        if refusal is not None:
            st.error(refusal)
        else:
            if made is not None:
                made.cancel(f"replaced by a new {words.noun}")
            job = PoolJob(params)
            try:
                job.start(
                    POOL, work, label=f"{words.noun} {key}", memory=memory, alive=session_alive()
                )
                st.session_state[f"{key}_job"] = job
            except Refused as e:
                st.error(as_text(e))
    job = st.session_state.get(f"{key}_job")
    if job is None or job.params != params:
        return None
    if not job.finished:
        stop = st.empty()  # shown only while it runs
        stop.button(
            words.stop, key=f"{key}_{words.stop.lower()}", on_click=job.cancel, args=(words.reason,)
        )
        follow(job, what=words.what)
        stop.empty()
    task = job.task
    if task.status == DONE:
        return job
    if task.status == CANCELLED:
        st.warning(as_text(f"{words.what} was {task.reason or words.reason}; {words.after}"))
    elif task.error:
        st.error(as_text(f"{words.what} failed: {task.error}"))
    return None
