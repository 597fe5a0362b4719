"""How a task moves: each change of status together with the credits it moves, its event
(and so its webhook outbox rows) and a wake-up for workers, in the caller's transaction.

The moves allowed are :data:`easel.domain.tasks.TRANSITIONS`: every statement here moves a
row only while its status is one the target may be reached from, so a task never moves
twice (a refund and a success of the same task cannot both commit). A worker's changes are
also fenced by ``(worker_id, attempts)``: a worker whose lease lapsed and whose task was
claimed again can no longer finish it.

Each move's UPDATE of the task row is built here once, with bound parameters, and shared: on
SQLite the functions below run it and what follows it in the caller's transaction; on
PostgreSQL :mod:`easel.store.changes` chains the same UPDATE with its account, ledger, event
and outbox rows into one statement.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from sqlalchemy import ColumnElement, Update, and_, bindparam, update
from sqlalchemy.ext.asyncio import AsyncConnection

from easel.domain.accounts import LedgerKind
from easel.domain.tasks import REFUNDED, AttemptOutcome, Status, Task, sources
from easel.store import events
from easel.store.accounts import record_move
from easel.store.notify import notify
from easel.store.queue_order import pick
from easel.store.tables import attempts, tasks


def may_move(target: Status) -> ColumnElement[bool]:
    """The row's status is one a task may move to ``target`` from."""
    return tasks.c.status.in_(sorted(s.value for s in sources(target)))


def queued(task: Task) -> ColumnElement[bool]:
    """``task`` is still waiting in the queue."""
    return and_(tasks.c.id == task.id, tasks.c.status == Status.QUEUED.value)


# The claim that is finishing a task is still the current one: the row is running, under the
# same worker and claim count. Its values are bound at execution by ``fence(task)``, so the
# statements that use it are built once (building a statement and its cache key cost more
# than running it).
FENCE = and_(
    tasks.c.id == bindparam("fence_id"),
    tasks.c.status == Status.RUNNING.value,
    tasks.c.worker_id == bindparam("fence_worker"),
    tasks.c.attempts == bindparam("fence_attempts"),
)


def fence(task: Task) -> dict[str, Any]:
    """The parameters that bind :data:`FENCE` to ``task``'s claim."""
    return {"fence_id": task.id, "fence_worker": task.worker_id, "fence_attempts": task.attempts}


# The janitor's: the claim is still the current one and its lease lapsed before the bound
# ``lapsed_before`` (a heartbeat that renewed it meanwhile keeps the task).
LAPSED = and_(FENCE, tasks.c.lease_until < bindparam("lapsed_before"))
# A queued task, by its id (bound ``queued_id``), and one of them the bound key owns.
QUEUED = and_(tasks.c.id == bindparam("queued_id"), tasks.c.status == Status.QUEUED.value)
QUEUED_OF_KEY = and_(QUEUED, tasks.c.api_key_id == bindparam("owner_key"))


def claiming(lateral: bool) -> Update:
    """Queued → running: claim the task ``pick`` chooses (see :mod:`easel.store.queue_order`;
    ``lateral``: PostgreSQL's form), for the bound ``claimed_by`` until ``claimed_until``."""
    return (
        update(tasks)
        .where(tasks.c.id == pick(lateral).scalar_subquery(), may_move(Status.RUNNING))
        .values(
            status=Status.RUNNING.value,
            attempts=tasks.c.attempts + 1,
            worker_id=bindparam("claimed_by"),
            lease_until=bindparam("claimed_until"),
            started_at=bindparam("claimed_at"),
            progress=0,
        )
    )


async def event(conn: AsyncConnection, task: Task, status: Status, progress: int) -> None:
    await events.append(
        conn,
        account_id=task.account_id,
        api_key_id=task.api_key_id,
        task_id=task.id,
        status=status,
        progress=progress,
    )


async def moved(conn: AsyncConnection, task: Task, target: Status, progress: int) -> None:
    """What follows the row of ``task`` moving to ``target``: a success consumes the held
    price, a refunded end gives it back, every move is an event, and a task queued again
    wakes the workers."""
    if target is Status.SUCCESS:
        await record_move(conn, task.account_id, task.id, LedgerKind.SETTLE, 0, -task.price)
    elif target in REFUNDED:
        await record_move(
            conn, task.account_id, task.id, LedgerKind.REFUND, task.price, -task.price
        )
    await event(conn, task, target, progress)
    if target is Status.QUEUED:
        await notify(conn)


COMPLETE = (
    update(tasks)
    .where(FENCE, may_move(Status.SUCCESS))
    .values(
        status=Status.SUCCESS.value,
        progress=100,
        output_key=bindparam("done_output_key"),
        output_views=bindparam("done_output_views"),
        backend=bindparam("done_backend"),
        consumed_credit=bindparam("done_price"),
        lease_until=None,
        finished_at=bindparam("done_at"),
    )
)


def completed(
    task: Task, output_key: str, backend: str, views: dict[str, str] | None
) -> dict[str, Any]:
    """The parameters of :data:`COMPLETE` for ``task``'s claim."""
    return {
        **fence(task),
        "done_output_key": output_key,
        "done_output_views": views,
        "done_backend": backend,
        "done_price": task.price,
        "done_at": time.time(),
    }


async def succeed(
    conn: AsyncConnection,
    task: Task,
    output_key: str,
    backend: str,
    views: dict[str, str] | None = None,
) -> bool:
    """Running → success, settling the held credits; False when the claim was lost.
    ``views``: a multiview task's {view: key} (``output_key`` is its front view)."""
    result = await conn.execute(COMPLETE, completed(task, output_key, backend, views))
    if result.rowcount != 1:
        return False
    await moved(conn, task, Status.SUCCESS, 100)
    return True


async def end_with_refund(
    conn: AsyncConnection,
    where: ColumnElement[bool],
    task: Task,
    status: Status,
    code: int | None,
    message: str | None,
    bound: Mapping[str, Any] | None = None,
) -> bool:
    """End ``task`` in ``status`` (failed, banned, expired, cancelled) with its credits
    refunded, where ``where`` (its parameters ``bound``) still holds; False when it no
    longer does."""
    result = await conn.execute(ending(where, status), {**(bound or {}), **ended(code, message)})
    if result.rowcount != 1:
        return False
    await moved(conn, task, status, task.progress)
    return True


def ending(where: ColumnElement[bool], status: Status) -> Update:
    """The UPDATE that ends a task in ``status`` (a refunded end) where ``where`` holds; its
    error and time bound by :func:`ended`."""
    assert status in REFUNDED
    return (
        update(tasks)
        .where(where, may_move(status))
        .values(
            status=status.value,
            error_code=bindparam("end_code"),
            error_msg=bindparam("end_msg"),
            consumed_credit=0,
            lease_until=None,
            finished_at=bindparam("end_at"),
        )
    )


def ended(code: int | None, message: str | None) -> dict[str, Any]:
    """The parameters of an :func:`ending`."""
    return {"end_code": code, "end_msg": message, "end_at": time.time()}


# Running → queued: a lapsed lease (the claim counted as an attempt) or a release.
REQUEUED: dict[str, Any] = {
    "status": Status.QUEUED.value,
    "worker_id": None,
    "lease_until": None,
    "progress": 0,
}
RELEASE = (
    update(tasks)
    .where(FENCE, may_move(Status.QUEUED))
    .values(**REQUEUED, attempts=tasks.c.attempts - 1)
)
# A lapsed lease's task queued again (the janitor), one by one on PostgreSQL.
REQUEUE = (
    update(tasks)
    .where(LAPSED, tasks.c.cancel_requested_at.is_(None), may_move(Status.QUEUED))
    .values(**REQUEUED)
)
# A worker's heartbeat: the lease renewed, the progress stored.
HEARTBEAT = (
    update(tasks)
    .where(FENCE)
    .values(lease_until=bindparam("beat_until"), progress=bindparam("beat_progress"))
)


async def release(conn: AsyncConnection, task: Task) -> bool:
    """Running → queued by the worker itself (a graceful shutdown): the claim is not counted
    as an attempt. False when the claim was lost."""
    result = await conn.execute(RELEASE, fence(task))
    if result.rowcount != 1:
        return False
    await moved(conn, task, Status.QUEUED, 0)
    return True


END_ATTEMPT = (
    update(attempts)
    .where(attempts.c.id == bindparam("attempt_id"))
    .values(
        ended_at=bindparam("attempt_end_at"),
        outcome=bindparam("attempt_outcome"),
        error=bindparam("attempt_error"),
    )
)


def attempt_ended(
    attempt_id: int, outcome: AttemptOutcome, error: str | None = None
) -> dict[str, Any]:
    """The parameters of :data:`END_ATTEMPT`."""
    return {
        "attempt_id": attempt_id,
        "attempt_end_at": time.time(),
        "attempt_outcome": outcome.value,
        "attempt_error": error,
    }


async def end_attempt(
    conn: AsyncConnection, attempt_id: int, outcome: AttemptOutcome, error: str | None = None
) -> None:
    await conn.execute(END_ATTEMPT, attempt_ended(attempt_id, outcome, error))
