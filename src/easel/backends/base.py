"""The ``ImageBackend`` port: what every backend (placeholder, diffusers, providers) implements.

A backend gets a :class:`Job` (ids and bytes, never database rows) and a :class:`JobControl`
for progress and cancellation, and returns one :class:`GeneratedImage`. Provider and library
exceptions are translated into :class:`BackendError` subclasses where they enter, so the
worker decides retry, fallback and the task's final state from these classes alone.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from easel.domain.options import ImageOptions

T = TypeVar("T")
log = logging.getLogger("easel.backends")


@dataclass(frozen=True, slots=True)
class InputImage:
    data: bytes
    format: str  # png | jpeg | webp (detected from the bytes)
    width: int
    height: int


@dataclass(frozen=True, slots=True)
class Job:
    task_id: str
    model_version: str
    prompt: str  # the composed prompt (template, user prompt, t_pose, sketch_to_render)
    images: tuple[InputImage, ...]  # in image[N] order: the user's files, then the template's
    provider_model: str | None = None  # from [models."…"].provider_model, when configured
    negative_prompt: str = ""  # text_to_image's or a v3 request's (diffusers, Midjourney)
    # A seed the views of one multiview task share; kinds that take one send it (BFL, Gemini,
    # diffusers; OpenAI's image API has none). None: the kind's own choice.
    seed: int | None = None
    # v3's size, aspect_ratio, quality, background, output_format, watermark, plus a
    # template's default aspect ratio; each kind maps what it can (its module says how)
    options: ImageOptions = field(default_factory=ImageOptions)


def record_mapping(backend: str, job: Job, sent: Mapping[str, object]) -> None:
    """Log what ``backend`` made of the job's options: the record of how a kind (a stand-in
    above all: a local model behind a hosted name) honoured them. Silent without options."""
    asked = job.options.to_json() | ({"negative_prompt": "…"} if job.negative_prompt else {})
    if asked:
        log.info("task %s on %s: options %s sent as %s", job.task_id, backend, asked, sent)


@dataclass(frozen=True, slots=True)
class GeneratedImage:
    data: bytes
    format: str  # png | jpeg


class JobControl(Protocol):
    """Hooks a backend calls while it runs; safe to call from a worker thread."""

    def progress(self, fraction: float) -> None:
        """Report progress in [0, 1]."""

    @property
    def cancelled(self) -> bool:
        """True once the task should stop; check it at every step."""


class LoadState(enum.Enum):
    """Where a backend stands with what it must load before its first task.

    Only local pipelines load anything; the worker loads every backend at start
    (:meth:`ImageBackend.load`), so a pipeline that cannot load is known before a task
    waits for it. ``FAILED`` is final for the process: the worker fails the tasks of a model
    none of whose backends can run, with a refund, instead of leaving them queued.
    """

    NOTHING_TO_LOAD = "nothing to load"  # remote providers, the placeholder
    NOT_LOADED = "not loaded"  # loads at the worker's start (or the first task)
    LOADING = "loading"
    LOADED = "loaded"
    FAILED = "failed"  # unavailable_reason() says why


class ImageBackend(ABC):
    """The port. :meth:`generate` is the one thing every backend does; the rest are optional
    abilities, declared here with the default of a backend that lacks them, so the worker and
    the router call them directly. A kind overrides what it has:

    - ``load_state`` and :meth:`load`: what it must load before its first task (local
      pipelines); the worker calls :meth:`load` at start for ``NOT_LOADED`` backends.
    - ``timeout_s``: the deadline of one attempt, everything in it (requests, retries, polls,
      downloads); the worker enforces it (:func:`easel.worker.attempts.run_attempt`), nothing
      else does. None: no deadline (an inference on this machine cannot stop mid-step).
    - :meth:`unavailable_reason`: why it cannot take tasks now (a missing key, no GPU).
    - :meth:`close`: what it holds open (SDK clients, a pipeline in GPU memory).
    - :meth:`served_by`: what makes the image, for the task's record.
    - ``resident`` and ``load_seconds``: whether a task can start at once or must first wait
      for the backend's pipeline to be swapped in, and how long that took last time; the
      worker advertises both, prefers claiming resident models' tasks and the ETA counts
      the swap (remote kinds never swap: the defaults).
    """

    name: str
    kind: str
    load_state: LoadState = LoadState.NOTHING_TO_LOAD
    timeout_s: float | None = None

    @property
    def resident(self) -> bool:
        """True when a task can start painting at once; False while what it runs (a local
        pipeline evicted from GPU memory) must be loaded or swapped in first. Default: True,
        a remote provider or the placeholder never swaps."""
        return True

    @property
    def load_seconds(self) -> float | None:
        """How long its last load or swap-in took, in seconds (what a task waits when it
        is not ``resident``); None: it never loads anything, or has not yet."""
        return None

    def unavailable_reason(self) -> str | None:
        """None when the backend can take tasks, else why not (missing key, no GPU, weights
        that failed to load), in a few words a client may read."""
        return None

    async def load(self) -> None:
        """Load what the first task needs (a no-op for kinds with nothing to load); on
        failure ``load_state`` becomes ``FAILED`` and :class:`BackendUnavailable` is raised."""
        return None

    @abstractmethod
    async def generate(self, job: Job, control: JobControl) -> GeneratedImage:
        """One image for ``job``; provider and library errors as :class:`BackendError`."""

    async def close(self) -> None:
        """Release what the backend holds; a later task may open it again."""
        return None

    def served_by(self, provider_model: str | None) -> str:
        """What makes the image when this backend runs a model under ``provider_model`` (the
        leg's provider id), in a few words: recorded on each attempt and shown by the task
        and ``GET /models``, so a stand-in is never passed off as the hosted model. Default:
        the kind and the id; a local kind names its pipeline and weights."""
        return f"{self.kind} {provider_model}" if provider_model else self.kind


class BackendError(Exception):
    """A backend could not produce the image. ``retryable`` errors may fall back."""

    retryable = False
    error_code = 1001


class BackendUnavailable(BackendError):
    """Timeouts, 5xx, connection failures, a model that did not load: try elsewhere."""

    retryable = True


class BackendRateLimited(BackendUnavailable):
    """The provider said 429."""


class BackendRejected(BackendError):
    """Content policy: final, never retried elsewhere; the task ends ``banned`` (2008)."""

    error_code = 2008


class BackendFailed(BackendError):
    """A definite failure (bad key, retired model, bad request): final for this backend."""


class JobCancelled(Exception):
    """The backend stopped because the task was cancelled."""


async def within(seconds: float, work: Awaitable[T], late: str) -> T:
    """Await ``work`` for at most ``seconds``; past that it is cancelled and becomes
    ``BackendUnavailable(late)``: retryable, so a retry or the next backend may succeed.
    The worker bounds an attempt with it (``timeout_s``), a remote kind one request
    (``request_timeout_s``). A ``TimeoutError`` raised inside ``work`` is its own and passes."""
    limit = asyncio.timeout(seconds)
    try:
        async with limit:
            return await work
    except TimeoutError:
        if not limit.expired():
            raise
        raise BackendUnavailable(late) from None
