"""The queue's order at any depth (issue 18): the claim takes the first task of the claim
order (the key with the fewest running tasks, then the oldest task, then the id) among the
worker's models, ``queuing_num`` counts the tasks before a task in that order up to
``POSITION_CAP``, and concurrent claimers on PostgreSQL skip each other's tasks without
ever coming back empty while a task no one is taking waits.

The queues are written as rows (as a submit writes them, credits aside), the quick way to
a deep or odd-shaped queue; every read and claim goes through the store."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from typing import Any

import pytest
from sqlalchemy import select, text

from easel.domain.accounts import Caller
from easel.domain.tasks import POSITION_CAP
from easel.store import SqlStore, changes, open_store
from easel.store.tables import tasks

MODELS = ["flux.1_kontext_pro", "gpt-image-1", "imagen-4"]


async def _callers(store: SqlStore, count: int) -> list[Caller]:
    keys = [await store.accounts.create_key(f"k{n}", 10**6) for n in range(count)]
    return [await store.accounts.authenticate(key) for key in keys]


def _row(caller: Caller, model: str, created_at: float, status: str = "queued") -> dict[str, Any]:
    running = status == "running"
    return {
        "id": str(uuid.uuid4()),
        "account_id": caller.account_id,
        "api_key_id": caller.key_id,
        "type": "generate_image",
        "status": status,
        "model_version": model,
        "input": {"prompt": "x"},
        "prompt": "x",
        "refs": [],
        "price": 5,
        "consumed_credit": 0,
        "progress": 0,
        "attempts": 1 if running else 0,
        "worker_id": "elsewhere" if running else None,
        "lease_until": time.time() + 3600 if running else None,
        "started_at": created_at if running else None,
        "created_at": created_at,
    }


async def _write(store: SqlStore, rows: list[dict[str, Any]]) -> None:
    async with store.engine.begin() as conn:
        for at in range(0, len(rows), 2000):
            await conn.execute(tasks.insert(), rows[at : at + 2000])


async def _rows(store: SqlStore) -> list[dict[str, Any]]:
    async with store.engine.connect() as conn:
        return [dict(row._mapping) for row in await conn.execute(select(tasks))]


def _claim_order(rows: list[dict[str, Any]], models: list[str] | None = None) -> list[str]:
    """The queued tasks' ids in the documented claim order, worked out in Python."""
    running: dict[str, int] = {}
    for row in rows:
        if row["status"] == "running":
            running[row["api_key_id"]] = running.get(row["api_key_id"], 0) + 1
    queued = [
        row
        for row in rows
        if row["status"] == "queued" and (models is None or row["model_version"] in models)
    ]
    queued.sort(key=lambda r: (running.get(r["api_key_id"], 0), r["created_at"], r["id"]))
    return [row["id"] for row in queued]


def _random_queue(seed: int, callers: list[Caller]) -> list[dict[str, Any]]:
    """Tasks of every key and model, some running, some final, with ties in time."""
    rng = random.Random(seed)
    start = time.time() - 3600
    rows = []
    for _ in range(80):
        status = rng.choice(["queued"] * 6 + ["running"] * 2 + ["success"])
        created = start + rng.randrange(30)  # ties: several tasks share a second
        rows.append(_row(rng.choice(callers), rng.choice(MODELS), created, status))
    return rows


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_positions_and_claims_follow_the_claim_order(database_url: str, seed: int) -> None:
    store = await open_store(database_url)
    try:
        await _write(store, _random_queue(seed, await _callers(store, 5)))
        rows = await _rows(store)
        order = _claim_order(rows)
        for row in rows:
            if row["status"] == "queued":
                task = await store.tasks.get(row["id"])
                assert task is not None
                assert await store.tasks.position(task) == order.index(row["id"])
        for models in ([MODELS[0]], MODELS[1:], MODELS):  # the oldest, walked pair by pair
            queued = [r for r in rows if r["status"] == "queued" and r["model_version"] in models]
            oldest = min((r["created_at"] for r in queued), default=None)
            assert await store.queue.oldest_queued(models) == oldest
        # A worker of two of the models takes their tasks in the claim order, which its own
        # claims change (a claimed task's key has one more running), then nothing more.
        models = MODELS[:2]
        while expected := _claim_order(await _rows(store), models):
            claimed = await store.queue.claim("w", models, 60)
            assert claimed is not None and claimed.id == expected[0]
            assert claimed.model_version in models
        assert await store.queue.claim("w", models, 60) is None
        left = [row for row in await _rows(store) if row["status"] == "queued"]
        assert left and {row["model_version"] for row in left} == {MODELS[2]}
    finally:
        await store.close()


async def test_the_position_counts_up_to_the_cap(database_url: str) -> None:
    """Fewer running tasks go first across keys and models; a task with more than
    ``POSITION_CAP`` ahead shows ``POSITION_CAP``."""
    store = await open_store(database_url)
    try:
        busy, calm, late = await _callers(store, 3)
        start = time.time() - 3600
        rows = [_row(busy, MODELS[0], start, "running")]
        rows += [_row(busy, MODELS[n % 2], start + n) for n in range(POSITION_CAP + 5)]
        rows += [_row(calm, MODELS[2], start + 10**5 + n) for n in range(3)]
        rows += [_row(late, MODELS[1], start + 10**6, "running")]
        rows += [_row(late, MODELS[1], start + 10**6 + 1)]
        await _write(store, rows)
        order = _claim_order(await _rows(store))
        assert order[:3] == [row["id"] for row in rows[-5:-2]]  # calm has none running
        for ahead in (0, 2, 3, 500, POSITION_CAP - 1, POSITION_CAP, len(order) - 1):
            task = await store.tasks.get(order[ahead])
            assert task is not None
            assert await store.tasks.position(task) == min(ahead, POSITION_CAP)
    finally:
        await store.close()


async def test_a_flood_from_one_key_does_not_delay_another_keys_task(database_url: str) -> None:
    store = await open_store(database_url)
    try:
        flood, single = await _callers(store, 2)
        start = time.time() - 3600
        await _write(store, [_row(flood, MODELS[0], start + n) for n in range(3000)])
        first = await store.queue.claim("w", [MODELS[0]], 60)
        assert first is not None and first.api_key_id == flood.key_id
        later = _row(single, MODELS[0], time.time())
        await _write(store, [later])
        task = await store.tasks.get(later["id"])
        assert task is not None and await store.tasks.position(task) == 0
        claimed = await store.queue.claim("w", [MODELS[0]], 60)
        assert claimed is not None and claimed.id == later["id"]
    finally:
        await store.close()


async def test_concurrent_claimers_of_many_keys_take_every_task_once(database_url: str) -> None:
    store = await open_store(database_url)
    try:
        callers = await _callers(store, 10)
        start = time.time() - 3600
        rows = [_row(callers[n % 10], MODELS[n % 3], start + n) for n in range(60)]
        await _write(store, rows)
        claims = await asyncio.gather(*(store.queue.claim(f"w{n}", MODELS, 60) for n in range(80)))
        ids = [task.id for task in claims if task is not None]
        assert sorted(ids) == sorted(row["id"] for row in rows)
    finally:
        await store.close()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_a_claim_skips_tasks_other_claimers_hold_and_finds_the_one_left(
    database_url: str,
) -> None:
    """Other transactions hold (as claimers in flight do) every task of the only key but
    the newest, more than a claim first looks at: the claim still takes the newest; with
    that one held too it comes back empty at once rather than wait."""
    store = await open_store(database_url)
    try:
        (caller,) = await _callers(store, 1)
        start = time.time() - 3600
        rows = [_row(caller, MODELS[0], start + n) for n in range(300)]
        await _write(store, rows)
        ids = [row["id"] for row in rows]
        async with store.engine.connect() as holder, store.engine.connect() as other:
            await holder.execute(
                select(tasks.c.id).where(tasks.c.id.in_(ids[:-1])).with_for_update()
            )
            claimed = await store.queue.claim("w", [MODELS[0]], 60)
            assert claimed is not None and claimed.id == ids[-1]
            assert await store.queue.release(claimed)
            await other.execute(select(tasks.c.id).where(tasks.c.id == ids[-1]).with_for_update())
            claim = store.queue.claim("w", [MODELS[0]], 60)
            assert await asyncio.wait_for(claim, 10) is None
            await other.rollback()
            claimed = await store.queue.claim("w", [MODELS[0]], 60)
            assert claimed is not None and claimed.id == ids[-1]
            await holder.rollback()
    finally:
        await store.close()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_a_claim_looks_past_the_first_keys_when_others_hold_their_tasks(
    database_url: str,
) -> None:
    store = await open_store(database_url)
    try:
        callers = await _callers(store, 12)
        start = time.time() - 3600
        rows = [_row(caller, MODELS[0], start + n) for n, caller in enumerate(callers)]
        await _write(store, rows)
        ids = [row["id"] for row in rows]
        async with store.engine.connect() as holder:
            await holder.execute(
                select(tasks.c.id).where(tasks.c.id.in_(ids[:-1])).with_for_update()
            )
            claimed = await store.queue.claim("w", [MODELS[0]], 60)
            assert claimed is not None and claimed.id == ids[-1]
            await holder.rollback()
    finally:
        await store.close()


async def _buffers_read(conn: Any, statement: Any, params: dict[str, Any]) -> int:
    """The shared buffers PostgreSQL touched running ``statement`` (EXPLAIN ANALYZE, which
    runs it: inside the caller's transaction)."""
    expanded = statement.compile(dialect=conn.dialect).construct_expanded_state(params)
    assert expanded.positiontup is not None
    positional = tuple(expanded.parameters[name] for name in expanded.positiontup)
    explain = f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {expanded.statement}"
    (plan,) = (await conn.exec_driver_sql(explain, positional)).scalar_one()
    return int(plan["Plan"]["Shared Hit Blocks"]) + int(plan["Plan"]["Shared Read Blocks"])


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_a_claim_stays_cheap_when_statistics_predate_a_surge(database_url: str) -> None:
    """The planner's statistics were gathered while the queue was empty (a new deployment,
    or any table whose queue filled up faster than autovacuum analyses it), then one key
    queues 2,000 tasks: a claim still reads a few buffers (155 here), not the queue (6,188
    here before; 690,000 at 806 queued in the one-key load benchmark, whose statistics said
    one task was queued: the queue read once for each queued task)."""
    store = await open_store(database_url)
    try:
        (caller,) = await _callers(store, 1)
        async with store.engine.connect() as conn:
            await conn.execute(text("ANALYZE tasks"))
            await conn.commit()
        start = time.time() - 3600
        rows = [_row(caller, MODELS[0], start + n) for n in range(2000)]
        await _write(store, rows)
        now = time.time()
        claim = {"models": [MODELS[0]], "claimed_by": "w", "claimed_until": now + 60}
        claim |= {"claimed_at": now, "pairs_considered": 8, "per_pair": 8}
        claim |= {"chain_at": now, "chain_progress": 0}
        async with store.engine.connect() as conn:
            assert await _buffers_read(conn, changes.CLAIM, claim) < 1000
            await conn.rollback()
        claimed = await store.queue.claim("w", [MODELS[0]], 60)
        assert claimed is not None and claimed.id == rows[0]["id"]
    finally:
        await store.close()
