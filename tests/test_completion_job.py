"""app_pages/completion_job.py: a completion job's states and transitions, without streamlit."""

import threading

import numpy as np
import pytest
import torch

from app_pages.completion_job import (
    CANCELLED,
    DONE,
    INTERRUPTED,
    RUNNING,
    CompletionJob,
    CompletionRequest,
    rows_to_sample,
)
from models import ModelConfig, SparseTransformer
from models.completion import HIDDEN_GRAY, keep_mask
from models.tokens import Geometry

G = Geometry(28, 28, 1)
IMAGE = np.full((28, 28, 1), 200, dtype=np.uint8)


@pytest.fixture(scope="module")
def model() -> SparseTransformer:
    torch.manual_seed(0)
    return SparseTransformer(ModelConfig.from_name("fmnist-tiny", layout="strided(l=28)")).eval()


def request(keep: torch.Tensor, **changes) -> CompletionRequest:
    fields = dict(
        models=("a", "b"),
        image_name="x.png",
        image_bytes=IMAGE.tobytes(),
        keep_bytes=keep.numpy().tobytes(),
        n_samples=2,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        seed=0,
    )
    return CompletionRequest(**(fields | changes))


def test_a_run_samples_every_model_in_turn_and_is_done(model):
    keep = keep_mask(G, keep_rows=26)
    job = CompletionJob(request(keep))
    assert job.status == RUNNING and job.running and not job.cancel_requested
    started, rows = [], []
    job.run(
        {"a": model, "b": model},
        IMAGE,
        keep,
        on_model=started.append,
        on_row=lambda name, partial, share: rows.append((name, partial.row, share)),
    )
    assert job.status == DONE and not job.running and not job.partial
    assert started == ["a", "b"]
    assert rows == [("a", 26, 0.5), ("a", 27, 1.0), ("b", 26, 0.5), ("b", 27, 1.0)]
    assert set(job.results) == {"a", "b"} and job.results["a"].shape == (2, 28, 28, 1)
    assert (job.results["a"][:, :26] == 200).all()  # the kept rows
    np.testing.assert_array_equal(job.results["a"], job.results["b"])  # same model and seed
    job.stop()  # a finished job stays finished
    job.interrupt()
    assert job.status == DONE and not job.cancel_requested


def test_stop_from_another_thread_keeps_the_rows_sampled_so_far(model):
    keep = keep_mask(G, keep_rows=20)
    job = CompletionJob(request(keep))
    started = []

    def press_stop(name, partial, share):
        if partial.row == 22:  # Stop's callback runs in another thread
            stopper = threading.Thread(target=job.stop)
            stopper.start()
            stopper.join()

    job.run({"a": model, "b": model}, IMAGE, keep, on_model=started.append, on_row=press_stop)
    assert job.status == CANCELLED and job.cancel_requested and not job.results
    assert started == ["a"]  # the next model never started
    row, images = job.partial["a"]
    assert row == 22 and images.shape == (2, 28, 28, 1)
    assert (images[:, :20] == 200).all() and (images[:, row + 1 :] == HIDDEN_GRAY).all()


def test_an_interrupted_job_stops_at_its_next_token(model):
    """The flag alone, as a rerun sets it while the interrupted run is still sampling."""
    keep = keep_mask(G, keep_rows=24)
    job = CompletionJob(request(keep))

    def rerun(name, partial, share):
        if partial.row == 25:
            job.interrupt()

    job.run({"a": model}, IMAGE, keep, on_row=rerun)
    assert job.status == INTERRUPTED and job.cancel_requested and not job.results
    assert job.partial["a"].row == 25


def test_results_belong_to_the_request_that_made_them():
    keep = keep_mask(G, keep_rows=14)
    job = CompletionJob(request(keep))
    assert job.is_for(request(keep)) and not job.is_for(request(keep, seed=1))
    assert not job.is_for(request(keep_mask(G, keep_rows=13)))
    assert CompletionJob(request(keep)).id != job.id


def test_rows_to_sample_counts_rows_with_a_pixel_to_sample():
    assert rows_to_sample(keep_mask(G, keep_rows=26), G) == 2
    assert rows_to_sample(keep_mask(G, rect=(0, 0, 28, 28)), G) == 1  # nothing: at least 1
    assert rows_to_sample(keep_mask(G, rect=(4, 4, 24, 20)), G) == 28
    rgb = Geometry(4, 5, 3)
    assert rows_to_sample(keep_mask(rgb, keep_rows=1), rgb) == 3


def test_a_job_runs_in_the_pool_and_its_session_end_interrupts_it(model):
    """Submitted to a worker pool: queued behind another job, then sampled in a worker; when
    its session ends (alive() false) the pool interrupts it at its next token."""
    from app_pages.jobs import WorkerPool

    pool = WorkerPool(1, watch_seconds=0.05)
    keep = keep_mask(G, keep_rows=27)
    first = CompletionJob(request(keep, models=("a",)))
    first.submit(pool, {"a": model}, IMAGE, keep)
    second = CompletionJob(request(keep, models=("a",), seed=1))
    second.submit(pool, {"a": model}, IMAGE, keep)
    assert pool.position(second.task) in (0, 1, 2, None)
    assert first.task.wait(60) and second.task.wait(60)
    assert first.status == second.status == DONE and first.current == "a"
    assert not np.array_equal(first.results["a"], second.results["a"])

    session = {"open": True}
    long = CompletionJob(request(keep_mask(G, keep_rows=0), models=("a",), n_samples=8))
    long.submit(pool, {"a": model}, IMAGE, keep_mask(G, keep_rows=0), alive=lambda: session["open"])
    while not long.partial and not long.task.finished:
        threading.Event().wait(0.01)
    session["open"] = False  # the tab was closed
    assert long.task.wait(60)
    assert long.status == INTERRUPTED and long.cancel_requested and not long.results
    assert long.task.reason == "the session ended"


def test_stop_cancels_a_queued_job_before_it_starts(model):
    from app_pages.jobs import WorkerPool

    pool = WorkerPool(1, watch_seconds=0.05)
    blocker = threading.Event()
    from app_pages.jobs import Task

    started = threading.Event()
    pool.submit(Task(lambda t: started.set() or blocker.wait(10), label="busy"))
    assert started.wait(10)  # the worker is busy: the job waits in the queue
    keep = keep_mask(G, keep_rows=27)
    job = CompletionJob(request(keep, models=("a",)))
    job.submit(pool, {"a": model}, IMAGE, keep)
    assert pool.position(job.task) == 1
    job.stop()
    blocker.set()
    assert job.task.wait(10)
    assert job.status == CANCELLED and not job.results and job.current is None


def test_completion_memory_of_the_largest_request_fits_the_budget(model):
    from app_pages import limits
    from app_pages.completion_job import completion_memory
    from app_pages.jobs import MEMORY_BUDGET, over_budget
    from models.model import ModelConfig as Config

    shipped = Config.from_name("fmnist-tiny", layout="strided(l=28)")
    shipped.n_layer, shipped.n_embd = 8, 128

    class Shipped:
        config = shipped

    worst = completion_memory([Shipped] * limits.MAX_MODELS, limits.SAMPLES.high)
    assert 100 * 2**20 < worst < MEMORY_BUDGET and over_budget("it", worst) is None
