"""A submit's rows, and on PostgreSQL the submit in one statement (issue 18).

The transactional submit (:meth:`easel.store.tasks.TaskStore.submit`, SQLite's) locks the
account row first and holds it for a dozen round trips: the Idempotency-Key, the count of the
key's unfinished tasks, the credit hold, the ledger row, the task, the event number, the
event, the webhooks, the key, ``COMMIT``. On PostgreSQL that lock serialised every change of
a busy key (see :mod:`easel.store.changes`). Here the submit is one statement, in autocommit::

    WITH seen AS (SELECT the account's balance and event_seq, the key's unfinished tasks and
                  its Idempotency-Key row, as the statement's snapshot has them),
         held AS (UPDATE accounts SET balance - price, frozen + price, event_seq + 1
                  FROM seen WHERE balance >= price AND no Idempotency-Key row
                  AND seen.unfinished + (event_seq - seen.event_seq) < max_unfinished
                  RETURNING id, event_seq, pg_notify(<streams>), pg_notify(<workers>)),
         new_task, ledger_row, event_row, outbox, idempotency AS (INSERT … FROM held)
    SELECT seen.*, (SELECT event_seq FROM held)

The reads come before the lock; the account row is locked from ``held`` to the statement's
own commit, and every row the submit writes reads ``held``, so none is written when it does
not update the account.

**The unfinished-task limit stays exact.** The count in ``seen`` is the snapshot's; changes of
the account may commit between the snapshot and the lock. Each of them numbered an event on
the account row (every change of a task does, in the same statement or transaction), and
only a submit adds an unfinished task, one; so ``seen.unfinished`` plus the events numbered
since (``event_seq - seen.event_seq``, ``event_seq`` being the newest version of the row:
READ COMMITTED re-evaluates an UPDATE's condition on the row it waited for) is at least the
key's unfinished tasks while the lock is held. Below the limit, the submit is within it.

**When it writes nothing** the snapshot usually says why, a refusal as of the snapshot that
changed nothing: an Idempotency-Key row (the earlier task, or 409), the key at its limit, a
balance short of the price. Otherwise the account changed between the snapshot and the lock
in a way that may matter (near the limit, the credits spent meanwhile), or the Idempotency-Key
was stale, or a concurrent submit with the same key committed first (the key's INSERT fails
on its primary key, which PostgreSQL checks against committed rows, not the snapshot, and
the statement writes nothing): :func:`submit_at_once` returns None and the caller decides
under the account's lock, exactly, on the transactional path.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    ColumnElement,
    Integer,
    Row,
    Select,
    String,
    and_,
    bindparam,
    func,
    insert,
    select,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from easel.domain.accounts import Caller, LedgerKind
from easel.domain.tasks import UNFINISHED, Status
from easel.store.changes import event_rows, ledger_row, numbered
from easel.store.db import connection
from easel.store.outage import causes
from easel.store.records import IDEMPOTENCY_WINDOW_S, Idempotency, NewTask
from easel.store.refusals import idempotency_conflict, not_enough_credit, too_many_unfinished
from easel.store.tables import accounts, idempotency_keys, tasks

_UNFINISHED = [s.value for s in UNFINISHED]


def task_row(caller: Caller, new: NewTask, now: float) -> dict[str, Any]:
    """The row of a task just submitted (both paths insert it)."""
    return {
        "id": new.id,
        "account_id": caller.account_id,
        "api_key_id": caller.key_id,
        "type": new.type,
        "status": Status.QUEUED.value,
        "model_version": new.model_version,
        "input": new.input,
        "prompt": new.prompt,
        "refs": [r.to_json() for r in new.refs],
        "price": new.price,
        "consumed_credit": 0,
        "progress": 0,
        "attempts": 0,
        "created_at": now,
    }


# The new task's columns, bound as parameters (its account is ``held``'s).
_COLUMNS = [
    "id",
    "api_key_id",
    "type",
    "status",
    "model_version",
    "input",
    "prompt",
    "refs",
    "price",
    "consumed_credit",
    "progress",
    "attempts",
    "created_at",
]
# The statement's other parameters, typed: each is used more than once.
_KEY_ID = bindparam("key_id", type_=String)
_IDEM_KEY = bindparam("idem_key", type_=String)
_IDEM_HASH = bindparam("idem_hash", type_=String)
_PRICE = bindparam("price", type_=Integer)


def _bound(name: str) -> Any:
    """The new task's column ``name``, bound as ``new_<name>``."""
    return bindparam(f"new_{name}", type_=tasks.c[name].type)


def _statement(idempotent: bool) -> Select[Any]:
    """The submit's statement (see the module's docstring); ``idempotent``: the one with an
    Idempotency-Key."""
    unfinished = (
        select(func.count())
        .where(tasks.c.api_key_id == _KEY_ID, tasks.c.status.in_(_UNFINISHED))
        .scalar_subquery()
    )
    seen_columns: list[Any] = [
        accounts.c.id,
        accounts.c.balance,
        accounts.c.event_seq,
        unfinished.label("unfinished"),
    ]
    account = accounts.c.id == bindparam("account_id")
    checks: list[ColumnElement[bool]] = []
    if idempotent:
        same_key = and_(
            idempotency_keys.c.api_key_id == _KEY_ID,
            idempotency_keys.c.key == _IDEM_KEY,
        )
        replay = idempotency_keys.c
        seen_columns += [
            replay.task_id.label("replay_task_id"),
            replay.body_hash.label("replay_hash"),
            replay.created_at.label("replay_at"),
        ]
        seen = (
            select(*seen_columns)
            .select_from(accounts.outerjoin(idempotency_keys, same_key))
            .where(account)
            .cte("seen")
        )
        checks.append(seen.c.replay_task_id.is_(None))
    else:
        seen = select(*seen_columns).where(account).cte("seen")
    price, since = _PRICE, accounts.c.event_seq - seen.c.event_seq
    held = numbered(
        accounts.c.id == seen.c.id,
        accounts.c.balance >= price,
        seen.c.unfinished + since < bindparam("max_unfinished", type_=Integer),
        *checks,
        credits={"balance": accounts.c.balance - price, "frozen": accounts.c.frozen + price},
        wake=True,
    )
    key_id, task_id = _KEY_ID, _bound("id")
    new_task = insert(tasks).from_select(
        ["account_id", *_COLUMNS],
        select(held.c.id, *(_bound(name) for name in _COLUMNS)),
    )
    parts = [
        new_task.cte("new_task"),
        ledger_row(held, held, task_id, LedgerKind.HOLD, -price, price),
        *event_rows(held, held, key_id, task_id, Status.QUEUED, first=True),
    ]
    if idempotent:
        remembered = select(
            key_id, _IDEM_KEY, _IDEM_HASH, task_id, _bound("created_at")
        ).select_from(held)
        columns = ["api_key_id", "key", "body_hash", "task_id", "created_at"]
        parts.append(insert(idempotency_keys).from_select(columns, remembered).cte("idempotency"))
    numbered_as = select(held.c.event_seq).scalar_subquery().label("seq")
    return select(seen, numbered_as).add_cte(*parts)


_SUBMIT = _statement(idempotent=False)
_SUBMIT_IDEMPOTENT = _statement(idempotent=True)
_IDEMPOTENCY_KEY = "pk_idempotency_keys"


async def submit_at_once(
    engine: AsyncEngine,
    caller: Caller,
    new: NewTask,
    now: float,
    *,
    max_unfinished: int,
    retry_after_s: int,
    idempotency: Idempotency | None,
) -> str | None:
    """Submit in one statement on ``engine`` (PostgreSQL, autocommit): the task's id (a new
    one, or an earlier one of the same Idempotency-Key); a refusal as of the statement's
    snapshot; or None when the statement could not decide and wrote nothing (see the
    module's docstring): the caller decides under the account's lock."""
    params = {f"new_{name}": value for name, value in task_row(caller, new, now).items()}
    params |= {
        "account_id": caller.account_id,
        "key_id": caller.key_id,
        "price": new.price,
        "max_unfinished": max_unfinished,
        "chain_at": now,
        "chain_progress": 0,
    }
    statement = _SUBMIT
    if idempotency is not None:
        statement = _SUBMIT_IDEMPOTENT
        params |= {"idem_key": idempotency.key, "idem_hash": idempotency.body_hash}
    try:
        async with connection(engine) as conn:
            row = (await conn.execute(statement, params)).first()
    except IntegrityError as error:
        if idempotency is not None and _constraint_of(error) == _IDEMPOTENCY_KEY:
            return None  # the same key committed first: replayed under the lock
        raise
    if row is None:
        return None
    return _verdict(row, new, now, idempotency, max_unfinished, retry_after_s)


def _verdict(
    row: Row[Any],
    new: NewTask,
    now: float,
    idempotency: Idempotency | None,
    max_unfinished: int,
    retry_after_s: int,
) -> str | None:
    """What a statement that ran says: the new task's id, the earlier one of the key, a
    refusal the snapshot explains, or None (undecided: see :func:`submit_at_once`)."""
    if row.seq is not None:
        return new.id
    if idempotency is not None and row.replay_task_id is not None:
        if row.replay_at < now - IDEMPOTENCY_WINDOW_S:
            return None  # stale: forgotten under the lock
        if row.replay_hash != idempotency.body_hash:
            raise idempotency_conflict(idempotency.key)
        return str(row.replay_task_id)
    if row.unfinished >= max_unfinished:
        raise too_many_unfinished(row.unfinished, max_unfinished, retry_after_s)
    if row.balance < new.price:
        raise not_enough_credit(new, row.balance)
    return None


def _constraint_of(error: BaseException) -> str | None:
    """The constraint an integrity error names (asyncpg's, down the exception's chain)."""
    for link in causes(error):
        name = getattr(link, "constraint_name", None)
        if isinstance(name, str):
            return name
    return None
