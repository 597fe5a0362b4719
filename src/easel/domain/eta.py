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

A task whose model no live worker has resident (a local pipeline moved out of GPU memory)
waits for it to be swapped in first: its estimate adds the swap-in time a worker advertised
(:func:`swap_wait`). With nothing advertised there is nothing to add, never a guess.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
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


@dataclass(frozen=True, slots=True)
class LiveWorker:
    """A worker with a recent heartbeat, as it advertised itself: the models it takes, its
    slots, which of the models it has resident (a task starts painting at once) and how long
    swapping each in took (seconds, where it knows)."""

    id: str
    models: tuple[str, ...]
    slots: int
    resident: frozenset[str]
    load_s: Mapping[str, float] = field(default_factory=dict)


def advertised(
    worker_id: str,
    models: Sequence[str],
    slots: int,
    resident: Collection[str] | None = None,
    load_s: Mapping[str, float] | None = None,
) -> LiveWorker:
    """A worker's advert as the store keeps it: ``resident`` None (a worker that does not
    say, such as one older than the advert) means all of ``models``; swap-in times are kept
    for its models only."""
    kept = models if resident is None else [m for m in models if m in resident]
    times = {m: float(s) for m, s in (load_s or {}).items() if m in models}
    return LiveWorker(worker_id, tuple(models), slots, frozenset(kept), times)


def swap_wait(
    workers: Sequence[LiveWorker], model_version: str, on_worker: str | None = None
) -> float | None:
    """The seconds a task of ``model_version`` will wait for its model to be swapped in, or
    None when it will not (or nobody can tell).

    Queued (``on_worker`` None): None when a live worker that takes the model has it
    resident, else the shortest swap-in time a worker that takes it advertised. Claimed by
    ``on_worker`` and not yet painting: that worker's swap-in time unless it has the model
    resident.
    """
    takers = [
        w for w in workers if model_version in w.models and (on_worker is None or w.id == on_worker)
    ]
    if any(model_version in w.resident for w in takers):
        return None
    known = [w.load_s[model_version] for w in takers if model_version in w.load_s]
    return min(known) if known else None


def _seconds(value: float) -> int:
    return max(1, math.ceil(value))


def running_left(
    measured: Measured | None, elapsed_s: float, progress: int, swap_s: float | None = None
) -> Estimate:
    """Seconds until a running task ends.

    With progress reported, extrapolate the observed pace; otherwise the measured mean (and
    ``swap_s``, the swap-in the task waits for before it paints) minus the time already
    spent (at least one second); with neither, no estimate.
    """
    if 0 < progress < 100 and elapsed_s > 0:
        return Estimate(_seconds(elapsed_s * (100 - progress) / progress), Basis.PROGRESS)
    if measured is None:
        return UNKNOWN
    return Estimate(_seconds(measured.mean_s + (swap_s or 0.0) - elapsed_s), measured.basis)


def queued_left(
    measured: Measured | None, ahead: int, slots: int, swap_s: float | None = None
) -> Estimate:
    """Seconds until a queued task ends: the tasks ahead drain through ``slots`` parallel
    runners, then its model is swapped in (``swap_s``, when it must be) and the task itself
    runs. No estimate without a measured run."""
    if measured is None:
        return UNKNOWN
    rounds = ahead // max(slots, 1)
    return Estimate(_seconds(measured.mean_s * (rounds + 1) + (swap_s or 0.0)), measured.basis)


def retry_after(measured: Measured | None) -> int:
    """``Retry-After`` for a key at its unfinished-task limit: about one run."""
    return queued_left(measured, 0, 1).seconds or RETRY_WITHOUT_DATA_S
