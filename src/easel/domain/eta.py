"""Honest time estimates for ``running_left_time`` and ``Retry-After``.

Estimates come from measured run times: the mean duration of the latest successful runs on
the backend that runs the task (for a queued task, the backend that ran the model last) of
the same kind of request (text only, or with reference images: a different provider
endpoint or pipeline input), else of the model on any backend (the store measures them, see
``easel.store.tasks``). A model's runs on one backend say little about another: one model
can be served by a placeholder that answers in a second and by a GPU that takes a minute.

Before the model has a measured run, and before a running task reports progress, there is
no estimate: the task object says ``running_left_time: -1`` (the protocol's "no estimate")
and ``running_left_basis: "none"``, and people see "estimating…" rather than a number made up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

# ``Retry-After`` (429 / 2000) before any measured run: HTTP needs a number, and this is a
# back-off hint for the client, never shown as the time a task takes.
RETRY_WITHOUT_DATA_S = 5


class Basis(StrEnum):
    """What an estimate rests on (the task object's ``running_left_basis``)."""

    BACKEND = "backend"  # runs of the model on this backend
    MODEL = "model"  # runs of the model on any backend: this backend has none yet
    PROGRESS = "progress"  # the task's own pace so far
    NONE = "none"  # nothing measured yet: estimating


@dataclass(frozen=True, slots=True)
class Measured:
    """A mean run time and the runs it averages."""

    mean_s: float
    basis: Basis


@dataclass(frozen=True, slots=True)
class Estimate:
    seconds: int | None  # None: no estimate yet
    basis: Basis

    @property
    def protocol_value(self) -> int:
        """``running_left_time``: the seconds, or -1 when there is no estimate."""
        return -1 if self.seconds is None else self.seconds


UNKNOWN = Estimate(None, Basis.NONE)

# A mean's key: the model, the backend (None: any) and whether the tasks had reference
# images (None: either way).
MeanKey = tuple[str, str | None, bool | None]


def mean_keys(model_version: str, backend: str | None, edits: bool) -> list[tuple[MeanKey, Basis]]:
    """The means an estimate may rest on, best first: this backend and kind of request,
    this backend, this kind of request on any backend, the model."""
    model_wide: list[tuple[MeanKey, Basis]] = [
        ((model_version, None, edits), Basis.MODEL),
        ((model_version, None, None), Basis.MODEL),
    ]
    if backend is None:
        return model_wide
    return [
        ((model_version, backend, edits), Basis.BACKEND),
        ((model_version, backend, None), Basis.BACKEND),
        *model_wide,
    ]


def _seconds(value: float) -> int:
    return max(1, math.ceil(value))


def running_left(measured: Measured | None, elapsed_s: float, progress: int) -> Estimate:
    """Seconds until a running task ends.

    With progress reported, extrapolate the observed pace; otherwise the measured mean minus
    the time already spent (at least one second); with neither, no estimate.
    """
    if 0 < progress < 100 and elapsed_s > 0:
        return Estimate(_seconds(elapsed_s * (100 - progress) / progress), Basis.PROGRESS)
    if measured is None:
        return UNKNOWN
    return Estimate(_seconds(measured.mean_s - elapsed_s), measured.basis)


def queued_left(measured: Measured | None, ahead: int, slots: int) -> Estimate:
    """Seconds until a queued task ends: the tasks ahead drain through ``slots`` parallel
    runners, then the task itself runs. No estimate without a measured run."""
    if measured is None:
        return UNKNOWN
    rounds = ahead // max(slots, 1)
    return Estimate(_seconds(measured.mean_s * (rounds + 1)), measured.basis)


def retry_after(measured: Measured | None) -> int:
    """``Retry-After`` for a key at its unfinished-task limit: about one run."""
    return queued_left(measured, 0, 1).seconds or RETRY_WITHOUT_DATA_S
