"""Live task updates from the event log: WebSocket watch (as Tripo clients use it) and SSE.

Both read the same ordered, per-account event log (``easel.store.events``) by polling it, so
any API replica serves any client. Each event carries the task object with the status and
progress the event recorded.

* WebSocket ``/task/watch/{task_id}``, ``/task/watch/all`` and ``/task/watch/all/{since}``:
  frames ``{"event": "update" | "finalized", "data": <task>}``; authenticated by the
  ``Authorization`` header of the upgrade; a single-task socket closes after ``finalized``.
* SSE ``GET /task/{task_id}/events`` and ``GET /events``: ``id:`` is the event number;
  ``Last-Event-ID`` resumes after it with nothing missed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import StreamingResponse

from easel.api.deps import CallerDep, RuntimeDep, authenticate
from easel.errors import EaselError, InvalidParameter, TaskNotFound
from easel.runtime import Runtime
from easel.store.accounts import Caller
from easel.store.events import Event

router = APIRouter()

POLL_S = 0.2
KEEPALIVE_S = 15.0


async def follow(
    runtime: Runtime, caller: Caller, after: int, task_id: str | None = None
) -> AsyncGenerator[Event, None]:
    """The key's events numbered above ``after``, forever (of one task, if given)."""
    while True:
        batch = await runtime.store.events.after(
            caller.account_id, caller.key_id, after, task_id=task_id
        )
        for event in batch:
            after = event.seq
            yield event
        if not batch:
            await asyncio.sleep(POLL_S)


async def render_event(runtime: Runtime, event: Event, base_url: str) -> dict[str, Any]:
    data = await runtime.service.render_event(event.task_id, event.status, event.progress, base_url)
    assert data is not None  # tasks are never deleted
    return data


def _since(value: str) -> float:
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise InvalidParameter(
            f"{value!r} is not an RFC 3339 time.", "Use a time like 2026-01-31T12:00:00Z."
        ) from None


# -- WebSocket --------------------------------------------------------------------------------


async def _accept(websocket: WebSocket) -> tuple[Runtime, Caller] | None:
    runtime: Runtime = websocket.app.state.runtime
    try:
        address = websocket.client.host if websocket.client else None
        caller = await authenticate(runtime, websocket.headers.get("authorization", ""), address)
    except EaselError as exc:
        await websocket.close(code=1008, reason=f"{exc.code}: {exc.message}")
        return None
    await websocket.accept()
    return runtime, caller


async def _send(websocket: WebSocket, kind: str, data: dict[str, Any]) -> None:
    await websocket.send_text(json.dumps({"event": kind, "data": data}))


@router.websocket("/task/watch/all")
@router.websocket("/task/watch/all/{since}")
async def watch_all(websocket: WebSocket, since: str | None = None) -> None:
    accepted = await _accept(websocket)
    if accepted is None:
        return
    runtime, caller = accepted
    base_url = str(websocket.base_url).replace("ws", "http", 1)
    try:
        after = await runtime.store.events.last_seq(caller.account_id)
        if since is not None:
            start = await runtime.store.events.last_seq_before(caller.account_id, _since(since))
            latest: dict[str, Event] = {}
            for event in await runtime.store.events.after(
                caller.account_id, caller.key_id, start, limit=100_000
            ):
                latest[event.task_id] = event
            for event in latest.values():
                await _send(websocket, event.kind, await render_event(runtime, event, base_url))
            after = max([after, *(e.seq for e in latest.values())])
        async for event in follow(runtime, caller, after):
            await _send(websocket, event.kind, await render_event(runtime, event, base_url))
    except (WebSocketDisconnect, InvalidParameter):
        return


@router.websocket("/task/watch/{task_id}")
async def watch_task(websocket: WebSocket, task_id: str) -> None:
    accepted = await _accept(websocket)
    if accepted is None:
        return
    runtime, caller = accepted
    base_url = str(websocket.base_url).replace("ws", "http", 1)
    try:
        task = await runtime.store.tasks.get(task_id, key_id=caller.key_id)
        if task is None:
            await websocket.close(code=1008, reason=f"2001: task {task_id} not found")
            return
        await _send(
            websocket,
            "finalized" if task.is_final else "update",
            await runtime.service.render(task, base_url),
        )
        if task.is_final:
            await websocket.close()
            return
        async for event in follow(runtime, caller, 0, task_id=task_id):
            await _send(websocket, event.kind, await render_event(runtime, event, base_url))
            if event.kind == "finalized":
                await websocket.close()
                return
    except WebSocketDisconnect:
        return


# -- Server-Sent Events -----------------------------------------------------------------------


def _last_event_id(request: Request) -> int | None:
    value = request.headers.get("last-event-id", "").strip()
    return int(value) if value.isdigit() else None


async def _sse(
    request: Request, runtime: Runtime, caller: Caller, after: int, task_id: str | None
) -> AsyncIterator[str]:
    base_url = str(request.base_url)
    events = follow(runtime, caller, after, task_id)
    pending: asyncio.Task[Event] | None = None
    try:
        while not await request.is_disconnected():
            pending = pending or asyncio.ensure_future(anext(events))
            done, _ = await asyncio.wait({pending}, timeout=KEEPALIVE_S)
            if not done:
                yield ": keep-alive\n\n"
                continue
            event, pending = pending.result(), None
            data = json.dumps(await render_event(runtime, event, base_url))
            yield f"id: {event.seq}\nevent: {event.kind}\ndata: {data}\n\n"
            if task_id is not None and event.kind == "finalized":
                return
    finally:
        if pending is not None and not pending.done():
            # ``events`` is still running inside that task (aclose() now would raise
            # "asynchronous generator is already running"); cancelling the task ends it there.
            pending.cancel()
        else:
            await events.aclose()


class EventStreamResponse(StreamingResponse):
    """Server-Sent Events; as a route's ``response_class`` it also documents the type."""

    media_type = "text/event-stream"


def _stream(body: AsyncIterator[str]) -> StreamingResponse:
    return EventStreamResponse(
        body, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )


@router.get(
    "/task/{task_id}/events",
    summary="Server-Sent Events of one task",
    response_class=EventStreamResponse,
)
async def task_events(
    task_id: str, request: Request, caller: CallerDep, runtime: RuntimeDep
) -> StreamingResponse:
    if await runtime.store.tasks.get(task_id, key_id=caller.key_id) is None:
        raise TaskNotFound(f"task {task_id} not found.")
    after = _last_event_id(request) or 0
    return _stream(_sse(request, runtime, caller, after, task_id))


@router.get(
    "/events",
    summary="Server-Sent Events of every task of the key",
    response_class=EventStreamResponse,
)
async def all_events(request: Request, caller: CallerDep, runtime: RuntimeDep) -> StreamingResponse:
    after = _last_event_id(request)
    if after is None:
        after = await runtime.store.events.last_seq(caller.account_id)
    return _stream(_sse(request, runtime, caller, after, None))
