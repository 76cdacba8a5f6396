"""The Complete page's job: one completion request of one session, sampled model after model,
row by row, stoppable at any token.

No streamlit here: app_pages/complete.py keeps a CompletionJob in the session's state and draws
it, and tests drive one directly. The sampler runs in a thread of the server's worker pool
(app_pages/jobs.py; submit), while the script run that started it waits and draws its rows.
Stop's callback and the next rerun run in other threads, so they only set the job's cancel flag
(a threading.Event), which the sampler polls before every token; the pool interrupts it too when
its session ends.

    running --stop()-------> cancelled     Stop: the rows sampled so far are kept
    running --interrupt()--> interrupted   a rerun found the job running: its run was cut short
    running --run() ends---> done          every model finished
                             cancelled     the sampler saw the flag first
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch

from app_pages.jobs import Job, Task, WorkerPool
from models.completion import HIDDEN_GRAY, complete
from models.model import SparseTransformer
from models.sampling import SamplingCancelled
from models.tokens import Geometry, tokens_to_image

RUNNING, DONE, CANCELLED, INTERRUPTED = "running", "done", "cancelled", "interrupted"


@dataclass(frozen=True)
class CompletionRequest:
    """Everything the samples depend on. Results are shown only for the request that made them,
    so a new image or setting never shows stale samples."""

    models: tuple[str, ...]
    image_name: str
    image_bytes: bytes
    keep_bytes: bytes
    n_samples: int
    temperature: float
    top_k: int  # 0: off
    top_p: float  # 1: off
    seed: int


class Partial(NamedTuple):
    """What one model has sampled so far."""

    row: int  # the last image row sampled
    images: np.ndarray  # uint8 [n_samples, H, W, C]; pixels not sampled yet are HIDDEN_GRAY


def completion_memory(models, n_samples: int) -> int:
    """Bytes a completion needs at most beyond the loaded models: per model, the cached keys
    and values and the activations of ``n_samples`` sequences (float32)."""
    total = 0
    for model in models:
        c = model.config
        n = c.height * c.width * c.channels
        kv = 2 * c.n_layer * n * c.n_embd * 4  # keys and values of one sequence
        activations = n * (c.vocab_size + 4 * c.n_embd) * 4
        total += n_samples * (kv + activations)
    return total  # the limits' largest (16 samples x 3 shipped models): ~440 MB


def rows_to_sample(keep: torch.Tensor, geometry: Geometry) -> int:
    """The number of image rows with a pixel to sample (at least 1: a progress denominator)."""
    return max(1, int((~keep).view(geometry.height, -1).any(dim=1).sum()))


@dataclass(eq=False)
class CompletionJob(Job):
    """One completion (the app's Job shape: start, progress, cancel, result): its request, its
    status, the rows sampled so far and the samples."""

    request: CompletionRequest
    status: str = RUNNING
    partial: dict[str, Partial] = field(default_factory=dict)  # models not finished
    results: dict[str, np.ndarray] = field(default_factory=dict)  # uint8 [n, H, W, C] each
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    current: str | None = None  # the model being sampled
    task: Task | None = field(default=None, repr=False)  # its place in the worker pool
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def running(self) -> bool:
        return self.status == RUNNING

    @property
    def cancel_requested(self) -> bool:
        """Whether the sampler has been told to stop (polled before every token)."""
        return self._cancel.is_set()

    def is_for(self, request: CompletionRequest) -> bool:
        return self.request == request

    @property
    def result(self) -> dict[str, np.ndarray] | None:
        """Every model's samples, once all are done."""
        return dict(self.results) if self.status == DONE else None

    def cancel(self, reason: str = "stopped") -> None:
        """Stop ("stopped": its button) or interrupt (any other reason) a running job."""
        if reason == "stopped":
            self.stop()
        else:
            self.interrupt()

    def stop(self) -> None:
        """Stop's callback: a running job stops at its next token and counts as cancelled."""
        if self.running:
            self._cancel.set()
            self.status = CANCELLED
            if self.task is not None:
                self.task.cancel("stopped")

    def interrupt(self) -> None:
        """A rerun found this job running (or its session ended): it stops at its next token,
        or leaves the pool's queue before it starts."""
        if self.running:
            self._cancel.set()
            self.status = INTERRUPTED
            if self.task is not None:
                self.task.cancel("interrupted")

    def submit(
        self,
        pool: WorkerPool,
        models: dict[str, SparseTransformer],
        image: np.ndarray,
        keep: torch.Tensor,
        *,
        alive: Callable[[], bool] | None = None,
    ) -> Task:
        """Queue this job's run in ``pool`` (Refused when over its memory budget or when the
        queue is full); ``alive()`` false (the session ended) interrupts it."""

        def work(task: Task) -> None:
            def row(name: str, partial: Partial, share: float) -> None:
                task.report(share, f"{name}: row {partial.row} sampled")

            self.run(models, image, keep, on_row=row)

        return self.start(
            pool,
            work,
            label=f"completion {self.id[:8]}",
            memory=completion_memory(models.values(), self.request.n_samples),
            alive=alive,
            on_cancel=lambda reason: self.interrupt(),
        )

    def run(
        self,
        models: dict[str, SparseTransformer],
        image: np.ndarray,
        keep: torch.Tensor,
        *,
        on_model: Callable[[str], None] | None = None,
        on_row: Callable[[str, Partial, float], None] | None = None,
    ) -> None:
        """Sample with each model in turn, ``on_model(name)`` before each and ``on_row(name,
        partial, share done)`` after each row; ends done, or cancelled at the first token after
        the cancel flag was set (the rows sampled by then stay in ``partial``)."""
        for name, model in models.items():
            self.current = name
            if on_model is not None:
                on_model(name)
            try:
                samples = self._sample(name, model, image, keep, on_row)
            except SamplingCancelled:
                if self.running:
                    self.status = CANCELLED
                return
            self.results[name] = samples
            self.partial.pop(name, None)
        self.status = DONE

    def _sample(
        self,
        name: str,
        model: SparseTransformer,
        image: np.ndarray,
        keep: torch.Tensor,
        on_row: Callable[[str, Partial, float], None] | None,
    ) -> np.ndarray:
        """One model's samples; its rows go to ``partial`` as they come."""
        geometry = model.config.geometry
        todo, done = rows_to_sample(keep, geometry), []

        def record(row: int, tokens: torch.Tensor) -> None:
            sampled = keep.clone()
            sampled[: (row + 1) * geometry.row_stride] = True
            shown = tokens.clone()
            shown[:, ~sampled] = HIDDEN_GRAY
            self.partial[name] = Partial(row, tokens_to_image(shown, geometry))
            done.append(row)
            if on_row is not None:
                on_row(name, self.partial[name], min(1.0, len(done) / todo))

        r = self.request
        return complete(
            model,
            image,
            keep,
            n_samples=r.n_samples,
            temperature=r.temperature,
            top_k=int(r.top_k) or None,
            top_p=float(r.top_p) if r.top_p < 1 else None,
            seed=int(r.seed),
            on_row=record,
            cancel=self._cancel.is_set,
        )
