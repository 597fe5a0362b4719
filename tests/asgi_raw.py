"""Send one request to an ASGI app exactly as given: any path (lone surrogates and NULs
included), any header bytes, any body; read the status of an event stream without waiting for
its end. HTTP clients normalise or refuse such requests, so they cannot send them in process.

An exception out of the app is an answer too: :attr:`Answer.raised` holds it (status 500,
which is what a server sends for it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote_from_bytes

from starlette.types import ASGIApp

Headers = Sequence[tuple[bytes, bytes]]


@dataclass
class Answer:
    status: int
    headers: dict[bytes, bytes] = field(default_factory=dict)
    body: bytes = b""
    raised: BaseException | None = None

    def json(self) -> Any:
        return json.loads(self.body)


def _scope(kind: str, method: str, path: str, query: bytes, headers: Headers) -> dict[str, Any]:
    raw_path = quote_from_bytes(path.encode("utf-8", "surrogatepass"), safe="/").encode()
    return {
        "type": kind,
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http" if kind == "http" else "ws",
        "path": path,
        "raw_path": raw_path,
        "root_path": "",
        "query_string": query,
        "headers": [(name.lower(), value) for name, value in headers],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }


async def call(
    app: ASGIApp,
    method: str,
    path: str,
    *,
    query: bytes = b"",
    headers: Headers = (),
    body: bytes = b"",
    timeout_s: float = 20.0,
) -> Answer:
    """The app's answer; an event stream (``text/event-stream``) is left once it starts."""
    answer = Answer(0)
    requested, leave = False, asyncio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": body, "more_body": False}
        await leave.wait()
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answer.status = message["status"]
            answer.headers = dict(message.get("headers", []))
            if answer.headers.get(b"content-type", b"").startswith(b"text/event-stream"):
                leave.set()  # the stream started: that is the answer
        elif message["type"] == "http.response.body":
            answer.body += message.get("body", b"")
            if not message.get("more_body", False):
                leave.set()

    try:
        async with asyncio.timeout(timeout_s):
            await app(_scope("http", method, path, query, headers), receive, send)
    except Exception as exc:  # what a server would log and answer with a 500
        answer.raised = exc
        answer.status = answer.status or 500
    return answer


@dataclass
class Closed:
    """How a WebSocket ended: accepted or not, and the close code and reason sent."""

    accepted: bool = False
    code: int | None = None
    reason: str = ""
    raised: BaseException | None = None


async def connect(
    app: ASGIApp, path: str, *, headers: Headers = (), settle_s: float = 0.3
) -> Closed:
    """Open a WebSocket and see how the app answers: a close, or an accept; an accepted
    socket is watched ``settle_s`` longer (what the app does with its path happens then),
    then dropped, as a client that goes away."""
    closed, connected, answered = Closed(), False, asyncio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal connected
        if not connected:
            connected = True
            return {"type": "websocket.connect"}
        await asyncio.Event().wait()  # the client never speaks again
        raise AssertionError("unreachable")

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "websocket.accept":
            closed.accepted = True
        elif message["type"] == "websocket.close":
            closed.code, closed.reason = message.get("code", 1000), message.get("reason") or ""
        answered.set()

    scope = _scope("websocket", "GET", path, b"", headers)

    async def run_app() -> None:
        await app(scope, receive, send)

    running = asyncio.create_task(run_app())
    waiting = asyncio.create_task(answered.wait())
    try:
        async with asyncio.timeout(20):
            await asyncio.wait([running, waiting], return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiting.cancel()
    if not running.done():
        await asyncio.wait([running], timeout=settle_s)
    if running.done():
        closed.raised = running.exception()
    else:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
    return closed
