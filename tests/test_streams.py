"""Event streams (SSE and WebSocket watch) as a key's resource: bounded per key, their
lifetime counted against the key's rate, closed when the key is revoked. A real server
(uvicorn on a loopback port) and real clients; the defaults of the settings throughout."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import websockets
from sqlalchemy import event
from websockets.exceptions import ConnectionClosed

from apptools import settings_for
from easel.api.app import create_app
from easel.config import Settings
from easel.services.ratelimit import RateLimiter
from easel.services.streams import Stream, StreamEnded, Streams
from easel.store import Store, open_store
from loopback import serve_app

EVENTS = "/v2/openapi/events"
WATCH_ALL = "/v2/openapi/task/watch/all"
CHECK_S = Settings().stream_check_s
MARGIN_S = 10.0  # catches "never", not "slow"


@contextlib.asynccontextmanager
async def live(settings: Settings) -> AsyncIterator[tuple[str, str, Store]]:
    """The app on a real port, a key, and a store of the test's own (as ``easel keys``
    would use from another process)."""
    with serve_app(create_app(settings, run_worker=False), lifespan="on", ws="auto") as base:
        store = await open_store(settings.database_url)
        try:
            yield base, await store.accounts.create_key("streams", 100), store
        finally:
            await store.close()


async def sse_blocks(response: httpx.Response) -> AsyncIterator[dict[str, str]]:
    """The fields of each SSE block (comments skipped) until the stream ends."""
    buffer = ""
    async for chunk in response.aiter_text():
        buffer += chunk
        while "\n\n" in buffer:
            block, buffer = buffer.split("\n\n", 1)
            fields = dict(
                line.split(": ", 1) for line in block.splitlines() if not line.startswith(":")
            )
            if fields:
                yield fields


def ws_url(base: str, path: str) -> str:
    return base.replace("http://", "ws://") + path


async def test_streams_per_key_are_bounded_and_refused_with_1007(tmp_path: Any) -> None:
    settings = settings_for(f"sqlite+aiosqlite:///{tmp_path / 's.db'}")
    bound = settings.max_streams_per_key
    async with (
        live(settings) as (base, key, _),
        httpx.AsyncClient(
            base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30
        ) as client,
        contextlib.AsyncExitStack() as streams,
    ):
        for _ in range(bound - 1):
            opened = await streams.enter_async_context(client.stream("GET", EVENTS))
            assert opened.status_code == 200
        watcher = await streams.enter_async_context(
            websockets.connect(
                ws_url(base, WATCH_ALL), additional_headers={"Authorization": f"Bearer {key}"}
            )
        )
        # One over the bound: SSE answers 429 / 1007, a watch is closed with 1008 "1007: …".
        async with client.stream("GET", EVENTS) as refused:
            assert refused.status_code == 429
            body = json.loads(await refused.aread())
        assert body["code"] == 1007
        assert "stream" in body["message"] and body["suggestion"]
        assert int(refused.headers["Retry-After"]) >= 1
        with pytest.raises(ConnectionClosed) as closed:
            async with websockets.connect(
                ws_url(base, WATCH_ALL), additional_headers={"Authorization": f"Bearer {key}"}
            ) as extra:
                await extra.recv()
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason[:4]) == (1008, "1007")
        # Ordinary requests are not streams: they go on.
        assert (await client.get("/v2/openapi/user/balance")).status_code == 200
        # A stream that ends frees its place.
        await watcher.close()
        async with asyncio.timeout(MARGIN_S):
            while True:
                async with client.stream("GET", EVENTS) as again:
                    if again.status_code == 200:
                        break
                await asyncio.sleep(0.1)


async def test_an_open_stream_is_charged_against_the_keys_rate(tmp_path: Any) -> None:
    # A bucket of 2 that hardly refills: the stream's opening takes one token, its lifetime
    # (one request per stream_check_s) the other, and then the key is over its rate.
    settings = settings_for(
        f"sqlite+aiosqlite:///{tmp_path / 'r.db'}", rate_limit_per_s=0.001, rate_limit_burst=2
    )
    async with (
        live(settings) as (base, key, _),
        httpx.AsyncClient(
            base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30
        ) as client,
        client.stream("GET", EVENTS) as stream,
    ):
        assert stream.status_code == 200
        await asyncio.sleep(CHECK_S + 1.5)
        limited = await client.get("/v2/openapi/user/balance")
        assert limited.status_code == 429
        assert limited.json()["code"] == 1007


async def test_revoking_a_key_closes_its_streams(database_url: str) -> None:
    settings = settings_for(database_url)
    async with (
        live(settings) as (base, key, store),
        httpx.AsyncClient(
            base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30
        ) as client,
        client.stream("GET", EVENTS) as stream,
        websockets.connect(
            ws_url(base, WATCH_ALL), additional_headers={"Authorization": f"Bearer {key}"}
        ) as watcher,
    ):
        assert stream.status_code == 200
        await asyncio.sleep(0.3)  # both follow the event log now
        await store.accounts.revoke(key)  # as `easel keys revoke` does, from elsewhere
        async with asyncio.timeout(CHECK_S + MARGIN_S):
            blocks = [block async for block in sse_blocks(stream)]
            with pytest.raises(ConnectionClosed) as closed:
                await watcher.recv()
        assert blocks[-1]["event"] == "error"
        assert json.loads(blocks[-1]["data"])["code"] == 1002
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason[:4]) == (1008, "1002")


async def test_the_streams_of_a_process_check_their_keys_in_one_query_per_tick(
    tmp_path: Any,
) -> None:
    """Forty streams of eight keys re-check their keys together: one query of the keys per
    ``stream_check_s``, not one per stream; the revoked key's streams end, the others stay."""
    store = await open_store(f"sqlite+aiosqlite:///{tmp_path / 'easel.db'}")
    queries: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "FROM api_keys" in statement:
            queries.append(statement)

    event.listen(store.engine.sync_engine, "before_cursor_execute", count)
    try:
        keys = [await store.accounts.create_key(f"k{n}", 0) for n in range(8)]
        callers = [await store.accounts.authenticate(key) for key in keys]
        streams = Streams(store.accounts, RateLimiter(0, 0), per_key=5, check_s=0.3)
        opened = [streams.open(caller) for caller in callers for _ in range(5)]
        queries.clear()  # authenticating the keys read them too

        async def follow(stream: Stream) -> str:
            try:
                while True:
                    await stream.pause()
            except StreamEnded as ended:
                return ended.error.message if ended.error else "ended"

        followers = [asyncio.create_task(follow(stream)) for stream in opened]
        await asyncio.sleep(1.0)  # two or three ticks
        ticks = len(queries)
        assert 1 <= ticks <= 4, queries
        await store.accounts.revoke(keys[0])
        await asyncio.sleep(0.7)
        revoked = [task for task in followers[:5] if task.done()]
        assert len(revoked) == 5 and all("revoked" in task.result() for task in revoked)
        assert not any(task.done() for task in followers[5:])
        streams.end_all()
        assert set(await asyncio.gather(*followers[5:])) == {"ended"}
    finally:
        await store.close()
