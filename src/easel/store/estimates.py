"""The estimates a task object shows (``running_left_time``, ``queuing_num``) and
``Retry-After`` rests on: measured run times per model, backend and kind of request, the
queue position, the live worker slots and the swap-in a task's model waits for (what the
live workers advertise: see :func:`easel.domain.eta.swap_wait`). Means and live workers
are remembered for a moment; a position is always read afresh (exact up to
``POSITION_CAP``)."""

from __future__ import annotations

import time

from sqlalchemy import bindparam, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from easel.domain.eta import LiveWorker, MeanKey, Measured, advertised, mean_keys, swap_wait
from easel.domain.tasks import POSITION_CAP, AttemptOutcome, Status, Task
from easel.store.queue_order import AHEAD
from easel.store.records import Attempt, Outlook
from easel.store.tables import attempts, tasks, workers
from easel.store.task_rows import attempts_of

_Recalled = tuple[float | None] | None  # a remembered value (which may be None), or nothing


class Estimates:
    """Run-time means, the backend that ran each model last and the live workers' adverts,
    remembered for ``ttl_s``.

    They feed the estimates every poll shows (``running_left_time``, ``Retry-After``), are
    averages over many tasks, and cost a statement each; polling clients ask for them many
    times a second. ``queuing_num`` is never remembered.
    """

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._means: dict[MeanKey, tuple[float, float | None]] = {}
        self._latest: dict[str, tuple[float, str | None]] = {}
        self._workers: tuple[float, list[LiveWorker]] | None = None

    def _recall_mean(self, key: MeanKey) -> _Recalled:
        """The remembered mean, when it is fresh: ``(mean,)``; else None."""
        hit = self._means.get(key)
        return (hit[1],) if hit is not None and hit[0] > time.monotonic() else None

    async def _mean(self, conn: AsyncConnection, key: MeanKey) -> float | None:
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
        for key, basis in mean_keys(model_version, backend, edits):
            recalled = self._recall_mean(key)
            if recalled is None:
                return None
            if recalled[0] is not None:
                return (Measured(recalled[0], basis),)
        return (None,)

    async def measured(
        self, conn: AsyncConnection, model_version: str, backend: str | None, edits: bool
    ) -> Measured | None:
        """The best-keyed mean there is data for (see ``mean_keys``), or None."""
        for key, basis in mean_keys(model_version, backend, edits):
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

    async def live_workers(self, conn: AsyncConnection) -> list[LiveWorker]:
        """The workers with a recent heartbeat, as they advertised themselves."""
        now = time.monotonic()
        if self._workers is not None and self._workers[0] > now:
            return self._workers[1]
        workers = await _live_workers(conn)
        self._workers = (now + self.ttl_s, workers)
        return workers

    def advertised(self, worker: LiveWorker) -> None:
        """A worker registered through this process: when its advert is not what is
        remembered (a new worker, a model swapped in or out), forget the live workers, so the
        next poll counts it (other processes see it within ``ttl_s``)."""
        if self._workers is not None and worker not in self._workers[1]:
            self._workers = None


async def outlook(
    conn: AsyncConnection,
    task: Task,
    estimates: Estimates,
    attempts_read: list[Attempt] | None = None,
) -> Outlook:
    """The rest of the task object; ``attempts_read`` when the caller read them already."""
    measured = position = slots = swap_s = None
    if not task.is_final:
        # A running task's backend is known; a queued one will likely run where the
        # model's latest task ran.
        backend = task.backend if task.status is Status.RUNNING else None
        backend = backend or await estimates.latest_backend(conn, task.model_version)
        measured = await estimates.measured(conn, task.model_version, backend, bool(task.refs))
    if task.status is Status.QUEUED:
        position = await position_of(conn, task)
        workers = await estimates.live_workers(conn)
        slots = sum(w.slots for w in workers)
        swap_s = swap_wait(workers, task.model_version)
    elif task.status is Status.RUNNING and task.progress == 0:  # not painting yet
        workers = await estimates.live_workers(conn)
        swap_s = swap_wait(workers, task.model_version, task.worker_id)
    if attempts_read is None:
        attempts_read = await attempts_of(conn, task.id)
    return Outlook(measured, position, slots, attempts_read, swap_s)


async def position_of(conn: AsyncConnection, task: Task) -> int:
    """How many queued tasks go before ``task`` in the claim order, at most
    ``POSITION_CAP`` (see :mod:`easel.store.queue_order`)."""
    params = {"key_id": task.api_key_id, "created_at": task.created_at, "task_id": task.id}
    return min(int(await conn.scalar(AHEAD, params) or 0), POSITION_CAP)


# Successful runs of a model, newest first: the successful attempt of each successful task
# (a run on one backend, without the time a failed attempt before it took).
_SUCCESSFUL_RUNS = (
    select(tasks.c.id)
    .select_from(tasks.join(attempts, attempts.c.task_id == tasks.c.id))
    .where(
        tasks.c.model_version == bindparam("model_version"),
        tasks.c.status == Status.SUCCESS.value,
        attempts.c.outcome == AttemptOutcome.SUCCESS.value,
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


async def _live_workers(conn: AsyncConnection, within_s: float = 30.0) -> list[LiveWorker]:
    """One row per live worker: a short read, whatever the queue's depth."""
    rows = await conn.execute(
        select(
            workers.c.id, workers.c.models, workers.c.slots, workers.c.resident, workers.c.load_s
        ).where(workers.c.heartbeat_at >= time.time() - within_s)
    )
    return [advertised(*row) for row in rows]
