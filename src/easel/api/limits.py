"""Request limits enforced before any route runs: the body size limit.

JSON routes take at most ``max_request_bytes`` (``Settings``, 1 MiB by default); the upload
routes, those that declare an ``upload_limit`` (:mod:`easel.api.facts`), take a 20 MB image
plus its multipart framing. A body declared larger by its ``Content-Length`` is refused at
once, unread; a body without one (chunked) is counted as it arrives and cut off the moment
it passes the limit, so neither ``json.loads`` nor the multipart parser ever holds more than
the limit. Either way the answer is HTTP 413 with code 1004 in the protocol's envelope.

A client that sends its whole body before it reads the answer (Python's urllib, requests,
aiohttp: no ``Expect: 100-continue``) would lose the 413 if the connection closed while its
body was still arriving (the unread bytes make the kernel reset it). So the answer is sent
first, marked ``Connection: close``, and then the rest of the body is read and discarded, up
to ``easel.server.DRAIN_MAX_BYTES`` more (and within the server's body deadline), before the
connection closes gracefully. A body declared larger than that, or one whose client waits
for ``100 Continue``, is not read at all.

This is ASGI middleware rather than a FastAPI dependency because FastAPI reads and parses a
route's body before it runs the route's dependencies.
Paths, queries and headers (a NUL in a path id, a ``Content-Length`` that is not digits) are
checked before this runs, by :mod:`easel.api.door`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from easel.api.envelope import error_response
from easel.api.facts import declared
from easel.domain.errors import EaselError, RequestTooLarge
from easel.server import DRAIN_MAX_BYTES


class _BodyTooLarge(Exception):
    """Raised from ``receive`` into the app to stop it reading an oversized body."""


class _UploadLimits:
    """The upload routes' paths and limits, read from the routes at the first request (when
    every router is included)."""

    def __init__(self, routes: Sequence[BaseRoute]) -> None:
        self._routes = routes
        self._limits: list[tuple[re.Pattern[str], int]] | None = None

    def of(self, path: str) -> int | None:
        """The limit of the upload route at ``path`` (any method; a trailing slash aside), or
        None: not an upload route."""
        if self._limits is None:
            self._limits = [
                (route.path_regex, facts.upload_limit)
                for route, facts in declared(self._routes)
                if facts.upload_limit is not None
            ]
        path = path.rstrip("/")
        return next((limit for pattern, limit in self._limits if pattern.match(path)), None)


def _too_large(limit: int, upload: bool, declared: int | None) -> RequestTooLarge:
    size = f"{declared} bytes" if declared is not None else f"over {limit} bytes"
    if upload:
        return RequestTooLarge(
            f"the upload is {size}; an image may be at most 20 MB.", "Send a smaller image."
        )
    return RequestTooLarge(
        f"the request body is {size}; this server takes at most {limit} bytes.",
        "Send a smaller body: a task needs only its parameters and file references; upload "
        "images with 'POST /v2/openapi/upload' and send their image_token.",
    )


class RequestLimits:
    """Refuse request bodies over the route's limit (413 / 1004) before they are parsed:
    ``max_bytes``, or the upload limit an upload route among ``routes`` declares."""

    def __init__(self, app: ASGIApp, max_bytes: int, routes: Sequence[BaseRoute]) -> None:
        self.app, self.max_bytes, self.uploads = app, max_bytes, _UploadLimits(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        upload_limit = self.uploads.of(scope["path"])
        upload = upload_limit is not None
        limit = self.max_bytes if upload_limit is None else upload_limit
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            refusal = _too_large(limit, upload, declared)
            await _refuse_body(refusal, scope, receive, send, declared)
            return

        received, refused, started = 0, False, False

        async def counting_receive() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    refused = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused and not started:
                return  # the app's own answer to the cut-off body; ours follows
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not refused:
                raise
        if refused and not started:
            await _refuse_body(_too_large(limit, upload, None), scope, receive, send, received)


async def _refuse_body(
    refusal: EaselError, scope: Scope, receive: Receive, send: Send, size: int
) -> None:
    """Answer ``refusal`` to a request whose body is unread, then read and discard the body
    (``size`` bytes declared, or as many already read) if that is worth it, so that the
    connection closes with nothing unread and the client sees the answer."""
    response = error_response(refusal, scope)
    response.headers["Connection"] = "close"
    if _expects_continue(scope) or size > DRAIN_MAX_BYTES:
        await response(scope, receive, send)
        return
    start = {"type": "http.response.start", "status": response.status_code}
    await send({**start, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body, "more_body": True})
    drained = 0
    while drained <= DRAIN_MAX_BYTES:
        message = await receive()
        if message["type"] != "http.request":
            break  # the client left
        drained += len(message.get("body", b""))
        if not message.get("more_body", False):
            break
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def _expects_continue(scope: Scope) -> bool:
    return any(
        name == b"expect" and value.strip().lower() == b"100-continue"
        for name, value in scope.get("headers", ())
    )


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isascii() and text.isdigit() else None
    return None
