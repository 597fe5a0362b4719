"""Run many tasks through a deployment as patient clients do, then audit the database.

Shared by the chaos tier (``test_chaos.py``: processes on one host) and the hosts tier
(``test_many_hosts.py``: hosts in network namespaces). The audits read PostgreSQL directly:
what each task's ledger rows and events say, and whether every account balances.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx
from sqlalchemy.engine import make_url

FINAL = ("success", "failed", "banned", "expired", "cancelled")


async def call(client: httpx.AsyncClient, method: str, url: str, **kw: Any) -> httpx.Response:
    """Like a patient client: retry while a server or the database is restarting."""
    for _ in range(600):
        try:
            response = await client.request(method, url, **kw)
        except httpx.TransportError:
            await asyncio.sleep(0.2)
            continue
        if response.status_code < 500:
            return response
        await asyncio.sleep(0.2)
    raise AssertionError(f"{method} {url} kept failing")


async def run_key(apis: list[str], key: str, done: list[str], count: int) -> list[str]:
    """Submit ``count`` tasks through ``apis`` in turn (honouring 429) and wait for them to
    end; each one's id is appended to ``done`` as it is seen final."""
    ids: list[str] = []
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(headers=headers, timeout=30) as client:
        pending: set[str] = set()
        for n in range(count):
            base = apis[n % len(apis)]
            idem = str(uuid.uuid4())  # safe to resend after a connection error
            while True:
                response = await call(
                    client,
                    "POST",
                    f"{base}/v2/openapi/task",
                    json={"type": "generate_image", "prompt": f"{key[-6:]} {n}"},
                    headers={"Idempotency-Key": idem},
                )
                if response.status_code == 429:
                    await _drain(client, base, pending, done, until=9)
                    continue
                assert response.status_code == 200, response.text
                break
            task_id = response.json()["data"]["task_id"]
            ids.append(task_id)
            pending.add(task_id)
        await _drain(client, apis[0], pending, done, until=0)
    return ids


async def _drain(
    client: httpx.AsyncClient, base: str, pending: set[str], done: list[str], until: int
) -> None:
    while len(pending) > until:
        for task_id in list(pending):
            task = (await call(client, "GET", f"{base}/v2/openapi/task/{task_id}")).json()["data"]
            if task["status"] not in ("queued", "running"):
                pending.discard(task_id)
                done.append(task_id)
        await asyncio.sleep(0.2)


@asynccontextmanager
async def connect(url: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain asyncpg connection to the database of Easel's SQLAlchemy ``url``."""
    plain = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    conn = await asyncpg.connect(plain)
    try:
        yield conn
    finally:
        await conn.close()


async def ledger_report(url: str) -> list[Any]:
    """Per account: id, balance, frozen, credits its tasks consumed, and the ledger's sums of
    balance and frozen deltas."""
    async with connect(url) as conn:
        return list(
            await conn.fetch("""
            SELECT a.id, a.balance, a.frozen,
                   (SELECT coalesce(sum(consumed_credit), 0)
                      FROM tasks t WHERE t.account_id = a.id),
                   (SELECT coalesce(sum(balance_delta), 0)
                      FROM ledger l WHERE l.account_id = a.id),
                   (SELECT coalesce(sum(frozen_delta), 0)
                      FROM ledger l WHERE l.account_id = a.id)
            FROM accounts a""")
        )


async def figures(url: str) -> dict[str, Any]:
    """What the run cost: leases reclaimed, tasks run again, the longest queue wait, credits."""
    async with connect(url) as conn:
        row = await conn.fetchrow("""
            SELECT count(*) AS tasks,
                   sum(t.attempts - 1) AS reclaimed_leases,
                   count(*) FILTER (WHERE t.attempts > 1) AS tasks_run_again,
                   max((SELECT min(a.started_at) FROM attempts a WHERE a.task_id = t.id)
                       - t.created_at) AS max_queue_wait_s,
                   sum(t.consumed_credit) AS credits_consumed
            FROM tasks t""")
        balances = await conn.fetchrow(
            "SELECT sum(balance) AS balance, sum(frozen) AS frozen FROM accounts"
        )
    return {**dict(row), **dict(balances)}


async def task_report(url: str) -> list[Any]:
    """Per task: id, status, output key, and its ledger rows: holds, settles, refunds; and the
    statuses of its final events, in order (exactly one, the task's own, when all is well)."""
    async with connect(url) as conn:
        return list(
            await conn.fetch(
                """
            SELECT t.id, t.status, t.output_key,
                   (SELECT count(*) FROM ledger l WHERE l.task_id = t.id AND l.kind = 'hold'),
                   (SELECT count(*) FROM ledger l WHERE l.task_id = t.id AND l.kind = 'settle'),
                   (SELECT count(*) FROM ledger l WHERE l.task_id = t.id AND l.kind = 'refund'),
                   array(SELECT e.status FROM events e
                          WHERE e.task_id = t.id AND e.status = any($1::text[])
                          ORDER BY e.seq)
            FROM tasks t""",
                list(FINAL),
            )
        )
