"""Live task updates from the event log: WebSocket watch (as Tripo clients use it) and SSE.

Both read the same ordered, per-account event log (``easel.store.events``) whenever an event
of the account may have been committed (``Store.event_wake_ups``), so any API replica serves
any client. Each event carries the task object with the status and progress it recorded.

* WebSocket ``/task/watch/{task_id}``, ``/task/watch/all`` and ``/task/watch/all/{since}``:
  frames ``{"event": "update" | "finalized", "data": <task>}``; authenticated by the
  ``Authorization`` header of the upgrade; a single-task socket closes after ``finalized``.
* SSE ``GET /task/{task_id}/events`` and ``GET /events``: ``id:`` is the event number;
  ``Last-Event-ID`` resumes after it with nothing missed.

Every stream is an :class:`easel.services.streams.Stream` of its key: bounded per key (one more is
refused with 1007), charged to the key's rate while open, ended when the key is revoked (SSE:
an ``error`` event with the 1002 envelope; WebSocket: close 1008 ``"1002: …"``) and when the
server shuts down (SSE: the body ends; WebSocket: close 1012).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from easel.api.deps import CallerDep, RuntimeDep, authenticate
from easel.api.facts import declare
from easel.domain.accounts import Caller
from easel.domain.errors import EaselError, InvalidParameter, RateLimited, TaskNotFound
from easel.domain.events import Event
from easel.domain.text import INT64_MAX
from easel.runtime import Runtime
from easel.services.streams import Stream, StreamEnded

router = APIRouter()

KEEPALIVE_S = 15.0


async def follow(
    runtime: Runtime, stream: Stream, after: int, task_id: str | None = None
) -> AsyncGenerator[Event, None]:
    """The key's events numbered above ``after`` (of one task, if given) until the stream
    ends (:class:`StreamEnded` is raised out of it then)."""
    caller = stream.caller
    while True:
        batch = await runtime.events.after(caller, after, task_id=task_id)
        for event in batch:
            after = event.seq
            yield event
        if not batch:
            await stream.pause()


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


def _close_reason(exc: EaselError) -> str:
    """``"<code>: <message>"`` cut to the 123 bytes a close frame can carry."""
    return f"{exc.code}: {exc.message}".encode()[:123].decode(errors="ignore")


async def _accept(websocket: WebSocket) -> tuple[Runtime, Stream] | None:
    """Authenticate (refused before the handshake), then accept, then take a stream place:
    a key over its bound is told so in the close frame, 1008 ``"1007: …"``."""
    runtime: Runtime = websocket.app.state.runtime
    try:
        address = websocket.client.host if websocket.client else None
        caller = await authenticate(runtime, websocket.headers.get("authorization", ""), address)
    except EaselError as exc:
        await websocket.close(code=1008, reason=_close_reason(exc))
        return None
    await websocket.accept()
    try:
        return runtime, runtime.streams.open(caller)
    except RateLimited as exc:
        await websocket.close(code=1008, reason=_close_reason(exc))
        return None


async def _watch(
    websocket: WebSocket, runtime: Runtime, stream: Stream, body: Awaitable[None]
) -> None:
    """Run the sending loop ``body`` until it is done, the client leaves or the stream ends
    (revoked key: close 1008; shutdown: close 1012). The client sends nothing, but reading is
    how its leaving is noticed while no event comes."""

    async def until_the_client_leaves() -> None:
        while (await websocket.receive())["type"] != "websocket.disconnect":
            pass
        stream.end()

    leaving = asyncio.create_task(until_the_client_leaves())
    try:
        await body
    except StreamEnded as ended:
        if not leaving.done():
            code, reason = 1012, "the server is restarting"
            if ended.error is not None:
                code, reason = 1008, _close_reason(ended.error)
            with contextlib.suppress(Exception):  # the socket may be gone already
                await websocket.close(code=code, reason=reason)
    except (WebSocketDisconnect, InvalidParameter):
        pass
    finally:
        runtime.streams.close(stream)
        leaving.cancel()
        await asyncio.wait({leaving})  # not ``await leaving``: that would take its error
        if not leaving.cancelled():
            leaving.exception()  # a receive after the close may have raised: retrieved here


async def _send(websocket: WebSocket, kind: str, data: dict[str, Any]) -> None:
    await websocket.send_text(json.dumps({"event": kind, "data": data}))


@router.websocket("/task/watch/all")
@router.websocket("/task/watch/all/{since}")
async def watch_all(websocket: WebSocket, since: str | None = None) -> None:
    accepted = await _accept(websocket)
    if accepted is not None:
        runtime, stream = accepted
        await _watch(websocket, runtime, stream, _send_all(websocket, runtime, stream, since))


async def _send_all(
    websocket: WebSocket, runtime: Runtime, stream: Stream, since: str | None
) -> None:
    caller = stream.caller
    base_url = str(websocket.base_url).replace("ws", "http", 1)
    after = await runtime.events.last_seq(caller)
    if since is not None:
        latest = await runtime.events.latest_since(caller, _since(since))
        for event in latest:
            await _send(websocket, event.kind, await render_event(runtime, event, base_url))
        after = max([after, *(e.seq for e in latest)])
    async for event in follow(runtime, stream, after):
        await _send(websocket, event.kind, await render_event(runtime, event, base_url))


@router.websocket("/task/watch/{task_id}")
async def watch_task(websocket: WebSocket, task_id: str) -> None:
    accepted = await _accept(websocket)
    if accepted is not None:
        runtime, stream = accepted
        await _watch(websocket, runtime, stream, _send_task(websocket, runtime, stream, task_id))


async def _send_task(websocket: WebSocket, runtime: Runtime, stream: Stream, task_id: str) -> None:
    base_url = str(websocket.base_url).replace("ws", "http", 1)
    task = await runtime.service.find(stream.caller, task_id)
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
    async for event in follow(runtime, stream, 0, task_id=task_id):
        await _send(websocket, event.kind, await render_event(runtime, event, base_url))
        if event.kind == "finalized":
            await websocket.close()
            return


# -- Server-Sent Events -----------------------------------------------------------------------


_EVENT_ID = re.compile(r"[0-9]{1,19}")  # ASCII digits only: str.isdigit() also takes "²"


def _last_event_id(request: Request) -> int | None:
    """The event number a client resumes after: None without the header, 1004 unless it is
    one this server could have sent (ASCII digits, a 64-bit event number). Checked before
    the stream starts, so that a bad one is an answer, not an error inside the stream."""
    value = request.headers.get("last-event-id", "").strip()
    if not value:
        return None
    if _EVENT_ID.fullmatch(value) and int(value) <= INT64_MAX:
        return int(value)
    raise InvalidParameter(
        f"Last-Event-ID must be an event number this server sent, not {value[:40]!r}"
        + (f" ({len(value)} characters)." if len(value) > 40 else "."),
        "Send the id: of the last event you received, or no Last-Event-ID to start from now.",
    )


async def _sse(
    request: Request, runtime: Runtime, stream: Stream, after: int, task_id: str | None
) -> AsyncIterator[str]:
    base_url = str(request.base_url)
    events = follow(runtime, stream, after, task_id)
    pending: asyncio.Task[Event] | None = None
    try:
        while not await request.is_disconnected():
            pending = pending or asyncio.ensure_future(anext(events))
            done, _ = await asyncio.wait({pending}, timeout=KEEPALIVE_S)
            if not done:
                yield ": keep-alive\n\n"
                continue
            try:
                event, pending = pending.result(), None
            except StreamEnded as ended:  # revoked (tell the client) or shutting down
                if (error := ended.error) is not None:
                    envelope = {
                        "code": error.code,
                        "message": error.message,
                        "suggestion": error.suggestion,
                    }
                    yield f"event: error\ndata: {json.dumps(envelope)}\n\n"
                return
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


class _OpenStream(EventStreamResponse):
    """An SSE response that gives its stream's place back however it ends (finished,
    client gone, cancelled at shutdown)."""

    def __init__(self, body: AsyncIterator[str], runtime: Runtime, stream: Stream) -> None:
        super().__init__(body, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._runtime, self._stream = runtime, stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._runtime.streams.close(self._stream)


def _stream(
    request: Request, runtime: Runtime, caller: Caller, after: int, task_id: str | None
) -> StreamingResponse:
    """The SSE response, once the key may open one more stream (else 429 / 1007)."""
    stream = runtime.streams.open(caller)
    return _OpenStream(_sse(request, runtime, stream, after, task_id), runtime, stream)


@router.get(
    "/task/{task_id}/events",
    summary="Server-Sent Events of one task",
    response_class=EventStreamResponse,
)
@declare(errors=[2001])
async def task_events(
    task_id: str, request: Request, caller: CallerDep, runtime: RuntimeDep
) -> StreamingResponse:
    if await runtime.service.find(caller, task_id) is None:
        raise TaskNotFound(f"task {task_id} not found.")
    after = _last_event_id(request) or 0
    return _stream(request, runtime, caller, after, task_id)


@router.get(
    "/events",
    summary="Server-Sent Events of every task of the key",
    response_class=EventStreamResponse,
)
@declare()
async def all_events(request: Request, caller: CallerDep, runtime: RuntimeDep) -> StreamingResponse:
    after = _last_event_id(request)
    if after is None:
        after = await runtime.events.last_seq(caller)
    return _stream(request, runtime, caller, after, None)
