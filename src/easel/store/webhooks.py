"""Webhooks and their outbox (deliveries and the attempt log): every statement is here.

:func:`enqueue` runs in the transaction that appends a task event: one ``pending`` delivery
per webhook of the key whose filter names the event's type, so the commitment to deliver
commits or rolls back with the task change itself (never lost, never doubled). An event that
only moves progress (the task's previous event had the same status) enqueues nothing. On
PostgreSQL the same rows are written by the change's own statement
(:func:`easel.store.changes.event_rows`).

A dispatcher's :meth:`WebhookStore.claim` (``FOR UPDATE SKIP LOCKED`` on PostgreSQL) pushes
``next_attempt_at`` out by a lease and sets a fresh ``claim_token``; :meth:`~WebhookStore.finish`
records the attempt only while the token is still the row's. A lapsed claim is taken anew.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, fields
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import and_, bindparam, delete, func, insert, or_, select, update
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from easel.domain.accounts import Caller
from easel.domain.tasks import Status
from easel.domain.webhooks import (
    MAX_PER_KEY,
    Delivery,
    Due,
    LoggedAttempt,
    Webhook,
)
from easel.store.db import connection, read_only, transaction
from easel.store.refusals import too_many_webhooks
from easel.store.tables import events, webhook_attempts, webhook_deliveries, webhooks

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

D = TypeVar("D", bound="DataclassInstance")

_d = webhook_deliveries


# FOR KEY SHARE: a webhook being deleted is either waited for or, once gone, not seen. Built
# once: every event runs it.
_HOOKS_OF_KEY = (
    select(webhooks.c.id, webhooks.c.events)
    .where(webhooks.c.api_key_id == bindparam("key_id"))
    .with_for_update(read=True, key_share=True)
)


async def enqueue(
    conn: AsyncConnection,
    *,
    account_id: str,
    api_key_id: str,
    task_id: str,
    status: Status,
    progress: int,
    seq: int,
    created_at: float,
) -> int:
    """Queue the event numbered ``seq`` for the key's matching webhooks (in its transaction)."""
    event_type = f"task.{status.value}"
    hooks = await conn.execute(_HOOKS_OF_KEY, {"key_id": api_key_id})
    targets = [hook.id for hook in hooks if event_type in hook.events]
    if not targets or await _previous_status(conn, account_id, task_id, seq) == status.value:
        return 0
    row = dict(task_id=task_id, event_type=event_type, progress=progress, status="pending")
    row |= dict(attempts=0, window_attempts=0, next_attempt_at=created_at, created_at=created_at)
    rows = [{**row, "id": f"msg_{uuid.uuid4().hex}", "webhook_id": w} for w in targets]
    await conn.execute(insert(_d), rows)
    return len(rows)


async def _previous_status(
    conn: AsyncConnection, account_id: str, task_id: str, seq: int
) -> str | None:
    return await conn.scalar(
        select(events.c.status)
        .where(events.c.account_id == account_id, events.c.task_id == task_id, events.c.seq < seq)
        .order_by(events.c.seq.desc())
        .limit(1)
    )


def _from_row(cls: type[D], row: Row[Any], **given: Any) -> D:
    """A ``cls`` from the row's columns of its fields' names (``given`` ones excepted)."""
    m = row._mapping
    return cls(**{f.name: m[f.name] for f in fields(cls) if f.name not in given}, **given)


def _webhook(row: Row[Any]) -> Webhook:
    return _from_row(Webhook, row, events=tuple(row.events))


class WebhookStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._reads = read_only(engine)

    # -- registrations --------------------------------------------------------------------

    async def create(
        self, caller: Caller, *, url: str, event_types: Sequence[str], secret: str, base_url: str
    ) -> Webhook:
        """Register a webhook for the caller's key (at most :data:`MAX_PER_KEY` of them)."""
        hook = Webhook(str(uuid.uuid4()), url, tuple(event_types), time.time())
        async with transaction(self._engine) as conn:
            count = await conn.scalar(
                select(func.count()).where(webhooks.c.api_key_id == caller.key_id)
            )
            if (count or 0) >= MAX_PER_KEY:
                raise too_many_webhooks(count or 0)
            await conn.execute(
                insert(webhooks).values(
                    id=hook.id,
                    account_id=caller.account_id,
                    api_key_id=caller.key_id,
                    url=url,
                    events=list(hook.events),
                    secret=secret,
                    base_url=base_url,
                    created_at=hook.created_at,
                )
            )
        return hook

    async def of_key(self, key_id: str, webhook_id: str | None = None) -> list[Webhook]:
        """The key's webhooks, oldest first (only ``webhook_id``, if given)."""
        query = select(webhooks).where(webhooks.c.api_key_id == key_id)
        if webhook_id is not None:
            query = query.where(webhooks.c.id == webhook_id)
        async with connection(self._reads) as conn:
            rows = await conn.execute(query.order_by(webhooks.c.created_at, webhooks.c.id))
            return [_webhook(row) for row in rows]

    async def delete(self, webhook_id: str, key_id: str) -> bool:
        """Delete the key's webhook with its deliveries and log; False when it has none such."""
        mine = and_(webhooks.c.id == webhook_id, webhooks.c.api_key_id == key_id)
        async with transaction(self._engine) as conn:
            if await conn.scalar(select(webhooks.c.id).where(mine).with_for_update()) is None:
                return False
            ids = select(_d.c.id).where(_d.c.webhook_id == webhook_id)
            await conn.execute(ids.with_for_update())  # wait for attempts being recorded
            await conn.execute(
                delete(webhook_attempts).where(webhook_attempts.c.delivery_id.in_(ids))
            )
            await conn.execute(delete(_d).where(_d.c.webhook_id == webhook_id))
            await conn.execute(delete(webhooks).where(mine))
        return True

    # -- the delivery log -----------------------------------------------------------------

    async def deliveries(
        self, webhook_id: str, *, delivery_id: str | None = None, limit: int = 100
    ) -> list[Delivery]:
        """The webhook's deliveries, newest first, each with its attempts in order."""
        query = select(_d).where(_d.c.webhook_id == webhook_id)
        if delivery_id is not None:
            query = query.where(_d.c.id == delivery_id)
        query = query.order_by(_d.c.created_at.desc(), _d.c.id.desc()).limit(limit)
        async with connection(self._reads) as conn:
            rows = (await conn.execute(query)).all()
            logged = await conn.execute(
                select(webhook_attempts)
                .where(webhook_attempts.c.delivery_id.in_([r.id for r in rows]))
                .order_by(webhook_attempts.c.number)
            )
        by_delivery: dict[str, list[LoggedAttempt]] = {}
        for a in logged:
            by_delivery.setdefault(a.delivery_id, []).append(_from_row(LoggedAttempt, a))
        return [_from_row(Delivery, r, attempts=tuple(by_delivery.get(r.id, ()))) for r in rows]

    async def redeliver(self, webhook_id: str, delivery_id: str, now: float) -> bool:
        """Make the delivery due now with a fresh retry window (also a dead or delivered one);
        one being sent right now is left to that attempt. False when there is no such one."""
        this = and_(_d.c.id == delivery_id, _d.c.webhook_id == webhook_id)
        idle = or_(
            _d.c.status != "pending", _d.c.claim_token.is_(None), _d.c.next_attempt_at <= now
        )
        async with transaction(self._engine) as conn:
            if await conn.scalar(select(_d.c.id).where(this).with_for_update()) is None:
                return False
            await conn.execute(
                update(_d)
                .where(this, idle)
                .values(
                    status="pending",
                    next_attempt_at=now,
                    claim_token=None,
                    window_start=None,
                    window_attempts=0,
                )
            )
        return True

    # -- the dispatcher's side ------------------------------------------------------------

    async def prune(self, before: float, limit: int = 1000) -> int:
        """Forget up to ``limit`` delivered or dead deliveries (and their attempt log) made
        before ``before``; pending ones are never touched. Returns how many went."""
        async with transaction(self._engine) as conn:
            ids = list(
                await conn.scalars(
                    select(_d.c.id)
                    .where(_d.c.status.in_(("delivered", "dead")), _d.c.created_at < before)
                    .limit(limit)
                )
            )
            if ids:
                await conn.execute(
                    delete(webhook_attempts).where(webhook_attempts.c.delivery_id.in_(ids))
                )
                await conn.execute(delete(_d).where(_d.c.id.in_(ids)))
        return len(ids)

    async def claim(self, now: float, lease_s: float, limit: int) -> list[Due]:
        """Lease up to ``limit`` due deliveries (oldest due first) for one attempt each."""
        token = uuid.uuid4().hex
        due = (
            select(_d.c.id)
            .where(_d.c.status == "pending", _d.c.next_attempt_at <= now)
            .order_by(_d.c.next_attempt_at, _d.c.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        async with transaction(self._engine) as conn:
            claimed = await conn.execute(
                update(_d)
                .where(_d.c.id.in_(due))
                .values(next_attempt_at=now + lease_s, claim_token=token)
            )
            if claimed.rowcount == 0:
                return []
            rows = await conn.execute(
                select(_d, webhooks.c.url, webhooks.c.secret, webhooks.c.base_url)
                .join(webhooks, webhooks.c.id == _d.c.webhook_id)
                .where(_d.c.claim_token == token)
            )
            return [_from_row(Due, r, claim_token=token) for r in rows]

    async def finish(
        self, due: Due, attempt: LoggedAttempt, status: str, next_attempt_at: float | None
    ) -> bool:
        """Record the attempt and the delivery's next state (``pending`` again, ``delivered``
        or ``dead``); False when the claim was lost meanwhile."""
        window_start = attempt.created_at if due.window_start is None else due.window_start
        async with transaction(self._engine) as conn:
            result = await conn.execute(
                update(_d)
                .where(_d.c.id == due.id, _d.c.claim_token == due.claim_token)
                .values(
                    status=status,
                    next_attempt_at=next_attempt_at,
                    claim_token=None,
                    attempts=due.attempts + 1,
                    window_start=window_start,
                    window_attempts=due.window_attempts + 1,
                )
            )
            if result.rowcount != 1:
                return False
            await conn.execute(
                insert(webhook_attempts).values(delivery_id=due.id, **asdict(attempt))
            )
        return True
