"""The views of a multiview task: one backend run per view, in front, left, back, right order.

The plan (:func:`easel.domain.multiview.plan`) says per view whether it is generated (from
which of the task's images, with which prompt) or copied unchanged (an edit's views that no
prompt names). Every generated view goes through the model's backend chain like a single image
does (:meth:`easel.worker.runner.Worker._generate`: attempts recorded, fallback, deadline),
with the task's one seed, and is an equal share of the task's progress. Between views the run
stops if the task was cancelled (or its claim lost); a view that fails fails the task, with
a full refund, and no view of it is kept: the views are stored only once all four exist.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from easel.backends.base import (
    BackendError,
    GeneratedImage,
    InputImage,
    JobCancelled,
    JobControl,
)
from easel.domain import multiview
from easel.domain.tasks import AttemptOutcome, Task


class RunControl(JobControl, Protocol):
    """The worker's JobControl: it also says whether a stop is the client's cancel."""

    @property
    def cancel_requested(self) -> bool:
        """True when the client cancelled the task (else a stop means the claim was lost)."""

    @property
    def stopping(self) -> bool:
        """True when the worker is shutting down (the task goes back to the queue)."""


def stop_reason(control: RunControl) -> str:
    """Why a backend was told to stop, as its attempt records it."""
    if control.cancel_requested:
        return "cancelled by the client"
    return "the worker stopped" if control.stopping else "claim lost"


# (task, its images for this view, control, prompt, seed) → (image, backend, attempt id)
Generate = Callable[
    [Task, tuple[InputImage, ...], RunControl, str, int],
    Awaitable[tuple[GeneratedImage, str, int]],
]
EndAttempt = Callable[[int, AttemptOutcome], Awaitable[None]]


class _Share:
    """The control one view's backend sees: its progress is the view's share of the
    task's, and it stops when the task does."""

    def __init__(self, control: RunControl, done: int, total: int) -> None:
        self.control, self.done, self.total = control, done, total

    @property
    def cancel_requested(self) -> bool:
        return self.control.cancel_requested

    @property
    def stopping(self) -> bool:
        return self.control.stopping

    def progress(self, fraction: float) -> None:
        self.control.progress((self.done + min(1.0, max(0.0, fraction))) / self.total)

    @property
    def cancelled(self) -> bool:
        return self.control.cancelled


async def make_views(
    task: Task,
    images: tuple[InputImage, ...],
    control: RunControl,
    generate: Generate,
    end_attempt: EndAttempt,
) -> tuple[dict[str, GeneratedImage], str, int]:
    """Every view of ``task``; returns the views, the backend of the last generated one and
    its attempt (left open for the caller to end, as a single image's is). Raises what the
    backend chain raises (the message names the view), or :class:`JobCancelled` when the
    task stopped between views."""
    steps = multiview.plan(task.type, task.input)
    total, seed = multiview.generated(steps), multiview.view_seed(task.id)
    views: dict[str, GeneratedImage] = {}
    backend, attempt, done = "", 0, 0
    for step in steps:
        image = images[step.reference]
        if step.prompt is None:  # an edit leaves this view as it was
            views[step.view] = GeneratedImage(image.data, image.format)
            continue
        if done and control.cancelled:
            await end_attempt(attempt, AttemptOutcome.SUCCESS)
            raise JobCancelled(f"stopped before the {step.view} view")
        share = _Share(control, done, total)
        try:
            made, backend_name, next_attempt = await generate(
                task, (image,), share, step.prompt, seed
            )
        except BackendError as exc:
            if done:
                await end_attempt(attempt, AttemptOutcome.SUCCESS)
            where = f"the {step.view} view (view {done + 1} of {total}) failed: {exc}"
            raise type(exc)(where) from exc
        except JobCancelled:
            if done:
                await end_attempt(attempt, AttemptOutcome.SUCCESS)
            raise
        if done:
            await end_attempt(attempt, AttemptOutcome.SUCCESS)
        backend, attempt, done = backend_name, next_attempt, done + 1
        views[step.view] = made
        control.progress(done / total)
    return views, backend, attempt
