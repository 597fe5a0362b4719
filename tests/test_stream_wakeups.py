"""Event streams are woken by commits, not by a timer: PostgreSQL's LISTEN/NOTIFY (across
replicas, and again after the listening connection is killed), SQLite's in-process signal
and its per-process read of the log's tail (events another process committed). Every stream
here has its fallbacks set to minutes, so an event that arrives in seconds came by wake-up;
and resuming with Last-Event-ID still yields every event exactly once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from apptools import running_api, settings_for
from easel.config import Settings
from processes import easel_process, write_config
from test_streams import EVENTS, live, sse_blocks

SLOW = {"stream_check_s": 300.0, "stream_poll_s": 300.0}  # no fallback within a test
BOUND_S = 3.0  # an event reaches its stream within this (the fallbacks would take 300 s)


async def next_event(blocks: AsyncIterator[dict[str, str]], timeout_s: float) -> dict[str, str]:
    async with asyncio.timeout(timeout_s):
        return await anext(blocks)


async def submit(client: httpx.AsyncClient, prompt: str) -> str:
    body = {"type": "generate_image", "prompt": prompt}
    response = await client.post("/v2/openapi/task", json=body)
    assert response.status_code == 200, response.text
    task_id: str = response.json()["data"]["task_id"]
    return task_id


def authorized(base: str, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30)


async def test_a_commit_wakes_the_stream_at_once(database_url: str) -> None:
    settings = settings_for(database_url, **SLOW)
    async with (
        live(settings) as (base, key, _),
        authorized(base, key) as client,
        client.stream("GET", EVENTS) as stream,
    ):
        blocks = sse_blocks(stream)
        for i in range(3):
            started = time.monotonic()
            task_id = await submit(client, f"wake {i}")
            event = await next_event(blocks, BOUND_S)
            assert event["event"] == "update" and task_id in event["data"]
            assert time.monotonic() - started < BOUND_S


@pytest.fixture
async def postgres_url(postgres_database: str) -> str:
    from conftest import reset_schema

    await reset_schema(postgres_database)
    return postgres_database


async def test_postgres_notifies_the_streams_of_another_replica(postgres_url: str) -> None:
    settings = settings_for(postgres_url, **SLOW)
    async with (
        live(settings) as (base, key, _),
        authorized(base, key) as client,
        client.stream("GET", EVENTS) as stream,
        # Another API replica (its own engine, no worker) takes the submission.
        running_api(settings, run_worker=False) as replica,
    ):
        blocks = sse_blocks(stream)
        await asyncio.sleep(0.3)  # the stream has read the log once and waits
        replica.client.headers["Authorization"] = f"Bearer {key}"
        latencies = []
        for i in range(5):
            started = time.monotonic()
            task_id = await submit(replica.client, f"elsewhere {i}")
            event = await next_event(blocks, BOUND_S)
            latencies.append(time.monotonic() - started)
            assert task_id in event["data"]
        assert max(latencies) < BOUND_S, latencies


async def _admin(url: str) -> asyncpg.Connection:
    plain = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    return await asyncpg.connect(plain)


async def listeners(admin: asyncpg.Connection, at_least: int, timeout_s: float) -> set[int]:
    """The backends listening for events, once there are ``at_least`` of them."""
    async with asyncio.timeout(timeout_s):
        while len(pids := {r["pid"] for r in await admin.fetch(LISTENERS)}) < at_least:  # noqa: ASYNC110 - the database's state
            await asyncio.sleep(0.05)
    return pids


LISTENERS = (
    "SELECT pid FROM pg_stat_activity "
    "WHERE datname = current_database() AND query LIKE 'LISTEN %easel_events%'"
)


async def test_postgres_streams_catch_up_after_the_listener_is_killed(postgres_url: str) -> None:
    settings = settings_for(postgres_url, **SLOW)
    admin = await _admin(postgres_url)
    try:
        async with (
            live(settings) as (base, key, _),
            authorized(base, key) as client,
            client.stream("GET", EVENTS) as stream,
        ):
            before = await listeners(admin, 1, BOUND_S)
            assert len(before) == 1  # one listening connection for the process's streams
            await _kill_and_catch_up(admin, settings, key, sse_blocks(stream), before.pop())
    finally:
        await admin.close()


async def _kill_and_catch_up(
    admin: asyncpg.Connection,
    settings: Settings,
    key: str,
    blocks: AsyncIterator[dict[str, str]],
    pid: int,
) -> None:
    async with running_api(settings, run_worker=False) as replica:
        replica.client.headers["Authorization"] = f"Bearer {key}"
        listening = await listeners(admin, 2, BOUND_S)  # the replica listens too
        killed = await admin.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = $1",
            pid,
        )
        assert killed[0][0] is True
        # Committed at once: before the server has noticed, or while it is listening
        # again, or after; the stream gets it either way, exactly once.
        ids = [await submit(replica.client, f"while deaf {i}") for i in range(3)]
        got = [await next_event(blocks, BOUND_S + 5) for _ in ids]
        assert [next(t for t in ids if t in e["data"]) for e in got] == ids
        numbers = [int(e["id"]) for e in got]
        assert numbers == list(range(numbers[0], numbers[0] + 3))
        after = await listeners(admin, 2, BOUND_S + 5)
        assert pid not in after and len(after - listening) == 1  # listening anew
        # Listening again: a new event comes by NOTIFY, not by a fallback.
        started = time.monotonic()
        task_id = await submit(replica.client, "heard again")
        assert task_id in (await next_event(blocks, BOUND_S))["data"]
        assert time.monotonic() - started < BOUND_S


async def read_ids(
    client: httpx.AsyncClient, last: int, count: int, *, during: Any = None
) -> list[int]:
    """The ids of the next ``count`` events after ``last`` on a new /events stream; ``during``
    (a coroutine) runs once the stream is open."""
    ids: list[int] = []
    headers = {"Last-Event-ID": str(last)}
    async with asyncio.timeout(30), client.stream("GET", EVENTS, headers=headers) as stream:
        assert stream.status_code == 200
        job = asyncio.ensure_future(during) if during is not None else None
        async for block in sse_blocks(stream):
            ids.append(int(block["id"]))
            if len(ids) >= count:
                break
        if job is not None:
            await job
    return ids


async def test_last_event_id_resumes_with_no_gap_and_no_duplicate(database_url: str) -> None:
    settings: Settings = settings_for(database_url, max_unfinished_tasks=50, **SLOW)
    async with live(settings) as (base, key, store), authorized(base, key) as client:

        async def submit_some(n: int, tag: str) -> None:
            for i in range(n):
                await submit(client, f"{tag} {i}")

        # Events committed before the stream opens (the replay) and while it is open (live).
        await submit_some(4, "before")
        first = await read_ids(client, 0, 7, during=submit_some(3, "during"))
        # Disconnected: more are committed, then the client resumes after the last it saw,
        # and more come while it replays.
        await submit_some(3, "between")
        second = await read_ids(client, first[-1], 6, during=submit_some(3, "after"))
        seen = first + second
        assert seen == list(range(1, 14)), seen
        caller = await store.accounts.authenticate(key)
        logged = await store.events.after(caller.account_id, caller.key_id, 0)
        assert [e.seq for e in logged] == seen


async def test_sqlite_streams_see_events_another_process_committed(tmp_path: Path) -> None:
    config = write_config(tmp_path, delay_s=0.3)
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'easel.db'}"
    settings = settings_for(
        database_url,
        storage_url=f"file://{tmp_path / 'objects'}",
        stream_check_s=300.0,
        stream_poll_s=0.25,
    )
    async with live(settings) as (base, key, _), authorized(base, key) as client:
        task_id = await submit(client, "run elsewhere")
        # The API runs no worker: an `easel worker` process runs the task, so every event
        # after "queued" is committed by another process.
        with easel_process("worker", "--config", str(config), log=tmp_path / "worker.log"):
            path = f"/v2/openapi/task/{task_id}/events"
            async with asyncio.timeout(60), client.stream("GET", path) as stream:
                # The worker starts in seconds; the stream's key check is 300 s away.
                kinds = [block["event"] async for block in sse_blocks(stream)]
        assert kinds[0] == "update" and kinds[-1] == "finalized"
