"""The queue as workers use it, in memory: register, claim, heartbeat, record attempts,
finish, put back, and the janitor's sweeps (see :mod:`easel.store.queue` for the SQL twin)."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import replace

from easel.domain.errors import FatalServerError
from easel.domain.eta import advertised
from easel.domain.tasks import AttemptOutcome, Status, Task, claim_order
from easel.store.memory.state import AttemptRow, Memory, WorkerRow
from easel.store.records import Attempt, Heartbeat
from easel.store.refusals import waited_too_long, worker_gone


class MemoryQueue:
    def __init__(self, memory: Memory) -> None:
        self._m = memory

    async def live_models(self, within_s: float = 30.0) -> set[str]:
        async with self._m.lock:
            workers = self._m.live_workers(within_s)
        return {model for worker in workers for model in worker.models}

    async def register_worker(
        self,
        worker_id: str,
        models: Sequence[str],
        slots: int,
        resident: Collection[str] | None = None,
        load_s: Mapping[str, float] | None = None,
    ) -> None:
        advert = advertised(worker_id, models, slots, resident, load_s)
        async with self._m.lock:
            self._m.workers[worker_id] = WorkerRow(advert, time.time())

    async def unregister_worker(self, worker_id: str) -> None:
        async with self._m.lock:
            self._m.workers.pop(worker_id, None)

    async def oldest_queued(self, models: Collection[str]) -> float | None:
        async with self._m.lock:
            return min(
                (
                    t.created_at
                    for t in self._m.tasks.values()
                    if t.status is Status.QUEUED and t.model_version in models
                ),
                default=None,
            )

    async def claim(self, worker_id: str, models: Collection[str], lease_s: float) -> Task | None:
        m, now = self._m, time.time()
        async with m.lock:
            waiting = [
                t
                for t in m.tasks.values()
                if t.status is Status.QUEUED and t.model_version in models
            ]
            if not waiting:
                return None
            first = min(waiting, key=lambda t: claim_order(t, m.running_of(t.api_key_id)))
            task = m.move(
                first,
                Status.RUNNING,
                attempts=first.attempts + 1,
                worker_id=worker_id,
                lease_until=now + lease_s,
                started_at=now,
                progress=0,
            )
            assert task is not None  # a queued task may always start
            m.moved(task, Status.RUNNING, 0)
            return task

    async def heartbeat(self, task: Task, lease_s: float, progress: int) -> Heartbeat:
        m = self._m
        async with m.lock:
            row = m.fenced(task)
            if row is None:
                return Heartbeat(ours=False, cancel=False)
            m.tasks[task.id] = replace(row, lease_until=time.time() + lease_s, progress=progress)
            if row.progress != progress:
                m.event(task, Status.RUNNING, progress)
            return Heartbeat(ours=True, cancel=task.id in m.cancel_requested)

    async def start_attempt(self, task: Task, backend: str, served_by: str | None = None) -> int:
        m = self._m
        async with m.lock:
            row = m.fenced(task)
            if row is not None:
                m.tasks[task.id] = replace(row, backend=backend)
            attempt_id = max(m.attempts, default=0) + 1
            made_by = served_by[:300] if served_by else None
            attempt = Attempt(backend, task.attempts, time.time(), None, None, None, made_by)
            m.attempts[attempt_id] = AttemptRow(task.id, attempt)
            return attempt_id

    async def end_attempt(
        self, attempt_id: int, outcome: AttemptOutcome, error: str | None = None
    ) -> None:
        async with self._m.lock:
            self._m.end_attempt(attempt_id, outcome.value, error)

    async def complete(
        self,
        task: Task,
        output_key: str,
        backend: str,
        attempt_id: int | None = None,
        views: dict[str, str] | None = None,
    ) -> bool:
        m = self._m
        async with m.lock:
            if attempt_id is not None:
                m.end_attempt(attempt_id, AttemptOutcome.SUCCESS.value, None)
            done = m.move(
                m.fenced(task),
                Status.SUCCESS,
                progress=100,
                output_key=output_key,
                output_views=None if views is None else dict(views),
                backend=backend,
                consumed_credit=task.price,
                lease_until=None,
                finished_at=time.time(),
            )
            if done is None:
                return False
            m.moved(task, Status.SUCCESS, 100)
            return True

    async def fail(self, task: Task, status: Status, code: int | None, message: str | None) -> bool:
        async with self._m.lock:
            return self._m.end_with_refund(self._m.fenced(task), task, status, code, message)

    async def release(self, task: Task) -> bool:
        m = self._m
        async with m.lock:
            row = m.fenced(task)
            released = m.move(
                row,
                Status.QUEUED,
                worker_id=None,
                lease_until=None,
                progress=0,
                attempts=task.attempts - 1,
            )
            if released is None:
                return False
            m.moved(task, Status.QUEUED, 0)
            return True

    async def reclaim_lapsed(self, max_attempts: int) -> int:
        m, now = self._m, time.time()
        async with m.lock:
            lapsed = [
                t
                for t in m.tasks.values()
                if t.status is Status.RUNNING and t.lease_until is not None and t.lease_until < now
            ]
            ended = 0
            for task in lapsed:
                if task.id in m.cancel_requested:
                    ended += m.end_with_refund(task, task, Status.CANCELLED, None, None)
                elif task.attempts < max_attempts:
                    again = m.move(
                        task, Status.QUEUED, worker_id=None, lease_until=None, progress=0
                    )
                    assert again is not None  # a running task may always go back
                    m.moved(again, Status.QUEUED, 0)
                    ended += 1
                else:
                    code, message = FatalServerError.code, worker_gone(task.attempts)
                    ended += m.end_with_refund(task, task, Status.FAILED, code, message)
            return ended

    async def expire_queued(self, max_wait_s: float) -> int:
        before = time.time() - max_wait_s
        return await self._end_queued(
            lambda t: t.created_at < before, Status.EXPIRED, waited_too_long(max_wait_s)
        )

    async def fail_queued(self, model_version: str, message: str) -> int:
        return await self._end_queued(
            lambda t: t.model_version == model_version, Status.FAILED, message
        )

    async def _end_queued(self, which: Callable[[Task], bool], status: Status, msg: str) -> int:
        m = self._m
        async with m.lock:
            chosen = [t for t in m.tasks.values() if t.status is Status.QUEUED and which(t)]
            code = FatalServerError.code
            return sum(m.end_with_refund(t, t, status, code, msg) for t in chosen)
