"""What ``/metrics`` reports, read from the database at scrape time.

The database is the one place that knows every replica's and every worker's work, so queue
depth, outcomes, run and wait times and credits come from it; the time histograms are
cumulative over all finished tasks (monotonic, as Prometheus expects).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, and_, case, func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from easel.domain.accounts import LedgerKind
from easel.domain.metrics import TIME_BUCKETS_S, Histogram, Snapshot
from easel.domain.tasks import Status
from easel.store.db import connection, read_only
from easel.store.tables import accounts, ledger, tasks


async def _histograms(
    conn: AsyncConnection,
    duration: ColumnElement[float],
    where: ColumnElement[bool],
    *keys: ColumnElement[Any],
) -> dict[tuple[str, ...], Histogram]:
    """Cumulative bucket counts of ``duration`` per ``keys`` over the rows ``where``."""
    columns = [func.sum(case((duration <= bound, 1), else_=0)) for bound in TIME_BUCKETS_S]
    query = (
        select(*keys, func.count(), func.coalesce(func.sum(duration), 0.0), *columns)
        .where(where)
        .group_by(*keys)
    )
    out = {}
    for row in await conn.execute(query):
        n = len(keys)
        key = tuple(str(part) for part in row[:n])
        counts = [int(c or 0) for c in row[n + 2 :]]
        out[key] = Histogram(
            list(zip(TIME_BUCKETS_S, counts, strict=True)), int(row[n]), float(row[n + 1])
        )
    return out


class MetricsStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._reads = read_only(engine)

    async def snapshot(self, now: float) -> Snapshot:
        snap = Snapshot()
        async with connection(self._reads) as conn:
            counts = await conn.execute(
                select(tasks.c.model_version, tasks.c.status, func.count()).group_by(
                    tasks.c.model_version, tasks.c.status
                )
            )
            snap.tasks = {(m, s): int(n) for m, s, n in counts}
            oldest = await conn.scalar(
                select(func.min(tasks.c.created_at)).where(tasks.c.status == Status.QUEUED.value)
            )
            snap.oldest_queued_s = 0.0 if oldest is None else max(0.0, now - float(oldest))
            run = tasks.c.finished_at - tasks.c.started_at
            finished = and_(tasks.c.status == Status.SUCCESS.value, tasks.c.backend.is_not(None))
            runs = await _histograms(conn, run, finished, tasks.c.model_version, tasks.c.backend)
            snap.run_seconds = {(k[0], k[1]): h for k, h in runs.items()}
            wait = tasks.c.started_at - tasks.c.created_at
            waits = await _histograms(
                conn, wait, tasks.c.started_at.is_not(None), tasks.c.model_version
            )
            snap.wait_seconds = {k[0]: h for k, h in waits.items()}
            snap.credits_held = int(await conn.scalar(select(func.sum(accounts.c.frozen))) or 0)
            moves = await conn.execute(
                select(
                    ledger.c.kind,
                    func.sum(ledger.c.balance_delta),
                    func.sum(func.abs(ledger.c.frozen_delta)),
                ).group_by(ledger.c.kind)
            )
            # grant moves the balance; hold, settle and refund each move the held credits.
            for kind, balance, frozen in moves:
                snap.credits[kind] = int((balance if kind == LedgerKind.GRANT else frozen) or 0)
        return snap
