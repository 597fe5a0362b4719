"""The task record and its state machine (pure)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    BANNED = "banned"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"


UNFINISHED = frozenset({Status.QUEUED, Status.RUNNING})
FINAL = frozenset(Status) - UNFINISHED
# Final states in which the held credits go back to the balance.
REFUNDED = frozenset({Status.FAILED, Status.BANNED, Status.EXPIRED, Status.CANCELLED})
WITH_ERROR = frozenset({Status.FAILED, Status.BANNED, Status.EXPIRED})

# The one definition of how a task moves; the store's statements are built from it (each
# moves only a row whose status is among ``sources(target)``):
# queued → running → success | failed | banned;  running → queued (lease lapsed, released);
# queued → expired | cancelled | failed;  running → cancelled.
TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.QUEUED: frozenset({Status.RUNNING, Status.EXPIRED, Status.CANCELLED, Status.FAILED}),
    Status.RUNNING: frozenset(
        {Status.QUEUED, Status.SUCCESS, Status.FAILED, Status.BANNED, Status.CANCELLED}
    ),
}


def task_seed(task_id: str) -> int:
    """A 63-bit seed from a task id: a re-run of the task, and every view of a multiview
    task, uses the same one."""
    return int.from_bytes(hashlib.sha256(task_id.encode()).digest()[:8], "big") >> 1


def can_move(current: Status, target: Status) -> bool:
    return target in TRANSITIONS.get(current, frozenset())


# ``queuing_num`` counts at most this many tasks ahead: a task further back shows this, and
# a poll costs the same at any queue depth.
POSITION_CAP = 1000


def claim_order(task: Task, running_of_key: int) -> tuple[int, float, str]:
    """Where a queued task stands in the order workers claim in: the tasks of the keys with
    the fewest running tasks first (``running_of_key``: the task's key's), then the oldest,
    so that no single key starves the others."""
    return (running_of_key, task.created_at, task.id)


def sources(target: Status) -> frozenset[Status]:
    """The statuses a task may move to ``target`` from."""
    return frozenset(s for s, targets in TRANSITIONS.items() if target in targets)


class AttemptOutcome(StrEnum):
    """How one backend's attempt at a task ended (the attempts table's ``outcome``)."""

    SUCCESS = "success"
    FAILED = "failed"  # the backend failed; the next backend of the chain may run
    RETRYABLE = "retryable"  # failed in a way that may pass on a later try
    REJECTED = "rejected"  # the provider refused the request (moderation): no fallback
    SKIPPED = "skipped"  # not run: the backend was not ready
    CANCELLED = "cancelled"  # the client cancelled the task meanwhile


@dataclass(frozen=True, slots=True)
class Reference:
    """One input image of a task, in ``image[N]`` order: a user file or a template image."""

    source: str  # file_token | url | object | template
    value: str  # token, URL, object key, or "<slug>/<index>"

    def to_json(self) -> dict[str, str]:
        return {"source": self.source, "value": self.value}

    @classmethod
    def from_json(cls, data: dict[str, str]) -> Reference:
        return cls(source=data["source"], value=data["value"])


@dataclass(frozen=True, slots=True)
class Task:
    id: str
    account_id: str
    api_key_id: str
    type: str
    status: Status
    model_version: str
    input: dict[str, Any]
    prompt: str
    refs: tuple[Reference, ...]
    price: int
    consumed_credit: int
    progress: int
    attempts: int
    worker_id: str | None
    lease_until: float | None
    backend: str | None
    output_key: str | None  # the image; a multiview task's front view
    output_views: dict[str, str] | None  # a multiview task's {view: key}
    output_deleted_at: float | None
    error_code: int | None
    error_msg: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None

    @property
    def is_final(self) -> bool:
        return self.status in FINAL
