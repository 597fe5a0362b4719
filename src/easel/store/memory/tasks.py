"""Tasks as their owners see them, in memory: submit, read, poll with estimates, cancel, and
the janitor's retention of outputs (see :mod:`easel.store.tasks` for the SQL twin)."""

from __future__ import annotations

import dataclasses
import time

from easel.domain.accounts import Caller, LedgerKind
from easel.domain.eta import Measured, mean_keys, swap_wait
from easel.domain.tasks import (
    POSITION_CAP,
    UNFINISHED,
    AttemptOutcome,
    Status,
    Task,
    claim_order,
)
from easel.store.memory.state import Memory, stored
from easel.store.records import IDEMPOTENCY_WINDOW_S, Attempt, Idempotency, NewTask, Outlook
from easel.store.refusals import idempotency_conflict, not_enough_credit, too_many_unfinished

MEAN_SAMPLE = 20  # the latest successful runs a mean run time averages
LIVE_WITHIN_S = 30.0  # a worker with a heartbeat this recent counts as live


class MemoryTasks:
    def __init__(self, memory: Memory) -> None:
        self._m = memory

    async def submit(
        self,
        caller: Caller,
        new: NewTask,
        *,
        max_unfinished: int,
        retry_after_s: int,
        idempotency: Idempotency | None = None,
    ) -> str:
        now = time.time()
        m = self._m
        async with m.lock:
            if idempotency is not None:
                remembered = (caller.key_id, idempotency.key)
                earlier = m.idempotency.get(remembered)
                if earlier is not None and earlier[2] < now - IDEMPOTENCY_WINDOW_S:
                    del m.idempotency[remembered]
                elif earlier is not None:
                    if earlier[0] != idempotency.body_hash:
                        raise idempotency_conflict(idempotency.key)
                    return earlier[1]
            unfinished = sum(
                1
                for t in m.tasks.values()
                if t.api_key_id == caller.key_id and t.status in UNFINISHED
            )
            if unfinished >= max_unfinished:
                raise too_many_unfinished(unfinished, max_unfinished, retry_after_s)
            account = m.accounts[caller.account_id]
            if account.balance < new.price:
                raise not_enough_credit(new, account.balance)
            m.record_move(caller.account_id, new.id, LedgerKind.HOLD, -new.price, new.price)
            task = Task(
                **{f.name: getattr(new, f.name) for f in dataclasses.fields(NewTask)},
                account_id=caller.account_id,
                api_key_id=caller.key_id,
                status=Status.QUEUED,
                consumed_credit=0,
                progress=0,
                attempts=0,
                worker_id=None,
                lease_until=None,
                backend=None,
                output_key=None,
                output_views=None,
                output_deleted_at=None,
                error_code=None,
                error_msg=None,
                created_at=now,
                started_at=None,
                finished_at=None,
            )
            m.tasks[new.id] = dataclasses.replace(task, input=stored(new.input))
            m.event(task, Status.QUEUED, 0)
            m.notify()
            if idempotency is not None:
                m.idempotency[(caller.key_id, idempotency.key)] = (
                    idempotency.body_hash,
                    new.id,
                    now,
                )
        return new.id

    def _get(self, task_id: str, key_id: str | None) -> Task | None:
        task = self._m.tasks.get(task_id)
        if task is None or (key_id is not None and task.api_key_id != key_id):
            return None
        return task

    async def get(self, task_id: str, key_id: str | None = None) -> Task | None:
        async with self._m.lock:
            return self._get(task_id, key_id)

    async def recent(self, key_id: str, limit: int, offset: int = 0) -> list[Task]:
        async with self._m.lock:
            mine = [t for t in self._m.tasks.values() if t.api_key_id == key_id]
        mine.sort(key=lambda t: t.id)
        mine.sort(key=lambda t: t.created_at, reverse=True)
        return mine[offset : offset + limit]

    def _position(self, task: Task) -> int:
        m = self._m
        mine = claim_order(task, m.running_of(task.api_key_id))
        ahead = sum(
            1
            for other in m.tasks.values()
            if other.status is Status.QUEUED
            and claim_order(other, m.running_of(other.api_key_id)) < mine
        )
        return min(ahead, POSITION_CAP)

    async def position(self, task: Task) -> int:
        async with self._m.lock:
            return self._position(task)

    def _runs(self, model_version: str) -> list[tuple[Task, Attempt]]:
        """The model's successful runs (its successful tasks' successful attempts), newest
        first."""
        m = self._m
        runs = [
            (task, row.attempt)
            for row in m.attempts.values()
            if row.attempt.outcome == AttemptOutcome.SUCCESS
            and (task := m.tasks[row.task_id]).model_version == model_version
            and task.status is Status.SUCCESS
        ]
        runs.sort(key=lambda run: run[0].finished_at or 0.0, reverse=True)
        return runs

    def _measured(self, model_version: str, backend: str | None, edits: bool) -> Measured | None:
        runs = self._runs(model_version)
        for (_, on, with_refs), basis in mean_keys(model_version, backend, edits):
            window = [
                a
                for t, a in runs
                if (on is None or a.backend == on) and (with_refs in (None, bool(t.refs)))
            ][:MEAN_SAMPLE]
            durations = [a.ended_at - a.started_at for a in window if a.ended_at is not None]
            if durations:
                return Measured(sum(durations) / len(durations), basis)
        return None

    def _latest_backend(self, model_version: str) -> str | None:
        runs = self._runs(model_version)
        return runs[0][1].backend if runs else None

    async def measured(self, model_version: str, edits: bool) -> Measured | None:
        async with self._m.lock:
            backend = self._latest_backend(model_version)
            return self._measured(model_version, backend, edits)

    def _outlook(self, task: Task) -> Outlook:
        m = self._m
        measured = position = slots = swap_s = None
        if not task.is_final:
            backend = task.backend if task.status is Status.RUNNING else None
            backend = backend or self._latest_backend(task.model_version)
            measured = self._measured(task.model_version, backend, bool(task.refs))
        if task.status is Status.QUEUED:
            position = self._position(task)
            workers = m.live_workers(LIVE_WITHIN_S)
            slots = sum(w.slots for w in workers)
            swap_s = swap_wait(workers, task.model_version)
        elif task.status is Status.RUNNING and task.progress == 0:  # not painting yet
            swap_s = swap_wait(m.live_workers(LIVE_WITHIN_S), task.model_version, task.worker_id)
        attempts = [row.attempt for row in m.attempts.values() if row.task_id == task.id]
        return Outlook(measured, position, slots, attempts, swap_s)

    async def outlook(self, task: Task) -> Outlook:
        async with self._m.lock:
            return self._outlook(task)

    async def view(self, task_id: str, key_id: str | None = None) -> tuple[Task, Outlook] | None:
        async with self._m.lock:
            task = self._get(task_id, key_id)
            return None if task is None else (task, self._outlook(task))

    async def cancel(self, task_id: str, key_id: str) -> Task | None:
        m = self._m
        async with m.lock:
            task = self._get(task_id, key_id)
            if task is None:
                return None
            if task.status is Status.QUEUED:
                m.end_with_refund(m.queued(task), task, Status.CANCELLED, None, None)
            elif task.status is Status.RUNNING and task.lease_until is not None:
                m.cancel_requested.setdefault(task.id, time.time())
            return m.tasks[task_id]

    async def outputs_past(
        self, retention_s: float, limit: int = 500
    ) -> list[tuple[str, list[str]]]:
        cutoff = time.time() - retention_s
        async with self._m.lock:
            old = [
                t
                for t in self._m.tasks.values()
                if t.status is Status.SUCCESS
                and t.output_key is not None
                and t.finished_at is not None
                and t.finished_at < cutoff
            ]
        old.sort(key=lambda t: t.finished_at or 0.0)
        return [
            (t.id, sorted({t.output_key, *(t.output_views or {}).values()}))
            for t in old[:limit]
            if t.output_key is not None
        ]

    async def mark_output_deleted(self, task_id: str) -> None:
        async with self._m.lock:
            task = self._m.tasks.get(task_id)
            if task is not None:
                self._m.tasks[task_id] = dataclasses.replace(
                    task, output_key=None, output_views=None, output_deleted_at=time.time()
                )
