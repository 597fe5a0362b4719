"""PostgreSQL: each change of a task as one statement, committed on its own (issue 18).

Every change of a task also changes its account's row: the event number (``event_seq``) and,
for a settle or a refund, the credits. Run as a transaction of statements (SQLite's way,
:mod:`easel.store.lifecycle`), the account row stayed locked from the statement that updated
it through every round trip to ``COMMIT``, and every change of one account (one busy key's
submits, claims, progress events and settlements) queued on that lock: one key submitting
200 tasks a second got 75–200 of 400 requests/s answered. Here a change is one chained
data-modifying statement, run in autocommit::

    WITH moved AS (UPDATE tasks SET … WHERE <the move's condition> RETURNING tasks.*),
         held AS (UPDATE accounts SET event_seq = event_seq + 1 [, the credits]
                  FROM moved WHERE accounts.id = moved.account_id
                  RETURNING id, event_seq, pg_notify(…)),
         ledger_row AS (INSERT INTO ledger … FROM held JOIN moved),     -- settle, refund
         event_row AS (INSERT INTO events … FROM held JOIN moved),
         outbox AS (INSERT INTO webhook_deliveries … FROM held JOIN moved JOIN webhooks …)
    SELECT moved.* FROM moved

The account row is locked from ``held`` to the statement's own commit, inside the database
with no round trip between, and last: ``held`` reads ``moved``, so the task row's work (the
claim's pick, a wait for a task row another statement holds) is done before it. What the
transactional path guarantees holds here too:

* a task moves only along ``TRANSITIONS``, a worker's change only under its fence
  ``(worker_id, attempts)``: ``moved`` is the lifecycle's own UPDATE, and when it moves no
  row every other part reads nothing and writes nothing;
* an account's events are numbered without gaps and commit in number order: a change that
  waited for the account row re-reads its newest version once the lock is released (READ
  COMMITTED's re-check) and numbers its event after the one just committed, so a reader that
  has seen event N and asks for ``seq > N`` misses nothing;
* the ledger row, the event, its webhook outbox rows and the ``NOTIFY`` commit with the move,
  or none of them does (one statement, one transaction).

SQLite keeps its transactions (one writer at a time: a shorter lock gains nothing there); the
store contract runs both paths (``tests/test_store_contract*.py``).
"""

from __future__ import annotations

import functools
import time
from typing import Any

from sqlalchemy import (
    CTE,
    BindParameter,
    ColumnElement,
    Float,
    FromClause,
    Integer,
    Row,
    Select,
    String,
    Update,
    bindparam,
    cast,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncEngine

from easel.domain.accounts import LedgerKind
from easel.domain.tasks import REFUNDED, Status
from easel.store.db import connection
from easel.store.lifecycle import (
    COMPLETE,
    END_ATTEMPT,
    FENCE,
    HEARTBEAT,
    RELEASE,
    REQUEUE,
    claiming,
    ending,
)
from easel.store.notify import NOTIFY_EVENT, NOTIFY_QUEUED
from easel.store.tables import accounts, events, ledger, tasks, webhook_deliveries, webhooks

# Bound at execution by :func:`run`: the time of the ledger row, the event and its deliveries,
# and the event's progress.
_AT: BindParameter[float] = bindparam("chain_at", type_=Float)
_PROGRESS: BindParameter[int] = bindparam("chain_progress", type_=Integer)


def numbered(
    *where: ColumnElement[bool], credits: dict[str, Any] | None = None, wake: bool = False
) -> CTE:
    """``held``: the account row where ``where`` holds, its ``event_seq`` counted on and its
    ``credits`` (column: new value) moved; it returns the account's id and the event's number
    and sends the account's streams their ``NOTIFY`` (the workers' too when ``wake``: a task
    was queued)."""
    notifies = [NOTIFY_EVENT.label("event_notified")]
    if wake:
        notifies.append(NOTIFY_QUEUED.label("queue_notified"))
    return (
        update(accounts)
        .where(*where)
        .values(event_seq=accounts.c.event_seq + 1, **(credits or {}))
        .returning(accounts.c.id, accounts.c.event_seq, *notifies)
        .cte("held")
    )


def ledger_row(
    source: FromClause,
    held: CTE,
    task_id: Any,
    kind: LedgerKind,
    balance: Any,
    frozen: Any,
) -> CTE:
    """The ledger row of the credits ``held`` moved, one per row of ``source``."""
    row = select(held.c.id, task_id, literal(kind.value), balance, frozen, _AT)
    columns = ["account_id", "task_id", "kind", "balance_delta", "frozen_delta", "created_at"]
    return insert(ledger).from_select(columns, row.select_from(source)).cte("ledger_row")


def event_rows(
    source: FromClause, held: CTE, key_id: Any, task_id: Any, status: Status, *, first: bool
) -> list[CTE]:
    """The event numbered by ``held`` and its webhook outbox rows: one ``pending`` delivery
    per webhook of the key whose filter names the event's type (the webhook row locked FOR
    KEY SHARE, as :func:`easel.store.webhooks.enqueue` does: one being deleted is waited for
    or, once gone, not seen). An event with the status of the task's previous one (progress
    only) enqueues nothing; ``first``: the task has none before."""
    event = select(held.c.id, held.c.event_seq, key_id, task_id, literal(status.value))
    event = event.add_columns(_PROGRESS, _AT).select_from(source)
    columns = ["account_id", "seq", "api_key_id", "task_id", "status", "progress", "created_at"]
    event_row = insert(events).from_select(columns, event).cte("event_row")
    event_type = f"task.{status.value}"
    delivery = (
        select(
            literal("msg_") + func.replace(cast(func.gen_random_uuid(), String), "-", ""),
            webhooks.c.id,
            task_id,
            literal(event_type),
            _PROGRESS,
            literal("pending"),
            literal(0),
            literal(0),
            _AT,
            _AT,
        )
        .select_from(source.join(webhooks, webhooks.c.api_key_id == key_id))
        .where(cast(webhooks.c.events, JSONB).has_key(event_type))
        .with_for_update(read=True, key_share=True, of=webhooks)
    )
    if not first:
        # Found by the task's own few events (its account's are the same account's):
        # matched on the account too, the planner may walk the account's every event.
        previous = (
            select(events.c.status)
            .where(events.c.task_id == task_id, events.c.seq < held.c.event_seq)
            .order_by(events.c.seq.desc())
            .limit(1)
            .scalar_subquery()
        )
        delivery = delivery.where(previous.is_distinct_from(status.value))
    columns = ["id", "webhook_id", "task_id", "event_type", "progress", "status", "attempts"]
    columns += ["window_attempts", "next_attempt_at", "created_at"]
    outbox = insert(webhook_deliveries).from_select(columns, delivery).cte("outbox")
    return [event_row, outbox]


def _moving(
    change: Update,
    target: Status,
    *,
    when: ColumnElement[bool] | None = None,
    also: tuple[CTE, ...] = (),
) -> Select[Any]:
    """``change`` (the lifecycle's UPDATE of one task row, moving it to ``target``) chained
    with what follows it (see the module's docstring), its account row last; ``when``: a
    further condition for the event (the task row is updated regardless); ``also``: other
    parts of the same statement. Returns the moved row (none: it did not move)."""
    moved = change.returning(*tasks.c).cte("moved")
    credits: dict[str, Any] = {}
    kind: LedgerKind | None = None
    balance: Any
    frozen: Any
    if target is Status.SUCCESS:
        kind, balance, frozen = LedgerKind.SETTLE, literal(0), -moved.c.price
        credits = {"frozen": accounts.c.frozen + frozen}
    elif target in REFUNDED:
        kind, balance, frozen = LedgerKind.REFUND, moved.c.price, -moved.c.price
        credits = {"balance": accounts.c.balance + balance, "frozen": accounts.c.frozen + frozen}
    mine = accounts.c.id == moved.c.account_id
    held = numbered(
        *([mine] if when is None else [mine, when]),
        credits=credits,
        wake=target is Status.QUEUED,
    )
    source = held.join(moved, held.c.id == moved.c.account_id)
    parts = event_rows(source, held, moved.c.api_key_id, moved.c.id, target, first=False)
    if kind is not None:
        parts.append(ledger_row(source, held, moved.c.id, kind, balance, frozen))
    return select(moved).add_cte(*parts, *also)


# Each change's statement, built once with bound parameters (see lifecycle).
CLAIM = _moving(claiming(lateral=True), Status.RUNNING)
COMPLETE_CHAINED = _moving(COMPLETE, Status.SUCCESS)
COMPLETE_ENDING_ATTEMPT = _moving(COMPLETE, Status.SUCCESS, also=(END_ATTEMPT.cte("attempt"),))
RELEASE_CHAINED = _moving(RELEASE, Status.QUEUED)
REQUEUE_CHAINED = _moving(REQUEUE, Status.QUEUED)
# A heartbeat is an event only when it moves the progress: compared with the row as the
# statement found it.
_BEFORE = select(tasks.c.progress).where(FENCE).cte("before")
HEARTBEAT_CHAINED = _moving(
    HEARTBEAT,
    Status.RUNNING,
    when=select(_BEFORE.c.progress).scalar_subquery() != bindparam("beat_progress"),
)


@functools.cache
def ending_chained(where: ColumnElement[bool], status: Status) -> Select[Any]:
    """:func:`easel.store.lifecycle.ending` chained: a refunded end where ``where`` (one of
    the lifecycle's bound conditions) holds."""
    return _moving(ending(where, status), status)


async def run(
    engine: AsyncEngine, statement: Select[Any], params: dict[str, Any], progress: int
) -> Row[Any] | None:
    """Run one change on ``engine`` (an autocommit engine: :func:`easel.store.db.autocommit`)
    with its event's ``progress``; the task's row as it moved, None when it did not."""
    bound = {**params, "chain_at": time.time(), "chain_progress": progress}
    async with connection(engine) as conn:
        row: Row[Any] | None = (await conn.execute(statement, bound)).first()
    return row
