"""Tasks as their owners see them: submit (the unfinished-task limit, the credit hold and
idempotency in one transaction), read, poll with estimates, cancel; and the janitor's
retention of outputs. Workers' side of the queue is :mod:`easel.store.queue`.
"""

from __future__ import annotations

import time

from sqlalchemy import and_, bindparam, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from easel.domain.accounts import Caller, LedgerKind
from easel.domain.eta import Measured
from easel.domain.tasks import UNFINISHED, Status, Task
from easel.store import changes, events
from easel.store.accounts import write_ledger_row
from easel.store.db import autocommit, connection, is_sqlite, read_only, transaction
from easel.store.estimates import Estimates, outlook, position_of
from easel.store.finished import FinishedViews
from easel.store.lifecycle import QUEUED_OF_KEY, end_with_refund, ended, queued
from easel.store.notify import notify
from easel.store.records import IDEMPOTENCY_WINDOW_S, Idempotency, NewTask, Outlook
from easel.store.refusals import idempotency_conflict, not_enough_credit, too_many_unfinished
from easel.store.submit import submit_at_once, task_row
from easel.store.tables import accounts, idempotency_keys, tasks
from easel.store.task_rows import (
    TASK_AND_ATTEMPTS,
    TASK_AND_ATTEMPTS_OF_KEY,
    joined_attempts,
    task_from_row,
)

_UNFINISHED = [s.value for s in UNFINISHED]


async def _replay(
    conn: AsyncConnection, caller: Caller, idempotency: Idempotency, now: float
) -> str | None:
    """The task of an earlier submit with this key (None if none within 24 h; a stale one
    is forgotten); 409 when the key came with another body."""
    same_key = and_(
        idempotency_keys.c.api_key_id == caller.key_id,
        idempotency_keys.c.key == idempotency.key,
    )
    row = (await conn.execute(select(idempotency_keys).where(same_key))).first()
    if row is None:
        return None
    if row.created_at < now - IDEMPOTENCY_WINDOW_S:
        await conn.execute(idempotency_keys.delete().where(same_key))
        return None
    if row.body_hash != idempotency.body_hash:
        raise idempotency_conflict(idempotency.key)
    return str(row.task_id)


# A submit's statements, built once with bound parameters.
_LOCK_ACCOUNT = (
    select(accounts.c.id).where(accounts.c.id == bindparam("account_id")).with_for_update()
)
_UNFINISHED_OF_KEY = (
    select(func.count())
    .select_from(tasks)
    .where(tasks.c.api_key_id == bindparam("key_id"), tasks.c.status.in_(_UNFINISHED))
)
_HOLD = (
    update(accounts)
    .where(accounts.c.id == bindparam("account_id"), accounts.c.balance >= bindparam("price"))
    .values(
        balance=accounts.c.balance - bindparam("price"),
        frozen=accounts.c.frozen + bindparam("price"),
    )
)
_INSERT_TASK = insert(tasks)
# A running task of the key, asked to stop at its next checkpoint (once).
_ASK_TO_STOP = (
    update(tasks)
    .where(
        tasks.c.id == bindparam("task_id"),
        tasks.c.api_key_id == bindparam("key_id"),
        tasks.c.status == Status.RUNNING.value,
        tasks.c.lease_until.is_not(None),
        tasks.c.cancel_requested_at.is_(None),
    )
    .values(cancel_requested_at=bindparam("at"))
)


class TaskStore:
    def __init__(self, engine: AsyncEngine, estimates: Estimates) -> None:
        self._engine = engine
        # Every read here is one statement, or statements that need not agree (a poll's
        # task and its estimates): no transaction around them.
        self._reads = read_only(engine, snapshot=False)
        self._estimates = estimates
        self._finished = FinishedViews()
        # PostgreSQL: each change of a task is one statement of its own (easel.store.changes).
        self._changes = None if is_sqlite(engine) else autocommit(engine)

    async def submit(
        self,
        caller: Caller,
        new: NewTask,
        *,
        max_unfinished: int,
        retry_after_s: int,
        idempotency: Idempotency | None = None,
    ) -> str:
        """Check the key's unfinished-task limit, hold the credits and enqueue, atomically.

        With ``idempotency``, a repeat of the same key and body within 24 h returns the first
        task's id and changes nothing; the same key with another body is refused (409).
        Returns the task id.
        """
        now = time.time()
        if self._changes is not None:  # PostgreSQL: one statement, if it can decide
            decided = await submit_at_once(
                self._changes,
                caller,
                new,
                now,
                max_unfinished=max_unfinished,
                retry_after_s=retry_after_s,
                idempotency=idempotency,
            )
            if decided is not None:
                return decided
        async with transaction(self._engine) as conn:
            # Lock the account row: one submit per account at a time, on every replica, so
            # the unfinished-task count below cannot be raced (SQLite: BEGIN IMMEDIATE).
            await conn.execute(_LOCK_ACCOUNT, {"account_id": caller.account_id})
            if idempotency is not None:
                replay = await _replay(conn, caller, idempotency, now)
                if replay is not None:
                    return replay
            unfinished = await conn.scalar(_UNFINISHED_OF_KEY, {"key_id": caller.key_id})
            if (unfinished or 0) >= max_unfinished:
                raise too_many_unfinished(unfinished or 0, max_unfinished, retry_after_s)
            held = await conn.execute(_HOLD, {"account_id": caller.account_id, "price": new.price})
            if held.rowcount != 1:
                balance = await conn.scalar(
                    select(accounts.c.balance).where(accounts.c.id == caller.account_id)
                )
                raise not_enough_credit(new, balance)
            await write_ledger_row(
                conn, caller.account_id, new.id, LedgerKind.HOLD, -new.price, new.price
            )
            await conn.execute(_INSERT_TASK, task_row(caller, new, now))
            await events.append(
                conn,
                account_id=caller.account_id,
                api_key_id=caller.key_id,
                task_id=new.id,
                status=Status.QUEUED,
                progress=0,
            )
            await notify(conn)
            if idempotency is not None:
                await conn.execute(
                    insert(idempotency_keys).values(
                        api_key_id=caller.key_id,
                        key=idempotency.key,
                        body_hash=idempotency.body_hash,
                        task_id=new.id,
                        created_at=now,
                    )
                )
        return new.id

    async def get(self, task_id: str, key_id: str | None = None) -> Task | None:
        query = select(tasks).where(tasks.c.id == task_id)
        if key_id is not None:
            query = query.where(tasks.c.api_key_id == key_id)
        async with connection(self._reads) as conn:
            row = (await conn.execute(query)).first()
        return None if row is None else task_from_row(row)

    async def recent(self, key_id: str, limit: int, offset: int = 0) -> list[Task]:
        """The key's tasks, newest first."""
        query = (
            select(tasks)
            .where(tasks.c.api_key_id == key_id)
            .order_by(tasks.c.created_at.desc(), tasks.c.id)
            .limit(limit)
            .offset(offset)
        )
        async with connection(self._reads) as conn:
            return [task_from_row(row) for row in await conn.execute(query)]

    async def position(self, task: Task) -> int:
        """How many queued tasks workers would claim before ``task`` as things stand now
        (the claim order: fewest running tasks of the key first, then oldest)."""
        async with connection(self._reads) as conn:
            return await position_of(conn, task)

    async def measured(self, model_version: str, edits: bool) -> Measured | None:
        """The mean run time a new task of the model (with reference images or not) would
        be estimated by, or None without data (remembered for a moment, as every estimate:
        see ``Estimates``)."""
        latest = self._estimates.recall_latest(model_version)
        if latest is not None:
            recalled = self._estimates.recall_measured(model_version, latest[0], edits)
            if recalled is not None:
                return recalled[0]
        async with connection(self._reads) as conn:
            backend = await self._estimates.latest_backend(conn, model_version)
            return await self._estimates.measured(conn, model_version, backend, edits)

    async def outlook(self, task: Task) -> Outlook:
        """What the task object shows besides the row, read on one connection."""
        async with connection(self._reads) as conn:
            return await outlook(conn, task, self._estimates)

    async def view(self, task_id: str, key_id: str | None = None) -> tuple[Task, Outlook] | None:
        """The task (of ``key_id``, if given) and its outlook, read on one connection (the hot
        path of polling and of live updates). A finished task's is remembered for a few
        seconds (:mod:`easel.store.finished`)."""
        remembered = self._finished.recall(task_id, key_id)
        if remembered is not None:
            return remembered
        query, params = (
            (TASK_AND_ATTEMPTS, {"task_id": task_id})
            if key_id is None
            else (TASK_AND_ATTEMPTS_OF_KEY, {"task_id": task_id, "key_id": key_id})
        )
        async with connection(self._reads) as conn:
            rows = (await conn.execute(query, params)).all()
            if not rows:
                return None
            task = task_from_row(rows[0])
            seen = await outlook(conn, task, self._estimates, joined_attempts(rows))
        self._finished.remember(task, seen)
        return task, seen

    async def cancel(self, task_id: str, key_id: str) -> Task | None:
        """Cancel a task of ``key_id``: a queued one ends ``cancelled`` at once with a refund;
        a running one is asked to stop at its next checkpoint; a final one is left as it is.
        Idempotent. None when the key has no such task."""
        if self._changes is not None:
            return await self._cancel_chained(self._changes, task_id, key_id)
        async with transaction(self._engine) as conn:
            row = (
                await conn.execute(
                    select(tasks)
                    .where(tasks.c.id == task_id, tasks.c.api_key_id == key_id)
                    .with_for_update()
                )
            ).first()
            if row is None:
                return None
            task = task_from_row(row)
            if task.status is Status.QUEUED:
                await end_with_refund(conn, queued(task), task, Status.CANCELLED, None, None)
            elif task.status is Status.RUNNING:
                asked = {"task_id": task_id, "key_id": key_id, "at": time.time()}
                await conn.execute(_ASK_TO_STOP, asked)
        return await self.get(task_id)

    async def _cancel_chained(self, engine: AsyncEngine, task_id: str, key_id: str) -> Task | None:
        """PostgreSQL's :meth:`cancel`: a queued task ends in one statement; one that is not
        (any more: a claim may take it meanwhile) is asked to stop if it is running."""
        ending = changes.ending_chained(QUEUED_OF_KEY, Status.CANCELLED)
        bound = {"queued_id": task_id, "owner_key": key_id, **ended(None, None)}
        if await changes.run(engine, ending, bound, 0) is None:
            async with connection(engine) as conn:
                asked = {"task_id": task_id, "key_id": key_id, "at": time.time()}
                await conn.execute(_ASK_TO_STOP, asked)
        return await self.get(task_id, key_id)

    async def outputs_past(
        self, retention_s: float, limit: int = 500
    ) -> list[tuple[str, list[str]]]:
        """(task id, output keys) of outputs older than ``retention_s``, oldest first: the
        image, or a multiview task's four views."""
        cutoff = time.time() - retention_s
        async with connection(self._reads) as conn:
            rows = await conn.execute(
                select(tasks.c.id, tasks.c.output_key, tasks.c.output_views)
                .where(
                    tasks.c.status == Status.SUCCESS.value,
                    tasks.c.output_key.is_not(None),
                    tasks.c.finished_at < cutoff,
                )
                .order_by(tasks.c.finished_at)
                .limit(limit)
            )
            return [
                (row.id, sorted({row.output_key, *(row.output_views or {}).values()}))
                for row in rows
            ]

    async def mark_output_deleted(self, task_id: str) -> None:
        async with transaction(self._engine) as conn:
            await conn.execute(
                update(tasks)
                .where(tasks.c.id == task_id)
                .values(output_key=None, output_views=None, output_deleted_at=time.time())
            )
        self._finished.forget(task_id)
