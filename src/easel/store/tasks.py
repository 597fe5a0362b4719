"""The task queue: submit, claim, heartbeat, finish, reclaim, position. The database is the queue.

Every state change that moves credits does so in the same transaction, and every change a
worker makes is fenced by ``(worker_id, attempts)``: a worker whose lease lapsed and whose
task was reclaimed can no longer finish it, so nothing is settled or refunded twice.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, bindparam, func, insert, select, tuple_, update
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from easel.domain.accounts import Caller
from easel.domain.errors import IdempotencyConflict, NotEnoughCredit, TooManyUnfinishedTasks
from easel.domain.eta import Basis, Measured
from easel.domain.tasks import REFUNDED, UNFINISHED, Reference, Status, Task
from easel.store import events
from easel.store.accounts import record_move, write_ledger_row
from easel.store.db import connection, read_only, transaction
from easel.store.notify import notify
from easel.store.tables import accounts, attempts, idempotency_keys, tasks, workers

_UNFINISHED = [s.value for s in UNFINISHED]


@dataclass(frozen=True, slots=True)
class NewTask:
    id: str
    type: str
    model_version: str
    input: dict[str, Any]
    prompt: str
    refs: tuple[Reference, ...]
    price: int


@dataclass(frozen=True, slots=True)
class Heartbeat:
    ours: bool  # the claim is still this worker's
    cancel: bool  # the client asked to cancel the task


@dataclass(frozen=True, slots=True)
class Attempt:
    backend: str
    claim: int
    started_at: float
    ended_at: float | None
    outcome: str | None
    error: str | None


def _task(row: Row[Any]) -> Task:
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
        output_deleted_at=m["output_deleted_at"],
        error_code=m["error_code"],
        error_msg=m["error_msg"],
        created_at=m["created_at"],
        started_at=m["started_at"],
        finished_at=m["finished_at"],
    )


@dataclass(frozen=True, slots=True)
class Outlook:
    measured: Measured | None  # unfinished tasks only: the mean run time its estimate uses
    position: int | None  # queued tasks only
    live_slots: int | None  # queued tasks only
    attempts: list[Attempt]


_Recalled = tuple[float | None] | None  # a remembered value (which may be None), or nothing
# A mean's key: the model, the backend (None: any) and whether the tasks had reference
# images (None: either way).
_MeanKey = tuple[str, str | None, bool | None]


def _fallbacks(
    model_version: str, backend: str | None, edits: bool
) -> list[tuple[_MeanKey, Basis]]:
    """The means an estimate may rest on, best first: this backend and kind of request,
    this backend, this kind of request on any backend, the model."""
    model_wide: list[tuple[_MeanKey, Basis]] = [
        ((model_version, None, edits), Basis.MODEL),
        ((model_version, None, None), Basis.MODEL),
    ]
    if backend is None:
        return model_wide
    return [
        ((model_version, backend, edits), Basis.BACKEND),
        ((model_version, backend, None), Basis.BACKEND),
        *model_wide,
    ]


class _Estimates:
    """Run-time means, the backend that ran each model last and live worker slots,
    remembered for ``ttl_s``.

    They feed the estimates every poll shows (``running_left_time``, ``Retry-After``), are
    averages over many tasks, and cost a statement each; polling clients ask for them many
    times a second. ``queuing_num`` is never remembered: it stays exact.
    """

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._means: dict[_MeanKey, tuple[float, float | None]] = {}
        self._latest: dict[str, tuple[float, str | None]] = {}
        self._slots: tuple[float, int] | None = None

    def _recall_mean(self, key: _MeanKey) -> _Recalled:
        """The remembered mean, when it is fresh: ``(mean,)``; else None."""
        hit = self._means.get(key)
        return (hit[1],) if hit is not None and hit[0] > time.monotonic() else None

    async def _mean(self, conn: AsyncConnection, key: _MeanKey) -> float | None:
        recalled = self._recall_mean(key)
        if recalled is not None:
            return recalled[0]
        mean = await _mean_duration(conn, *key)
        self._means[key] = (time.monotonic() + self.ttl_s, mean)
        return mean

    def recall_measured(
        self, model_version: str, backend: str | None, edits: bool
    ) -> tuple[Measured | None] | None:
        """``measured``'s answer when every mean it needs is remembered; else None."""
        for key, basis in _fallbacks(model_version, backend, edits):
            recalled = self._recall_mean(key)
            if recalled is None:
                return None
            if recalled[0] is not None:
                return (Measured(recalled[0], basis),)
        return (None,)

    async def measured(
        self, conn: AsyncConnection, model_version: str, backend: str | None, edits: bool
    ) -> Measured | None:
        """The best-keyed mean there is data for (see ``_fallbacks``), or None."""
        for key, basis in _fallbacks(model_version, backend, edits):
            mean = await self._mean(conn, key)
            if mean is not None:
                return Measured(mean, basis)
        return None

    def recall_latest(self, model_version: str) -> tuple[str | None] | None:
        hit = self._latest.get(model_version)
        return (hit[1],) if hit is not None and hit[0] > time.monotonic() else None

    async def latest_backend(self, conn: AsyncConnection, model_version: str) -> str | None:
        """The backend of the model's latest successful run: the likeliest to run the next
        task (the first ready backend of its chain)."""
        recalled = self.recall_latest(model_version)
        if recalled is not None:
            return recalled[0]
        backend = await conn.scalar(_LATEST_BACKEND, {"model_version": model_version})
        self._latest[model_version] = (time.monotonic() + self.ttl_s, backend)
        return backend

    def forget(self, model_version: str) -> None:
        """Drop what is remembered of the model: one of its runs just ended here, and the
        next poll should count it (other processes see it within ``ttl_s``)."""
        self._means = {k: v for k, v in self._means.items() if k[0] != model_version}
        self._latest.pop(model_version, None)

    async def slots(self, conn: AsyncConnection) -> int:
        now = time.monotonic()
        if self._slots is not None and self._slots[0] > now:
            return self._slots[1]
        slots = await _live_slots(conn)
        self._slots = (now + self.ttl_s, slots)
        return slots


async def _outlook(
    conn: AsyncConnection,
    task: Task,
    estimates: _Estimates,
    attempts_read: list[Attempt] | None = None,
) -> Outlook:
    """The rest of the task object; ``attempts_read`` when the caller read them already."""
    measured = position = slots = None
    if not task.is_final:
        # A running task's backend is known; a queued one will likely run where the
        # model's latest task ran.
        backend = task.backend if task.status is Status.RUNNING else None
        backend = backend or await estimates.latest_backend(conn, task.model_version)
        measured = await estimates.measured(conn, task.model_version, backend, bool(task.refs))
    if task.status is Status.QUEUED:
        position = await _position(conn, task)
        slots = await estimates.slots(conn)
    if attempts_read is None:
        attempts_read = await _attempts(conn, task.id)
    return Outlook(measured, position, slots, attempts_read)


async def _position(conn: AsyncConnection, task: Task) -> int:
    params = {"key_id": task.api_key_id, "created_at": task.created_at, "task_id": task.id}
    return int(await conn.scalar(_AHEAD, params) or 0)


# Successful runs of a model, newest first: the successful attempt of each successful task
# (a run on one backend, without the time a failed attempt before it took).
_SUCCESSFUL_RUNS = (
    select(tasks.c.id)
    .select_from(tasks.join(attempts, attempts.c.task_id == tasks.c.id))
    .where(
        tasks.c.model_version == bindparam("model_version"),
        tasks.c.status == Status.SUCCESS.value,
        attempts.c.outcome == "success",
    )
    .order_by(tasks.c.finished_at.desc())
)
_LATEST_BACKEND = _SUCCESSFUL_RUNS.with_only_columns(attempts.c.backend).limit(1)


async def _mean_duration(
    conn: AsyncConnection,
    model_version: str,
    backend: str | None = None,
    edits: bool | None = None,
    sample: int = 20,
) -> float | None:
    """Mean run time of the model's latest successful runs (on ``backend``, of tasks with
    or without reference images, where given)."""
    recent = _SUCCESSFUL_RUNS.with_only_columns(
        (attempts.c.ended_at - attempts.c.started_at).label("duration")
    )
    if backend is not None:
        recent = recent.where(attempts.c.backend == backend)
    if edits is not None:
        has_refs = func.json_array_length(tasks.c.refs) > 0
        recent = recent.where(has_refs if edits else ~has_refs)
    window = recent.limit(sample).subquery()
    params = {"model_version": model_version}
    mean = await conn.scalar(select(func.avg(window.c.duration)), params)
    return None if mean is None else float(mean)


async def _live_slots(conn: AsyncConnection, within_s: float = 30.0) -> int:
    slots = await conn.scalar(
        select(func.coalesce(func.sum(workers.c.slots), 0)).where(
            workers.c.heartbeat_at >= time.time() - within_s
        )
    )
    return int(slots or 0)


# The statements of a poll, built once with bound parameters: building one and computing its
# cache key each time cost more than SQLite took to run it.
_ATTEMPTS = (
    select(attempts).where(attempts.c.task_id == bindparam("task_id")).order_by(attempts.c.id)
)
# A poll reads the task and its attempts in one statement (a row per attempt, the task's
# columns repeated; one row with null attempt columns when there is none yet): on PostgreSQL
# each statement is a round trip, and on either database a pass through SQLAlchemy.
_ATTEMPT_COLUMNS = ("backend", "claim", "started_at", "ended_at", "outcome", "error")
_TASK_AND_ATTEMPTS = (
    select(
        tasks,
        attempts.c.id.label("attempt_id"),
        *(attempts.c[name].label(f"attempt_{name}") for name in _ATTEMPT_COLUMNS),
    )
    .select_from(tasks.outerjoin(attempts, attempts.c.task_id == tasks.c.id))
    .where(tasks.c.id == bindparam("task_id"))
    .order_by(attempts.c.id)
)
_TASK_AND_ATTEMPTS_OF_KEY = _TASK_AND_ATTEMPTS.where(tasks.c.api_key_id == bindparam("key_id"))


def _attempt(row: Row[Any]) -> Attempt:
    return Attempt(row.backend, row.claim, row.started_at, row.ended_at, row.outcome, row.error)


async def _attempts(conn: AsyncConnection, task_id: str) -> list[Attempt]:
    return [_attempt(row) for row in await conn.execute(_ATTEMPTS, {"task_id": task_id})]


def _joined_attempts(rows: Sequence[Row[Any]]) -> list[Attempt]:
    """The attempts of a ``_TASK_AND_ATTEMPTS`` result."""
    return [
        Attempt(*(row._mapping[f"attempt_{name}"] for name in _ATTEMPT_COLUMNS))
        for row in rows
        if row._mapping["attempt_id"] is not None
    ]


# Aliases of ``tasks`` for the queue-order subqueries, made once: making one builds a proxy of
# every column, which cost more than the rest of a poll's statement building.
_OTHER = tasks.alias("other")
_RUNNING = tasks.alias("running")


def _running_of(api_key_id: Any) -> Any:
    """How many tasks of ``api_key_id`` are running (a scalar subquery)."""
    running = _RUNNING
    return (
        select(func.count())
        .select_from(running)
        .where(running.c.api_key_id == api_key_id, running.c.status == Status.RUNNING.value)
        .scalar_subquery()
    )


# How many queued tasks go before a given one, in claim order (see ``TaskStore.claim``): its
# key's running tasks, then age. One statement: one round trip.
_AHEAD = (
    select(func.count())
    .select_from(_OTHER)
    .where(
        _OTHER.c.status == Status.QUEUED.value,
        tuple_(_running_of(_OTHER.c.api_key_id), _OTHER.c.created_at, _OTHER.c.id)
        < tuple_(_running_of(bindparam("key_id")), bindparam("created_at"), bindparam("task_id")),
    )
)


IDEMPOTENCY_WINDOW_S = 24 * 3600


@dataclass(frozen=True, slots=True)
class Idempotency:
    key: str
    body_hash: str


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
        raise IdempotencyConflict(
            f"Idempotency-Key {idempotency.key!r} was used with another request body.",
        )
    return str(row.task_id)


async def _event(conn: AsyncConnection, task: Task, status: Status, progress: int) -> None:
    await events.append(
        conn,
        account_id=task.account_id,
        api_key_id=task.api_key_id,
        task_id=task.id,
        status=status,
        progress=progress,
    )


async def _end_attempt(
    conn: AsyncConnection, attempt_id: int, outcome: str, error: str | None = None
) -> None:
    ending = {"end_at": time.time(), "end_outcome": outcome, "end_error": error}
    await conn.execute(_END_ATTEMPT, {"attempt_id": attempt_id, **ending})


def _fenced(task: Task) -> Any:
    """The claim that is finishing ``task`` is still the current one."""
    return and_(
        tasks.c.id == task.id,
        tasks.c.status == Status.RUNNING.value,
        tasks.c.worker_id == task.worker_id,
        tasks.c.attempts == task.attempts,
    )


# The worker's statements for every task, built once with bound parameters; ``_FENCE`` is
# ``_fenced`` with the task's values given by ``_fence``. (Binding values into a copy of
# ``_FENCE`` with ``params()`` would make the two one, but SQLAlchemy 2.1 deprecates that
# on anything but a whole statement.)
_FENCE = and_(
    tasks.c.id == bindparam("fence_id"),
    tasks.c.status == Status.RUNNING.value,
    tasks.c.worker_id == bindparam("fence_worker"),
    tasks.c.attempts == bindparam("fence_attempts"),
)


def _fence(task: Task) -> dict[str, Any]:
    return {"fence_id": task.id, "fence_worker": task.worker_id, "fence_attempts": task.attempts}


_CLAIM = (
    update(tasks)
    .where(
        tasks.c.id
        == select(tasks.c.id)
        .where(
            tasks.c.status == Status.QUEUED.value,
            tasks.c.model_version.in_(bindparam("models", expanding=True)),
        )
        .order_by(_running_of(tasks.c.api_key_id), tasks.c.created_at, tasks.c.id)
        .limit(1)
        .with_for_update(skip_locked=True)
        .scalar_subquery(),
        tasks.c.status == Status.QUEUED.value,
    )
    .values(
        status=Status.RUNNING.value,
        attempts=tasks.c.attempts + 1,
        worker_id=bindparam("claimed_by"),
        lease_until=bindparam("claimed_until"),
        started_at=bindparam("claimed_at"),
        progress=0,
    )
    .returning(*tasks.c)
)
_SET_BACKEND = update(tasks).where(_FENCE).values(backend=bindparam("set_backend"))
_INSERT_ATTEMPT = insert(attempts)
_END_ATTEMPT = (
    update(attempts)
    .where(attempts.c.id == bindparam("attempt_id"))
    .values(
        ended_at=bindparam("end_at"), outcome=bindparam("end_outcome"), error=bindparam("end_error")
    )
)
_COMPLETE = (
    update(tasks)
    .where(_FENCE)
    .values(
        status=Status.SUCCESS.value,
        progress=100,
        output_key=bindparam("done_output_key"),
        backend=bindparam("done_backend"),
        consumed_credit=bindparam("done_price"),
        lease_until=None,
        finished_at=bindparam("done_at"),
    )
)


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


class TaskStore:
    def __init__(self, engine: AsyncEngine, estimates_ttl_s: float = 2.0) -> None:
        self._engine = engine
        # Every read here is one statement, or statements that need not agree (a poll's
        # task and its estimates): no transaction around them.
        self._reads = read_only(engine, snapshot=False)
        self._estimates = _Estimates(estimates_ttl_s)

    # -- API side -------------------------------------------------------------------------

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
                raise TooManyUnfinishedTasks(
                    f"This key already has {unfinished} unfinished tasks; the limit is "
                    f"{max_unfinished}.",
                    retry_after_s=retry_after_s,
                )
            held = await conn.execute(_HOLD, {"account_id": caller.account_id, "price": new.price})
            if held.rowcount != 1:
                balance = await conn.scalar(
                    select(accounts.c.balance).where(accounts.c.id == caller.account_id)
                )
                raise NotEnoughCredit(
                    f"{new.model_version} costs {new.price} credits; the balance is {balance}."
                )
            await write_ledger_row(conn, caller.account_id, new.id, "hold", -new.price, new.price)
            row = {
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
            await conn.execute(_INSERT_TASK, row)
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
        return None if row is None else _task(row)

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
            return [_task(row) for row in await conn.execute(query)]

    async def position(self, task: Task) -> int:
        """How many queued tasks workers would claim before ``task`` as things stand now
        (the claim order: fewest running tasks of the key first, then oldest)."""
        async with connection(self._reads) as conn:
            return await _position(conn, task)

    async def measured(self, model_version: str, edits: bool) -> Measured | None:
        """The mean run time a new task of the model (with reference images or not) would
        be estimated by, or None without data (remembered for a moment, as every estimate:
        see ``_Estimates``)."""
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
            return await _outlook(conn, task, self._estimates)

    async def view(self, task_id: str, key_id: str | None = None) -> tuple[Task, Outlook] | None:
        """The task (of ``key_id``, if given) and its outlook, read on one connection (the hot
        path of polling and of live updates)."""
        query, params = (
            (_TASK_AND_ATTEMPTS, {"task_id": task_id})
            if key_id is None
            else (_TASK_AND_ATTEMPTS_OF_KEY, {"task_id": task_id, "key_id": key_id})
        )
        async with connection(self._reads) as conn:
            rows = (await conn.execute(query, params)).all()
            if not rows:
                return None
            task = _task(rows[0])
            return task, await _outlook(conn, task, self._estimates, _joined_attempts(rows))

    async def live_models(self, within_s: float = 30.0) -> set[str]:
        """The models that workers with a recent heartbeat take."""
        async with connection(self._reads) as conn:
            rows = await conn.execute(
                select(workers.c.models).where(workers.c.heartbeat_at >= time.time() - within_s)
            )
            return {model for (models,) in rows for model in models}

    # -- worker side ----------------------------------------------------------------------

    async def register_worker(self, worker_id: str, models: Sequence[str], slots: int) -> None:
        async with transaction(self._engine) as conn:
            done = await conn.execute(
                update(workers)
                .where(workers.c.id == worker_id)
                .values(models=list(models), slots=slots, heartbeat_at=time.time())
            )
            if done.rowcount == 0:
                await conn.execute(
                    insert(workers).values(
                        id=worker_id, models=list(models), slots=slots, heartbeat_at=time.time()
                    )
                )

    async def unregister_worker(self, worker_id: str) -> None:
        async with transaction(self._engine) as conn:
            await conn.execute(workers.delete().where(workers.c.id == worker_id))

    async def claim(self, worker_id: str, models: Collection[str], lease_s: float) -> Task | None:
        """Take the next queued task of ``models`` (SKIP LOCKED on PostgreSQL).

        Fair between keys: the task of the key with the fewest running tasks goes first,
        then the oldest, so no single key starves the others.
        """
        if not models:
            return None
        now = time.time()
        claim = {
            "models": list(models),
            "claimed_by": worker_id,
            "claimed_until": now + lease_s,
            "claimed_at": now,
        }
        async with transaction(self._engine) as conn:
            row = (await conn.execute(_CLAIM, claim)).first()
            if row is None:
                return None
            task = _task(row)
            await _event(conn, task, Status.RUNNING, 0)
        return task

    async def heartbeat(self, task: Task, lease_s: float, progress: int) -> Heartbeat:
        """Renew the lease and store progress; say whether the claim is still ours and
        whether a cancel was requested."""
        async with transaction(self._engine) as conn:
            before = await conn.scalar(select(tasks.c.progress).where(_fenced(task)))
            row = (
                await conn.execute(
                    update(tasks)
                    .where(_fenced(task))
                    .values(lease_until=time.time() + lease_s, progress=progress)
                    .returning(tasks.c.cancel_requested_at)
                )
            ).first()
            if row is None:
                return Heartbeat(ours=False, cancel=False)
            if before != progress:
                await _event(conn, task, Status.RUNNING, progress)
        return Heartbeat(ours=True, cancel=row.cancel_requested_at is not None)

    async def cancel(self, task_id: str, key_id: str) -> Task | None:
        """Cancel a task of ``key_id``: a queued one ends ``cancelled`` at once with a refund;
        a running one is asked to stop at its next checkpoint; a final one is left as it is.
        Idempotent. None when the key has no such task."""
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
            task = _task(row)
            if task.status is Status.QUEUED:
                queued = and_(tasks.c.id == task.id, tasks.c.status == Status.QUEUED.value)
                await self._end_with_refund(conn, queued, task, Status.CANCELLED, None, None)
            elif task.status is Status.RUNNING and task.lease_until is not None:
                await conn.execute(
                    update(tasks)
                    .where(tasks.c.id == task.id, tasks.c.cancel_requested_at.is_(None))
                    .values(cancel_requested_at=time.time())
                )
        return await self.get(task_id)

    async def start_attempt(self, task: Task, backend: str) -> int:
        """Record that ``backend`` starts running ``task``; returns the attempt's id."""
        attempt = {
            "task_id": task.id,
            "claim": task.attempts,
            "backend": backend,
            "started_at": time.time(),
        }
        async with transaction(self._engine) as conn:
            await conn.execute(_SET_BACKEND, {**_fence(task), "set_backend": backend})
            result = await conn.execute(_INSERT_ATTEMPT, attempt)
        return int(result.inserted_primary_key[0])  # type: ignore[index]

    async def end_attempt(self, attempt_id: int, outcome: str, error: str | None = None) -> None:
        async with transaction(self._engine) as conn:
            await _end_attempt(conn, attempt_id, outcome, error)

    async def complete(
        self, task: Task, output_key: str, backend: str, attempt_id: int | None = None
    ) -> bool:
        """Success: settle the held credits (and end ``attempt_id`` as a success). False
        when the claim was lost meanwhile."""
        async with transaction(self._engine) as conn:
            if attempt_id is not None:
                await _end_attempt(conn, attempt_id, "success")
            done = {
                "done_output_key": output_key,
                "done_backend": backend,
                "done_price": task.price,
                "done_at": time.time(),
            }
            result = await conn.execute(_COMPLETE, {**_fence(task), **done})
            if result.rowcount != 1:
                return False
            await record_move(conn, task.account_id, task.id, "settle", 0, -task.price)
            await _event(conn, task, Status.SUCCESS, 100)
        self._estimates.forget(task.model_version)
        return True

    async def fail(self, task: Task, status: Status, code: int | None, message: str | None) -> bool:
        """End a running task in ``status`` (failed, banned, cancelled) with a refund. False
        when the claim was lost."""
        assert status in REFUNDED
        async with transaction(self._engine) as conn:
            return await self._end_with_refund(conn, _fenced(task), task, status, code, message)

    async def release(self, task: Task) -> bool:
        """Put a running task back in the queue (graceful shutdown); it keeps its attempts."""
        async with transaction(self._engine) as conn:
            result = await conn.execute(
                update(tasks)
                .where(_fenced(task))
                .values(
                    status=Status.QUEUED.value,
                    worker_id=None,
                    lease_until=None,
                    progress=0,
                    attempts=tasks.c.attempts - 1,
                )
            )
            if result.rowcount == 1:
                await _event(conn, task, Status.QUEUED, 0)
                await notify(conn)
        return result.rowcount == 1

    async def reclaim_lapsed(self, max_attempts: int) -> int:
        """Re-queue running tasks whose lease lapsed; fail (and refund) those out of attempts."""
        now = time.time()
        lapsed = and_(tasks.c.status == Status.RUNNING.value, tasks.c.lease_until < now)
        async with transaction(self._engine) as conn:
            cancelled = (
                await conn.execute(
                    select(tasks).where(lapsed, tasks.c.cancel_requested_at.is_not(None))
                )
            ).all()
            for row in cancelled:
                task = _task(row)
                await self._end_with_refund(conn, _fenced(task), task, Status.CANCELLED, None, None)
            lapsed = and_(lapsed, tasks.c.cancel_requested_at.is_(None))
            requeued = (
                await conn.execute(
                    update(tasks)
                    .where(lapsed, tasks.c.attempts < max_attempts)
                    .values(
                        status=Status.QUEUED.value, worker_id=None, lease_until=None, progress=0
                    )
                    .returning(*tasks.c)
                )
            ).all()
            for row in requeued:
                await _event(conn, _task(row), Status.QUEUED, 0)
            if requeued:
                await notify(conn)
            dead = (
                await conn.execute(select(tasks).where(lapsed, tasks.c.attempts >= max_attempts))
            ).all()
            for row in dead:
                task = _task(row)
                await self._end_with_refund(
                    conn,
                    _fenced(task),
                    task,
                    Status.FAILED,
                    1001,
                    f"The task's worker stopped responding {task.attempts} times; giving up.",
                )
        return len(requeued) + len(dead) + len(cancelled)

    async def expire_queued(self, max_wait_s: float) -> int:
        """End ``expired`` (with a refund) every task queued longer than ``max_wait_s``."""
        message = (
            f"The task waited more than {max_wait_s:.0f} s in the queue and expired; "
            "its credits were refunded."
        )
        waited = tasks.c.created_at < time.time() - max_wait_s
        return await self._end_queued(waited, Status.EXPIRED, message)

    async def fail_queued(self, model_version: str, message: str) -> int:
        """End ``failed`` (1001, with a refund) every queued task of ``model_version``: no
        worker can run it (its backends failed to load), so waiting would only delay the
        refund until the queue timeout."""
        of_model = tasks.c.model_version == model_version
        return await self._end_queued(of_model, Status.FAILED, message)

    async def _end_queued(self, where: Any, status: Status, message: str) -> int:
        async with transaction(self._engine) as conn:
            rows = (
                await conn.execute(
                    select(tasks)
                    .where(tasks.c.status == Status.QUEUED.value, where)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            ended = 0
            for row in rows:
                task = _task(row)
                queued = and_(tasks.c.id == task.id, tasks.c.status == Status.QUEUED.value)
                ended += await self._end_with_refund(conn, queued, task, status, 1001, message)
        return ended

    async def outputs_past(self, retention_s: float, limit: int = 500) -> list[tuple[str, str]]:
        """(task id, output key) of outputs older than ``retention_s``, oldest first."""
        cutoff = time.time() - retention_s
        async with connection(self._reads) as conn:
            rows = await conn.execute(
                select(tasks.c.id, tasks.c.output_key)
                .where(
                    tasks.c.status == Status.SUCCESS.value,
                    tasks.c.output_key.is_not(None),
                    tasks.c.finished_at < cutoff,
                )
                .order_by(tasks.c.finished_at)
                .limit(limit)
            )
            return [(row.id, row.output_key) for row in rows]

    async def mark_output_deleted(self, task_id: str) -> None:
        async with transaction(self._engine) as conn:
            await conn.execute(
                update(tasks)
                .where(tasks.c.id == task_id)
                .values(output_key=None, output_deleted_at=time.time())
            )

    async def _end_with_refund(
        self,
        conn: AsyncConnection,
        where: Any,
        task: Task,
        status: Status,
        code: int | None,
        message: str | None,
    ) -> bool:
        result = await conn.execute(
            update(tasks)
            .where(where)
            .values(
                status=status.value,
                error_code=code,
                error_msg=message,
                consumed_credit=0,
                lease_until=None,
                finished_at=time.time(),
            )
        )
        if result.rowcount != 1:
            return False
        await record_move(conn, task.account_id, task.id, "refund", task.price, -task.price)
        await _event(conn, task, status, task.progress)
        return True
