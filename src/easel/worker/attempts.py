"""One backend attempt, and what its errors mean for the task.

A ``BackendError`` says what happened (retryable, failed, rejected); a backend that overruns
its ``timeout_s`` is cut off and counts as retryable; any other exception a backend lets out
is turned into a ``BackendError`` here, so no backend error ever reaches the worker's outage
path (easel.store.outage) and re-queues the task as if the database were down.
"""

from __future__ import annotations

import asyncio
import logging

from easel.backends.base import (
    BackendError,
    BackendFailed,
    BackendRejected,
    BackendUnavailable,
    GeneratedImage,
    ImageBackend,
    Job,
    JobCancelled,
    JobControl,
    within,
)
from easel.domain.errors import first_line
from easel.domain.images import encode_as
from easel.domain.tasks import AttemptOutcome
from easel.store import is_outage

log = logging.getLogger("easel.worker")


class Control:
    """The JobControl a backend sees: progress in, cancellation out (thread-safe enough:
    single attribute writes)."""

    def __init__(self) -> None:
        self.fraction = 0.0
        self.stop = False
        self.cancel_requested = False  # stop because the client cancelled
        self.stopping = False  # stop because the worker is shutting down (else: claim lost)

    def progress(self, fraction: float) -> None:
        self.fraction = max(self.fraction, min(1.0, max(0.0, fraction)))

    @property
    def cancelled(self) -> bool:
        return self.stop


async def run_attempt(backend: ImageBackend, job: Job, control: JobControl) -> GeneratedImage:
    """Run one backend attempt within the backend's ``timeout_s``: the one place that
    deadline is enforced. An exception a backend should not let out (a bug, or its library
    failing on the inputs, such as Pillow's OSError on a reference) is logged with its
    traceback and becomes a backend error, so the task falls back or ends with a refund now,
    instead of passing for a database outage and being re-queued. A network error
    counts as the provider being away: the next backend of the chain may run the task."""
    try:
        return await _within_deadline(backend, job, control)
    except (BackendError, JobCancelled):
        raise
    except Exception as exc:
        message = f"backend {backend.name!r} failed unexpectedly: {first_line(exc)}"
        if is_outage(exc):
            log.warning("task %s: %s", job.task_id, message)
            raise BackendUnavailable(message) from exc
        log.error("task %s: %s", job.task_id, message, exc_info=exc)
        raise BackendFailed(message) from exc


async def _within_deadline(backend: ImageBackend, job: Job, control: JobControl) -> GeneratedImage:
    """``backend.generate``, cancelled past the backend's ``timeout_s`` (everything the
    attempt does: requests, retries and their waits, polls); that counts as a retryable
    failure, so the next backend of the chain runs the task."""
    limit_s, work = backend.timeout_s, backend.generate(job, control)
    if limit_s is None:
        return await work
    late = f"backend {backend.name!r} did not finish within {limit_s:g} s"
    return await within(limit_s, work, late)


def outcome_of(exc: BackendError) -> AttemptOutcome:
    if isinstance(exc, BackendRejected):
        return AttemptOutcome.REJECTED
    return AttemptOutcome.RETRYABLE if exc.retryable else AttemptOutcome.FAILED


async def in_format(image: GeneratedImage, fmt: str | None) -> GeneratedImage:
    """The image encoded as the task's ``output_format``; the provider's own bytes (and any
    C2PA manifest in them) when it asked for none or they are in that format already."""
    if fmt is None or fmt == image.format:
        return image
    return GeneratedImage(await asyncio.to_thread(encode_as, image.data, fmt), fmt)
