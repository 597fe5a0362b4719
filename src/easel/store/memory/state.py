"""The in-memory store's tables and the moves every part shares: a credit move with its ledger
row, an event with its webhook outbox rows, and a task's change of status, allowed only as
:func:`easel.domain.tasks.can_move` says (the same table the SQL statements are built from).

Every public method of the parts holds :attr:`Memory.lock` and runs without awaiting inside
it, so each is atomic, and checks everything it may refuse before it changes anything.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from easel.domain.accounts import LedgerKind
from easel.domain.eta import LiveWorker
from easel.domain.tasks import REFUNDED, Status, Task, can_move
from easel.domain.text import load_stored
from easel.domain.webhooks import LoggedAttempt
from easel.store.records import Attempt, StoredFile


def stored(value: Any) -> Any:
    """``value`` as it reads back from a JSON column (a copy: nothing shared with the caller)."""
    return load_stored(json.dumps(value))


@dataclass(slots=True)
class AccountRow:
    name: str
    balance: int
    frozen: int
    created_at: float
    event_seq: int = 0


@dataclass(slots=True)
class KeyRow:
    id: str
    account_id: str
    key_hash: str
    created_at: float
    revoked_at: float | None = None


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    id: int
    account_id: str
    task_id: str | None
    kind: LedgerKind
    balance_delta: int
    frozen_delta: int
    created_at: float


@dataclass(frozen=True, slots=True)
class EventRow:
    account_id: str
    seq: int
    api_key_id: str
    task_id: str
    status: Status
    progress: int
    created_at: float


@dataclass(slots=True)
class HookRow:
    id: str
    account_id: str
    api_key_id: str
    url: str
    events: tuple[str, ...]
    secret: str
    base_url: str
    created_at: float


@dataclass(slots=True)
class DeliveryRow:
    id: str
    webhook_id: str
    task_id: str
    event_type: str
    progress: int
    created_at: float
    next_attempt_at: float | None
    status: str = "pending"
    attempts: int = 0
    window_start: float | None = None
    window_attempts: int = 0
    claim_token: str | None = None


@dataclass(slots=True)
class AttemptRow:
    task_id: str
    attempt: Attempt


@dataclass(slots=True)
class WorkerRow:
    advert: LiveWorker  # the models it takes, its slots, what it has resident
    heartbeat_at: float


@dataclass(slots=True)
class Memory:
    """Every table of the store, as Python objects."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    accounts: dict[str, AccountRow] = field(default_factory=dict)
    keys: dict[str, KeyRow] = field(default_factory=dict)  # by key id
    ledger: list[LedgerEntry] = field(default_factory=list)
    tasks: dict[str, Task] = field(default_factory=dict)
    cancel_requested: dict[str, float] = field(default_factory=dict)  # task id → when
    attempts: dict[int, AttemptRow] = field(default_factory=dict)
    idempotency: dict[tuple[str, str], tuple[str, str, float]] = field(default_factory=dict)
    workers: dict[str, WorkerRow] = field(default_factory=dict)
    events: list[EventRow] = field(default_factory=list)
    hooks: dict[str, HookRow] = field(default_factory=dict)
    deliveries: dict[str, DeliveryRow] = field(default_factory=dict)
    delivery_log: dict[str, list[LoggedAttempt]] = field(default_factory=dict)
    files: dict[str, tuple[StoredFile, float]] = field(default_factory=dict)  # token → (file, at)
    secrets: dict[str, str] = field(default_factory=dict)
    listeners: list[Callable[[], None]] = field(default_factory=list)

    def __repr__(self) -> str:
        return f"<Memory: {len(self.accounts)} accounts, {len(self.tasks)} tasks>"

    # -- credits --------------------------------------------------------------------------

    def record_move(
        self, account_id: str, task_id: str | None, kind: LedgerKind, balance: int, frozen: int
    ) -> None:
        """Apply one credit move to the account and write its ledger row."""
        account = self.accounts[account_id]
        account.balance += balance
        account.frozen += frozen
        entry = LedgerEntry(
            len(self.ledger) + 1, account_id, task_id, kind, balance, frozen, time.time()
        )
        self.ledger.append(entry)

    # -- events and their webhook outbox --------------------------------------------------

    def event(self, task: Task, status: Status, progress: int) -> int:
        account = self.accounts[task.account_id]
        account.event_seq += 1
        seq, now = account.event_seq, time.time()
        previous = self._previous_status(task.account_id, task.id)
        self.events.append(
            EventRow(task.account_id, seq, task.api_key_id, task.id, status, progress, now)
        )
        event_type = f"task.{status.value}"
        if previous is status:
            return seq  # progress only: no delivery
        for hook in self.hooks.values():
            if hook.api_key_id == task.api_key_id and event_type in hook.events:
                delivery_id = f"msg_{uuid.uuid4().hex}"
                self.deliveries[delivery_id] = DeliveryRow(
                    delivery_id, hook.id, task.id, event_type, progress, now, now
                )
        return seq

    def _previous_status(self, account_id: str, task_id: str) -> Status | None:
        for row in reversed(self.events):
            if row.account_id == account_id and row.task_id == task_id:
                return row.status
        return None

    def notify(self) -> None:
        for on_queued in list(self.listeners):
            on_queued()

    # -- tasks ----------------------------------------------------------------------------

    def fenced(self, task: Task) -> Task | None:
        """The current row of ``task`` while the claim finishing it is still the current one."""
        row = self.tasks.get(task.id)
        if (
            row is None
            or row.status is not Status.RUNNING
            or (row.worker_id, row.attempts) != (task.worker_id, task.attempts)
        ):
            return None
        return row

    def queued(self, task: Task) -> Task | None:
        """The current row of ``task`` while it is still waiting in the queue."""
        row = self.tasks.get(task.id)
        return row if row is not None and row.status is Status.QUEUED else None

    def move(self, row: Task | None, target: Status, **changes: Any) -> Task | None:
        """Move ``row`` (the current one) to ``target`` with ``changes``, where the table of
        moves allows it; None (nothing changed) where it does not."""
        if row is None or not can_move(row.status, target):
            return None
        moved = dataclasses.replace(row, status=target, **changes)
        self.tasks[row.id] = moved
        return moved

    def moved(self, task: Task, target: Status, progress: int) -> None:
        """What follows a move of ``task`` to ``target``: a success consumes the held price,
        a refunded end gives it back, every move is an event, a re-queued task wakes workers."""
        if target is Status.SUCCESS:
            self.record_move(task.account_id, task.id, LedgerKind.SETTLE, 0, -task.price)
        elif target in REFUNDED:
            self.record_move(task.account_id, task.id, LedgerKind.REFUND, task.price, -task.price)
        self.event(task, target, progress)
        if target is Status.QUEUED:
            self.notify()

    def end_with_refund(
        self, row: Task | None, task: Task, status: Status, code: int | None, msg: str | None
    ) -> bool:
        """End ``row`` in ``status`` (failed, banned, expired, cancelled) with its credits
        refunded; False when ``row`` is None or may not move there."""
        assert status in REFUNDED
        ended = self.move(
            row,
            status,
            error_code=code,
            error_msg=msg,
            consumed_credit=0,
            lease_until=None,
            finished_at=time.time(),
        )
        if ended is None:
            return False
        self.moved(task, status, task.progress)
        return True

    def running_of(self, api_key_id: str) -> int:
        return sum(
            1
            for t in self.tasks.values()
            if t.api_key_id == api_key_id and t.status is Status.RUNNING
        )

    def live_workers(self, within_s: float = 30.0) -> list[LiveWorker]:
        """The workers with a heartbeat in the last ``within_s``, as they advertised."""
        since = time.time() - within_s
        return [w.advert for w in self.workers.values() if w.heartbeat_at >= since]

    def end_attempt(self, attempt_id: int, outcome: str, error: str | None) -> None:
        row = self.attempts.get(attempt_id)
        if row is not None:
            row.attempt = dataclasses.replace(
                row.attempt, ended_at=time.time(), outcome=outcome, error=error
            )
