"""The queue as workers use it: register, claim, heartbeat, record attempts, finish, put back,
and the janitor's sweeps (lapsed leases, tasks waited too long). The database is the queue;
each move of a task goes through :mod:`easel.store.lifecycle`.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from sqlalchemy import ColumnElement, Row, and_, bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from easel.domain.errors import FatalServerError
from easel.domain.eta import advertised
from easel.domain.tasks import AttemptOutcome, Status, Task
from easel.store import changes, lifecycle
from easel.store.db import autocommit, connection, is_sqlite, read_only, transaction
from easel.store.estimates import Estimates
from easel.store.lifecycle import (
    FENCE,
    LAPSED,
    QUEUED,
    attempt_ended,
    claiming,
    completed,
    end_attempt,
    end_with_refund,
    ended,
    event,
    fence,
    may_move,
    moved,
    queued,
    succeed,
)
from easel.store.queue_order import OLDEST
from easel.store.records import Heartbeat
from easel.store.refusals import waited_too_long, worker_gone
from easel.store.tables import attempts, tasks, workers
from easel.store.task_rows import task_from_row

_CLAIM_SQLITE = claiming(lateral=False).returning(*tasks.c)
# PostgreSQL: how many (model, key) pairs, those whose oldest task comes first, and how many
# of each pair's oldest tasks a claim looks at; when other claimers were taking every one of
# them, it looks again at more (None: all).
LOOKS = ((8, 8), (None, 64), (None, None))
_ANY_QUEUED = (
    select(tasks.c.id)
    .where(
        tasks.c.status == Status.QUEUED.value,
        tasks.c.model_version.in_(bindparam("models", expanding=True)),
    )
    .limit(1)
)
_SET_BACKEND = update(tasks).where(FENCE).values(backend=bindparam("set_backend"))
_INSERT_ATTEMPT = insert(attempts)
_ATTEMPT_COLUMNS = ("task_id", "claim", "backend", "started_at", "served_by")
# PostgreSQL: both in one statement (a round trip; no transaction's BEGIN and COMMIT).
_START_ATTEMPT = (
    insert(attempts)
    .values({name: bindparam(f"new_{name}") for name in _ATTEMPT_COLUMNS})
    .returning(attempts.c.id)
    .add_cte(_SET_BACKEND.cte("backend_set"))
)


class QueueStore:
    def __init__(self, engine: AsyncEngine, estimates: Estimates) -> None:
        self._engine = engine
        self._reads = read_only(engine, snapshot=False)
        self._estimates = estimates  # a finished run is counted at once by this process
        # PostgreSQL: each change of a task is one statement of its own (easel.store.changes).
        self._changes = None if is_sqlite(engine) else autocommit(engine)

    async def live_models(self, within_s: float = 30.0) -> set[str]:
        """The models that workers with a recent heartbeat take."""
        async with connection(self._reads) as conn:
            rows = await conn.execute(
                select(workers.c.models).where(workers.c.heartbeat_at >= time.time() - within_s)
            )
            return {model for (models,) in rows for model in models}

    # -- worker side ----------------------------------------------------------------------

    async def register_worker(
        self,
        worker_id: str,
        models: Sequence[str],
        slots: int,
        resident: Collection[str] | None = None,
        load_s: Mapping[str, float] | None = None,
    ) -> None:
        """Announce the worker, or renew its heartbeat: the models it takes, its slots, which
        of the models it has resident (None: all) and how long each took to swap in."""
        worker = advertised(worker_id, models, slots, resident, load_s)
        row = {
            "models": list(models),
            "slots": slots,
            "resident": [m for m in models if m in worker.resident],
            "load_s": dict(worker.load_s),
        }
        async with transaction(self._engine) as conn:
            now = time.time()
            done = await conn.execute(
                update(workers).where(workers.c.id == worker_id).values(**row, heartbeat_at=now)
            )
            if done.rowcount == 0:
                await conn.execute(insert(workers).values(id=worker_id, **row, heartbeat_at=now))
        self._estimates.advertised(worker)

    async def unregister_worker(self, worker_id: str) -> None:
        async with transaction(self._engine) as conn:
            await conn.execute(workers.delete().where(workers.c.id == worker_id))

    async def oldest_queued(self, models: Collection[str]) -> float | None:
        """When the oldest queued task of ``models`` was created; None when none is queued
        (see :mod:`easel.store.queue_order`: one index probe per (model, key) pair)."""
        if not models:
            return None
        async with connection(self._reads) as conn:
            oldest = await conn.scalar(OLDEST, {"models": list(models)})
        return None if oldest is None else float(oldest)

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
        if self._changes is not None:
            row = await self._claim_chained(self._changes, claim)
            return None if row is None else task_from_row(row)
        async with transaction(self._engine) as conn:  # claims are serialised: none skipped
            row = (await conn.execute(_CLAIM_SQLITE, claim)).first()
            if row is None:
                return None
            task = task_from_row(row)
            await moved(conn, task, Status.RUNNING, 0)
        return task

    async def _claim_chained(self, engine: AsyncEngine, claim: dict[str, Any]) -> Row[Any] | None:
        for look, (pairs_considered, per_pair) in enumerate(LOOKS):
            looks = {**claim, "pairs_considered": pairs_considered, "per_pair": per_pair}
            row = await changes.run(engine, changes.CLAIM, looks, 0)
            if row is not None:
                return row
            if look == 0:
                async with connection(self._reads) as conn:
                    if await conn.scalar(_ANY_QUEUED, claim) is None:
                        return None  # nothing queued: no need to look further
        return None

    async def heartbeat(self, task: Task, lease_s: float, progress: int) -> Heartbeat:
        """Renew the lease and store progress; say whether the claim is still ours and
        whether a cancel was requested."""
        if self._changes is not None:
            beat = {**fence(task), "beat_until": time.time() + lease_s, "beat_progress": progress}
            row = await changes.run(self._changes, changes.HEARTBEAT_CHAINED, beat, progress)
            if row is None:
                return Heartbeat(ours=False, cancel=False)
            return Heartbeat(ours=True, cancel=row.cancel_requested_at is not None)
        async with transaction(self._engine) as conn:
            before = await conn.scalar(select(tasks.c.progress).where(FENCE), fence(task))
            row = (
                await conn.execute(
                    update(tasks)
                    .where(FENCE)
                    .values(lease_until=time.time() + lease_s, progress=progress)
                    .returning(tasks.c.cancel_requested_at),
                    fence(task),
                )
            ).first()
            if row is None:
                return Heartbeat(ours=False, cancel=False)
            if before != progress:
                await event(conn, task, Status.RUNNING, progress)
        return Heartbeat(ours=True, cancel=row.cancel_requested_at is not None)

    async def start_attempt(self, task: Task, backend: str, served_by: str | None = None) -> int:
        """Record that ``backend`` starts running ``task`` (``served_by``: what makes the image
        there, at most 300 characters); returns the attempt's id."""
        attempt = {
            "task_id": task.id,
            "claim": task.attempts,
            "backend": backend,
            "started_at": time.time(),
            "served_by": served_by[:300] if served_by else None,
        }
        backend_set = {**fence(task), "set_backend": backend}
        if self._changes is not None:
            async with connection(self._changes) as conn:
                started = {f"new_{name}": value for name, value in attempt.items()}
                return int(await conn.scalar(_START_ATTEMPT, {**started, **backend_set}))
        async with transaction(self._engine) as conn:
            await conn.execute(_SET_BACKEND, backend_set)
            result = await conn.execute(_INSERT_ATTEMPT, attempt)
        return int(result.inserted_primary_key[0])  # type: ignore[index]

    async def end_attempt(
        self, attempt_id: int, outcome: AttemptOutcome, error: str | None = None
    ) -> None:
        if self._changes is not None:  # one statement: no transaction around it
            async with connection(self._changes) as conn:
                await end_attempt(conn, attempt_id, outcome, error)
            return
        async with transaction(self._engine) as conn:
            await end_attempt(conn, attempt_id, outcome, error)

    async def complete(
        self,
        task: Task,
        output_key: str,
        backend: str,
        attempt_id: int | None = None,
        views: dict[str, str] | None = None,
    ) -> bool:
        """Success: settle the held credits (and end ``attempt_id`` as a success). False
        when the claim was lost meanwhile. ``views``: a multiview task's {view: key}."""
        if self._changes is not None:
            done = completed(task, output_key, backend, views)
            if attempt_id is None:
                statement = changes.COMPLETE_CHAINED
            else:
                statement = changes.COMPLETE_ENDING_ATTEMPT
                done |= attempt_ended(attempt_id, AttemptOutcome.SUCCESS)
            if await changes.run(self._changes, statement, done, 100) is None:
                return False
        else:
            async with transaction(self._engine) as conn:
                if attempt_id is not None:
                    await end_attempt(conn, attempt_id, AttemptOutcome.SUCCESS)
                if not await succeed(conn, task, output_key, backend, views):
                    return False
        self._estimates.forget(task.model_version)
        return True

    async def fail(self, task: Task, status: Status, code: int | None, message: str | None) -> bool:
        """End a running task in ``status`` (failed, banned, cancelled) with a refund. False
        when the claim was lost."""
        if self._changes is not None:
            ending = changes.ending_chained(FENCE, status)
            bound = {**fence(task), **ended(code, message)}
            return await changes.run(self._changes, ending, bound, task.progress) is not None
        async with transaction(self._engine) as conn:
            return await end_with_refund(conn, FENCE, task, status, code, message, fence(task))

    async def release(self, task: Task) -> bool:
        """Put a running task back in the queue (graceful shutdown); it keeps its attempts."""
        if self._changes is not None:
            released = await changes.run(self._changes, changes.RELEASE_CHAINED, fence(task), 0)
            return released is not None
        async with transaction(self._engine) as conn:
            return await lifecycle.release(conn, task)

    async def reclaim_lapsed(self, max_attempts: int) -> int:
        """Re-queue running tasks whose lease lapsed; fail (and refund) those out of attempts."""
        now = time.time()
        if self._changes is not None:
            return await self._reclaim_one_by_one(self._changes, max_attempts, now)
        lapsed = and_(tasks.c.status == Status.RUNNING.value, tasks.c.lease_until < now)
        async with transaction(self._engine) as conn:
            cancelled = (
                await conn.execute(
                    select(tasks).where(lapsed, tasks.c.cancel_requested_at.is_not(None))
                )
            ).all()
            for row in cancelled:
                task = task_from_row(row)
                await end_with_refund(conn, FENCE, task, Status.CANCELLED, None, None, fence(task))
            lapsed = and_(lapsed, tasks.c.cancel_requested_at.is_(None))
            requeued = (
                await conn.execute(
                    update(tasks)
                    .where(lapsed, tasks.c.attempts < max_attempts, may_move(Status.QUEUED))
                    .values(
                        status=Status.QUEUED.value, worker_id=None, lease_until=None, progress=0
                    )
                    .returning(*tasks.c)
                )
            ).all()
            for row in requeued:
                await moved(conn, task_from_row(row), Status.QUEUED, 0)
            dead = (
                await conn.execute(select(tasks).where(lapsed, tasks.c.attempts >= max_attempts))
            ).all()
            for row in dead:
                task = task_from_row(row)
                await end_with_refund(
                    conn,
                    FENCE,
                    task,
                    Status.FAILED,
                    FatalServerError.code,
                    worker_gone(task.attempts),
                    fence(task),
                )
        return len(requeued) + len(dead) + len(cancelled)

    async def expire_queued(self, max_wait_s: float) -> int:
        """End ``expired`` (with a refund) every task queued longer than ``max_wait_s``."""
        waited = tasks.c.created_at < time.time() - max_wait_s
        return await self._end_queued(waited, Status.EXPIRED, waited_too_long(max_wait_s))

    async def fail_queued(self, model_version: str, message: str) -> int:
        """End ``failed`` (1001, with a refund) every queued task of ``model_version``: no
        worker can run it (its backends failed to load), so waiting would only delay the
        refund until the queue timeout."""
        of_model = tasks.c.model_version == model_version
        return await self._end_queued(of_model, Status.FAILED, message)

    async def _reclaim_one_by_one(self, engine: AsyncEngine, max_attempts: int, now: float) -> int:
        """PostgreSQL's :meth:`reclaim_lapsed`: each lapsed task's change a statement of its
        own (cancelled when its owner asked, queued again, or failed out of attempts), each
        still fenced and lapsed when it runs."""
        lapsed = and_(tasks.c.status == Status.RUNNING.value, tasks.c.lease_until < now)
        async with connection(self._reads) as conn:
            rows = (await conn.execute(select(tasks).where(lapsed))).all()
        done = 0
        for row in rows:
            task = task_from_row(row)
            bound = {**fence(task), "lapsed_before": now}
            if row.cancel_requested_at is not None:
                statement = changes.ending_chained(LAPSED, Status.CANCELLED)
                bound |= ended(None, None)
            elif task.attempts < max_attempts:
                statement = changes.REQUEUE_CHAINED
            else:
                statement = changes.ending_chained(LAPSED, Status.FAILED)
                bound |= ended(FatalServerError.code, worker_gone(task.attempts))
            progress = 0 if statement is changes.REQUEUE_CHAINED else task.progress
            done += await changes.run(engine, statement, bound, progress) is not None
        return done

    async def _end_queued(self, where: ColumnElement[bool], status: Status, message: str) -> int:
        if self._changes is not None:  # PostgreSQL: each task's end a statement of its own
            waiting = select(tasks.c.id, tasks.c.progress).where(
                tasks.c.status == Status.QUEUED.value, where
            )
            async with connection(self._reads) as conn:
                queued_ids = (await conn.execute(waiting)).all()
            ending = changes.ending_chained(QUEUED, status)
            done = 0
            for task_id, progress in queued_ids:
                bound = {"queued_id": task_id, **ended(FatalServerError.code, message)}
                done += await changes.run(self._changes, ending, bound, progress) is not None
            return done
        async with transaction(self._engine) as conn:
            rows = (
                await conn.execute(
                    select(tasks)
                    .where(tasks.c.status == Status.QUEUED.value, where)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            count = 0
            for row in rows:
                task = task_from_row(row)
                count += await end_with_refund(
                    conn, queued(task), task, status, FatalServerError.code, message
                )
        return count
