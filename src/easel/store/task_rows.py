"""A task row and its attempts as the SQL store reads them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from easel.domain.tasks import Reference, Status, Task
from easel.store.records import Attempt
from easel.store.tables import attempts, tasks


def task_from_row(row: Row[Any]) -> Task:
    m = row._mapping
    return Task(
        id=m["id"],
        account_id=m["account_id"],
        api_key_id=m["api_key_id"],
        type=m["type"],
        status=Status(m["status"]),
        model_version=m["model_version"],
        input=m["input"],
        prompt=m["prompt"],
        refs=tuple(Reference.from_json(r) for r in m["refs"]),
        price=m["price"],
        consumed_credit=m["consumed_credit"],
        progress=m["progress"],
        attempts=m["attempts"],
        worker_id=m["worker_id"],
        lease_until=m["lease_until"],
        backend=m["backend"],
        output_key=m["output_key"],
        output_views=m["output_views"],
        output_deleted_at=m["output_deleted_at"],
        error_code=m["error_code"],
        error_msg=m["error_msg"],
        created_at=m["created_at"],
        started_at=m["started_at"],
        finished_at=m["finished_at"],
    )


# The statements of a poll, built once with bound parameters: building one and computing its
# cache key each time cost more than SQLite took to run it.
ATTEMPTS = (
    select(attempts).where(attempts.c.task_id == bindparam("task_id")).order_by(attempts.c.id)
)
# A poll reads the task and its attempts in one statement (a row per attempt, the task's
# columns repeated; one row with null attempt columns when there is none yet): on PostgreSQL
# each statement is a round trip, and on either database a pass through SQLAlchemy.
_ATTEMPT_COLUMNS = ("backend", "claim", "started_at", "ended_at", "outcome", "error", "served_by")
TASK_AND_ATTEMPTS = (
    select(
        tasks,
        attempts.c.id.label("attempt_id"),
        *(attempts.c[name].label(f"attempt_{name}") for name in _ATTEMPT_COLUMNS),
    )
    .select_from(tasks.outerjoin(attempts, attempts.c.task_id == tasks.c.id))
    .where(tasks.c.id == bindparam("task_id"))
    .order_by(attempts.c.id)
)
TASK_AND_ATTEMPTS_OF_KEY = TASK_AND_ATTEMPTS.where(tasks.c.api_key_id == bindparam("key_id"))


def _attempt(row: Row[Any]) -> Attempt:
    return Attempt(*(row._mapping[name] for name in _ATTEMPT_COLUMNS))


async def attempts_of(conn: AsyncConnection, task_id: str) -> list[Attempt]:
    return [_attempt(row) for row in await conn.execute(ATTEMPTS, {"task_id": task_id})]


def joined_attempts(rows: Sequence[Row[Any]]) -> list[Attempt]:
    """The attempts of a ``TASK_AND_ATTEMPTS`` result."""
    return [
        Attempt(*(row._mapping[f"attempt_{name}"] for name in _ATTEMPT_COLUMNS))
        for row in rows
        if row._mapping["attempt_id"] is not None
    ]
