"""The event log: every change of a task, numbered per account.

:func:`append` runs inside the transaction that changes the task. It bumps the account's
``event_seq``, which locks the account row until commit, so an account's events commit in
number order: a reader that has seen event N and asks for ``seq > N`` misses nothing. On
PostgreSQL each change of a task numbers its event the same way inside its one statement
(:mod:`easel.store.changes`).
"""

from __future__ import annotations

import time

from sqlalchemy import bindparam, delete, func, insert, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from easel.domain.events import Event
from easel.domain.tasks import Status
from easel.store import notify, webhooks
from easel.store.db import connection, read_only, transaction
from easel.store.tables import accounts, events

# An event's statements, built once with bound parameters: building a statement and its cache
# key each time cost more than running it (see tasks._TASK_AND_ATTEMPTS).
_NEXT_SEQ = (
    update(accounts)
    .where(accounts.c.id == bindparam("account_id"))
    .values(event_seq=accounts.c.event_seq + 1)
    .returning(accounts.c.event_seq)
)
_NEXT_SEQ_NOTIFYING = _NEXT_SEQ.returning(notify.NOTIFY_EVENT)  # PostgreSQL
_INSERT = insert(events)


async def append(
    conn: AsyncConnection,
    *,
    account_id: str,
    api_key_id: str,
    task_id: str,
    status: Status,
    progress: int,
) -> int:
    # On PostgreSQL the same statement sends the NOTIFY that wakes the account's streams on
    # commit; on SQLite they are signalled after the commit (easel.store.notify).
    postgres = conn.dialect.name == "postgresql"
    numbering = _NEXT_SEQ_NOTIFYING if postgres else _NEXT_SEQ
    seq = (await conn.execute(numbering, {"account_id": account_id})).scalar_one()
    if not postgres:
        notify.event_appended(conn, account_id)
    now = time.time()
    await conn.execute(
        _INSERT,
        {
            "account_id": account_id,
            "seq": seq,
            "api_key_id": api_key_id,
            "task_id": task_id,
            "status": status.value,
            "progress": progress,
            "created_at": now,
        },
    )
    # The webhook outbox: deliveries commit (or roll back) with the event itself.
    await webhooks.enqueue(
        conn,
        account_id=account_id,
        api_key_id=api_key_id,
        task_id=task_id,
        status=status,
        progress=progress,
        seq=int(seq),
        created_at=now,
    )
    return int(seq)


class EventStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._reads = read_only(engine)

    async def after(
        self,
        account_id: str,
        key_id: str,
        after_seq: int,
        *,
        task_id: str | None = None,
        limit: int = 500,
    ) -> list[Event]:
        """The key's events numbered above ``after_seq`` (of one task, if given), in order."""
        query = (
            select(events)
            .where(
                events.c.account_id == account_id,
                events.c.api_key_id == key_id,
                events.c.seq > after_seq,
            )
            .order_by(events.c.seq)
            .limit(limit)
        )
        if task_id is not None:
            query = query.where(events.c.task_id == task_id)
        async with connection(self._reads) as conn:
            rows = (await conn.execute(query)).all()
        return [Event(r.seq, r.task_id, Status(r.status), r.progress, r.created_at) for r in rows]

    async def last_seq_before(self, account_id: str, before: float) -> int:
        """The number of the account's last event before the time ``before`` (0 if none)."""
        async with connection(self._reads) as conn:
            seq = await conn.scalar(
                select(func.coalesce(func.max(events.c.seq), 0)).where(
                    events.c.account_id == account_id, events.c.created_at < before
                )
            )
        return int(seq or 0)

    async def prune(self, before: float, limit: int = 10_000) -> int:
        """Forget up to ``limit`` events older than ``before``; returns how many went.
        Numbering is untouched: new events keep counting from each account's counter."""
        oldest = select(events.c.account_id, events.c.seq).where(events.c.created_at < before)
        async with transaction(self._engine) as conn:
            done = await conn.execute(
                delete(events).where(
                    tuple_(events.c.account_id, events.c.seq).in_(oldest.limit(limit))
                )
            )
        return int(done.rowcount or 0)

    async def last_seq(self, account_id: str) -> int:
        async with connection(self._reads) as conn:
            seq = await conn.scalar(select(accounts.c.event_seq).where(accounts.c.id == account_id))
        return int(seq or 0)
