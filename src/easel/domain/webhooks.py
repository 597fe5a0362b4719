"""Webhooks as every layer sees them: the event types a webhook may ask for, a webhook, its
deliveries and their attempts."""

from __future__ import annotations

from dataclasses import dataclass

from easel.domain.tasks import Status

# task.queued, task.running, task.success, task.failed, task.banned, task.expired, …
EVENT_TYPES = tuple(f"task.{s.value}" for s in Status if s is not Status.UNKNOWN)
MAX_PER_KEY = 20


@dataclass(frozen=True, slots=True)
class Webhook:
    id: str
    url: str
    events: tuple[str, ...]
    created_at: float


@dataclass(frozen=True, slots=True)
class LoggedAttempt:
    """One attempt of a delivery: the HTTP status (None: no answer), latency and error."""

    number: int
    status_code: int | None
    latency_ms: float
    error: str | None
    created_at: float


@dataclass(frozen=True, slots=True)
class Delivery:
    id: str
    task_id: str
    event_type: str
    status: str  # pending | delivered | dead
    next_attempt_at: float | None
    created_at: float
    attempts: tuple[LoggedAttempt, ...]


@dataclass(frozen=True, slots=True)
class Due:
    """A claimed delivery: what a dispatcher needs to send one attempt."""

    id: str
    claim_token: str
    url: str
    secret: str
    base_url: str
    task_id: str
    event_type: str
    progress: int
    created_at: float  # the event's time
    attempts: int
    window_start: float | None
    window_attempts: int
