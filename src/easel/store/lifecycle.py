"""How a task moves: each change of status together with the credits it moves, its event
(and so its webhook outbox rows) and a wake-up for workers, in the caller's transaction.

The moves allowed are :data:`easel.domain.tasks.TRANSITIONS`: every statement here moves a
row only while its status is one the target may be reached from, so a task never moves
twice (a refund and a success of the same task cannot both commit). A worker's changes are
also fenced by ``(worker_id, attempts)``: a worker whose lease lapsed and whose task was
claimed again can no longer finish it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from sqlalchemy import ColumnElement, and_, bindparam, update
from sqlalchemy.ext.asyncio import AsyncConnection

from easel.domain.accounts import LedgerKind
from easel.domain.tasks import REFUNDED, AttemptOutcome, Status, Task, sources
from easel.store import events
from easel.store.accounts import record_move
from easel.store.notify import notify
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


_COMPLETE = (
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


async def succeed(
    conn: AsyncConnection,
    task: Task,
    output_key: str,
    backend: str,
    views: dict[str, str] | None = None,
) -> bool:
    """Running → success, settling the held credits; False when the claim was lost.
    ``views``: a multiview task's {view: key} (``output_key`` is its front view)."""
    done = {
        "done_output_key": output_key,
        "done_output_views": views,
        "done_backend": backend,
        "done_price": task.price,
        "done_at": time.time(),
    }
    result = await conn.execute(_COMPLETE, {**fence(task), **done})
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
    assert status in REFUNDED
    result = await conn.execute(
        update(tasks)
        .where(where, may_move(status))
        .values(
            status=status.value,
            error_code=code,
            error_msg=message,
            consumed_credit=0,
            lease_until=None,
            finished_at=time.time(),
        ),
        dict(bound or {}),
    )
    if result.rowcount != 1:
        return False
    await moved(conn, task, status, task.progress)
    return True


async def release(conn: AsyncConnection, task: Task) -> bool:
    """Running → queued by the worker itself (a graceful shutdown): the claim is not counted
    as an attempt. False when the claim was lost."""
    result = await conn.execute(
        update(tasks)
        .where(FENCE, may_move(Status.QUEUED))
        .values(
            status=Status.QUEUED.value,
            worker_id=None,
            lease_until=None,
            progress=0,
            attempts=tasks.c.attempts - 1,
        ),
        fence(task),
    )
    if result.rowcount != 1:
        return False
    await moved(conn, task, Status.QUEUED, 0)
    return True


_END_ATTEMPT = (
    update(attempts)
    .where(attempts.c.id == bindparam("attempt_id"))
    .values(
        ended_at=bindparam("end_at"), outcome=bindparam("end_outcome"), error=bindparam("end_error")
    )
)


async def end_attempt(
    conn: AsyncConnection, attempt_id: int, outcome: AttemptOutcome, error: str | None = None
) -> None:
    ending = {"end_at": time.time(), "end_outcome": outcome.value, "end_error": error}
    await conn.execute(_END_ATTEMPT, {"attempt_id": attempt_id, **ending})
