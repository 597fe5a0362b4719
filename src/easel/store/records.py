"""What the store takes and gives besides the domain's types: plain records, no SQL, shared
by the SQL store, the in-memory one (:mod:`easel.store.memory`) and the services."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from easel.domain.eta import Measured
from easel.domain.tasks import Reference

IDEMPOTENCY_WINDOW_S = 24 * 3600  # how long a submit's Idempotency-Key is remembered
PENDING_SIZE = 0  # a file announced by POST /upload/sts/token whose bytes were not inspected


@dataclass(frozen=True, slots=True)
class NewTask:
    id: str
    type: str
    model_version: str
    input: dict[str, Any]
    prompt: str
    refs: tuple[Reference, ...]
    price: int


@dataclass(frozen=True, slots=True)
class Idempotency:
    key: str
    body_hash: str


@dataclass(frozen=True, slots=True)
class Heartbeat:
    ours: bool  # the claim is still this worker's
    cancel: bool  # the client asked to cancel the task


@dataclass(frozen=True, slots=True)
class Attempt:
    backend: str
    claim: int
    started_at: float
    ended_at: float | None
    outcome: str | None
    error: str | None
    served_by: str | None = None  # ImageBackend.served_by: what makes the image


@dataclass(frozen=True, slots=True)
class Outlook:
    measured: Measured | None  # unfinished tasks only: the mean run time its estimate uses
    position: int | None  # queued tasks only
    live_slots: int | None  # queued tasks only
    attempts: list[Attempt]
    # the swap-in its model waits for (queued, or claimed and not painting yet): see
    # easel.domain.eta.swap_wait; None: none, or none advertised
    swap_s: float | None = None


@dataclass(frozen=True, slots=True)
class StoredFile:
    token: str
    account_id: str
    key: str
    format: str
    size: int
    width: int
    height: int
