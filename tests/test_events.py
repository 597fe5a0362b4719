"""The event log and what reads it: WebSocket watch and Server-Sent Events."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from apptools import Api, running_api, settings_for
from easel.api.app import create_app
from easel.config import Settings
from easel.runtime import Runtime
from easel.store import open_store
from loopback import serve_app


@pytest.fixture
async def api(database_url: str) -> AsyncIterator[Api]:
    async with running_api(settings_for(database_url, placeholder={"delay_s": 0.3})) as api:
        yield api


async def test_every_change_of_a_task_is_an_event_numbered_without_gaps(api: Api) -> None:
    ids = [(await api.submit(prompt=f"t{i}")).json()["data"]["task_id"] for i in range(3)]
    for task_id in ids:
        await api.wait(task_id)
    caller = await api.runtime.store.accounts.authenticate(api.key)
    events = await api.runtime.store.events.after(caller.account_id, caller.key_id, 0)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    for task_id in ids:
        statuses = [e.status.value for e in events if e.task_id == task_id]
        assert statuses[0] == "queued"
        assert statuses[1] == "running"
        assert statuses[-1] == "success"
        assert set(statuses[2:-1]) <= {"running"}  # progress updates
    assert [e.kind for e in events if e.task_id == ids[0]][-1] == "finalized"


def parse_sse(text: str) -> list[dict[str, Any]]:
    """Split an SSE body into events ({id, event, data}); comments are skipped."""
    out = []
    for block in text.strip().split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in block.splitlines() if not line.startswith(":")
        )
        if fields:
            out.append(
                {
                    "id": int(fields["id"]),
                    "event": fields["event"],
                    "data": json.loads(fields["data"]),
                }
            )
    return out


def without_link_query(event: dict[str, Any]) -> dict[str, Any]:
    output = event["data"].get("output") or {}
    if "generated_image" in output:
        output["generated_image"] = output["generated_image"].split("?")[0]
    return event


async def test_a_task_stream_ends_with_finalized_and_resumes_after_last_event_id(
    api: Api,
) -> None:
    task_id = (await api.submit(prompt="stream me")).json()["data"]["task_id"]
    first = parse_sse((await api.client.get(f"/v2/openapi/task/{task_id}/events")).text)
    assert first[0]["data"]["status"] == "queued"
    assert first[-1]["event"] == "finalized"
    assert first[-1]["data"]["status"] == "success"
    assert first[-1]["data"]["output"]["generated_image"]
    assert all(e["data"]["task_id"] == task_id for e in first)
    resumed = parse_sse(
        (
            await api.client.get(
                f"/v2/openapi/task/{task_id}/events", headers={"Last-Event-ID": str(first[1]["id"])}
            )
        ).text
    )
    # A replayed event is rendered again, so its output link may carry a later expiry.
    assert [without_link_query(e) for e in resumed] == [without_link_query(e) for e in first[2:]]


async def test_the_stream_of_another_keys_task_is_not_found(api: Api) -> None:
    task_id = (await api.submit(prompt="x")).json()["data"]["task_id"]
    other = await api.runtime.store.accounts.create_key("other", 0)
    response = await api.client.get(
        f"/v2/openapi/task/{task_id}/events", headers={"Authorization": f"Bearer {other}"}
    )
    assert response.status_code == 404
    assert response.json()["code"] == 2001


@pytest.fixture
def live_server(tmp_path: Path) -> Iterator[tuple[str, str]]:
    settings = settings_for(
        f"sqlite+aiosqlite:///{tmp_path / 'e.db'}", placeholder={"delay_s": 0.6}
    )
    app = create_app(settings)
    with serve_app(app, lifespan="on", ws="auto") as base:
        key = asyncio.run(_key(settings))
        yield base, key


async def _key(settings: Settings) -> str:
    store = await open_store(settings.database_url)
    try:
        return await store.accounts.create_key("live", 100)
    finally:
        await store.close()


async def read_events(
    client: httpx.AsyncClient, count: int, last: int | None
) -> list[dict[str, Any]]:
    headers = {} if last is None else {"Last-Event-ID": str(last)}
    got: list[dict[str, Any]] = []
    async with client.stream("GET", "/v2/openapi/events", headers=headers) as response:
        buffer = ""
        async for chunk in response.aiter_text():
            buffer += chunk
            while "\n\n" in buffer:
                block, buffer = buffer.split("\n\n", 1)
                got.extend(parse_sse(block + "\n\n"))
                if len(got) >= count:
                    return got
    return got


async def test_the_key_stream_resumes_after_a_disconnect_with_nothing_missed(
    live_server: tuple[str, str],
) -> None:
    base, key = live_server
    async with httpx.AsyncClient(
        base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30
    ) as client:
        reader = asyncio.create_task(read_events(client, 3, last=0))
        ids = [
            (
                await client.post(
                    "/v2/openapi/task", json={"type": "generate_image", "prompt": f"n{i}"}
                )
            ).json()["data"]["task_id"]
            for i in range(3)
        ]
        first = await asyncio.wait_for(reader, 30)
        # Disconnected after 3 events; the tasks run on. Resume after the last one seen.
        await asyncio.sleep(1.5)
        rest = await asyncio.wait_for(read_events(client, 1, last=first[-1]["id"]), 30)
        seen = [e["id"] for e in first]
        assert rest[0]["id"] == seen[-1] + 1
        finals: set[str] = set()
        last = first[-1]["id"]
        while len(finals) < 3:
            batch = await asyncio.wait_for(read_events(client, 1, last=last), 30)
            assert batch[0]["id"] == last + 1
            last = batch[0]["id"]
            if batch[0]["event"] == "finalized":
                finals.add(batch[0]["data"]["task_id"])
        assert finals == set(ids)


def test_websocket_watch_sends_updates_then_finalized_and_closes(tmp_path: Path) -> None:
    settings = settings_for(
        f"sqlite+aiosqlite:///{tmp_path / 'w.db'}", placeholder={"delay_s": 0.5}
    )
    with TestClient(create_app(settings)) as client:
        runtime: Runtime = client.app.state.runtime  # type: ignore[attr-defined]
        assert client.portal is not None
        key = client.portal.call(runtime.store.accounts.create_key, "w", 50)
        auth = {"Authorization": f"Bearer {key}"}
        task_id = client.post(
            "/v2/openapi/task", headers=auth, json={"type": "generate_image", "prompt": "watch"}
        ).json()["data"]["task_id"]
        frames = []
        with client.websocket_connect(f"/v2/openapi/task/watch/{task_id}", headers=auth) as ws:
            while True:
                frame = ws.receive_json()
                frames.append(frame)
                if frame["event"] == "finalized":
                    break
        assert {f["event"] for f in frames[:-1]} == {"update"}
        assert frames[-1]["data"]["status"] == "success"
        assert frames[-1]["data"]["task_id"] == task_id
        with client.websocket_connect(
            "/v2/openapi/task/watch/all/2000-01-01T00:00:00Z", headers=auth
        ) as ws:
            replay = ws.receive_json()
        assert replay == {"event": "finalized", "data": replay["data"]}
        assert replay["data"]["task_id"] == task_id


def test_websocket_watch_refuses_a_bad_key(tmp_path: Path) -> None:
    settings = settings_for(f"sqlite+aiosqlite:///{tmp_path / 'w.db'}")
    with TestClient(create_app(settings)) as client:
        with (
            pytest.raises(WebSocketDisconnect) as caught,
            client.websocket_connect(
                "/v2/openapi/task/watch/all", headers={"Authorization": "Bearer tsk_nope"}
            ),
        ):
            pass
        assert caught.value.code == 1008
        assert caught.value.reason.startswith("1002")


async def test_a_websocket_client_over_a_real_socket_watches_a_task_to_the_end(
    live_server: tuple[str, str],
) -> None:
    base, key = live_server
    auth = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=base, headers=auth) as client:
        response = await client.post(
            "/v2/openapi/task", json={"type": "generate_image", "prompt": "over the wire"}
        )
        task_id = response.json()["data"]["task_id"]
    url = base.replace("http://", "ws://") + f"/v2/openapi/task/watch/{task_id}"
    frames = []
    async with websockets.connect(url, additional_headers=auth) as socket:
        async for message in socket:
            frames.append(json.loads(message))
        assert socket.close_code == 1000  # the server closed after "finalized"
    assert frames[-1]["event"] == "finalized"
    assert frames[-1]["data"]["status"] == "success"
    assert all(f["event"] == "update" for f in frames[:-1])
    assert any(f["data"]["status"] == "running" for f in frames[:-1])


async def test_a_websocket_upgrade_without_a_key_is_refused(
    live_server: tuple[str, str],
) -> None:
    base, _ = live_server
    url = base.replace("http://", "ws://") + "/v2/openapi/task/watch/all"
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        async with websockets.connect(url):
            pass
    assert refused.value.response.status_code == 403
