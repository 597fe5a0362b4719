"""The response envelope, the trace id and the one place errors become HTTP responses."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from easel import logs
from easel.domain.errors import (
    EaselError,
    InvalidParameter,
    MalformedBody,
    NotAllowed,
    RateLimited,
    ServiceUnavailable,
    StoreUnavailable,
    TooManyUnfinishedTasks,
    UnknownServerError,
)
from easel.storage.objects import ObjectStoreError

TRACE_HEADER = "X-Tripo-Trace-ID"
_UNPARSABLE_BODY = "There was an error parsing the body"  # FastAPI, for UTF-8 and depth errors
log = logging.getLogger("easel.api")


def ok(data: Any) -> dict[str, Any]:
    return {"code": 0, "data": data}


def error_response(exc: EaselError) -> JSONResponse:
    headers = {}
    if isinstance(exc, (TooManyUnfinishedTasks, ServiceUnavailable, RateLimited)):
        headers["Retry-After"] = str(exc.retry_after_s)
    body = {"code": exc.code, "message": exc.message, "suggestion": exc.suggestion}
    return JSONResponse(body, status_code=exc.status, headers=headers)


async def refuse(exc: EaselError, scope: Scope, receive: Receive, send: Send) -> None:
    """Answer a request refused before any route ran (from ASGI middleware): the envelope,
    with ``request_id`` on ``/v3`` as the handlers add it; a WebSocket is closed with 1008
    and the code and message as its reason."""
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        reason = f"{exc.code}: {exc.message}".encode()[:123].decode(errors="ignore")
        await send({"type": "websocket.close", "code": 1008, "reason": reason})
        return
    response = error_response(exc)
    if scope["path"].startswith("/v3/"):
        body = json.loads(bytes(response.body))
        body["request_id"] = scope.get("state", {}).get("trace_id")
        response = JSONResponse(body, status_code=response.status_code)
    await response(scope, receive, send)


class TraceIdMiddleware:
    """Give every request a trace id: on the response header and on ``scope['state']``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        trace_id = str(uuid.uuid4())
        scope.setdefault("state", {})["trace_id"] = trace_id
        logs.trace_id.set(trace_id)

        started = False

        async def send_with_trace(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message.setdefault("headers", [])
                message["headers"] = [
                    *message["headers"],
                    (TRACE_HEADER.lower().encode(), trace_id.encode()),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_trace)
        except Exception as exc:
            # A bug no handler took: 500 and its traceback, logged once. Answered here, not
            # by Starlette's outermost middleware, which would answer and then re-raise to
            # the server (a second traceback; an exception in an in-process client).
            if started:
                raise
            log.error("unhandled error (trace %s)", trace_id, exc_info=exc)
            error = UnknownServerError(f"unexpected server error (trace {trace_id})")
            await refuse(error, scope, receive, send_with_trace)


def install_error_handlers(app: FastAPI) -> None:
    async def on_easel_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, EaselError)
        if isinstance(exc, StoreUnavailable):
            trace = request.scope.get("state", {}).get("trace_id")
            log.warning("database unavailable (trace %s): %r", trace, exc.__cause__)
        return error_response(exc)

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()))
        if first.get("type") == "json_invalid" or (
            tuple(first.get("loc", ())) == ("body",)
            and first.get("type") == "model_attributes_type"
        ):  # the body itself is not JSON, or not an object: 1003 as on POST /task
            return error_response(
                MalformedBody(f"the request body is not a JSON object ({where}: {first['msg']}).")
            )
        return error_response(InvalidParameter(f"{where}: {first.get('msg', 'invalid')}"))

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 404:
            return error_response(
                NotAllowed(
                    f"no route {request.method} {request.url.path}",
                    "Check the path; the API lives under /v2/openapi.",
                )
            )
        if exc.status_code == 405:
            return error_response(
                NotAllowed(f"{request.method} is not allowed on {request.url.path}")
            )
        if exc.status_code == 400 and exc.detail == _UNPARSABLE_BODY:  # FastAPI's words
            return error_response(
                MalformedBody("the request body is not valid JSON (bad UTF-8, or nested too deep).")
            )
        return error_response(InvalidParameter(str(exc.detail)))

    async def on_storage_error(request: Request, exc: Exception) -> JSONResponse:
        """The object store failed a read or a write (easel.storage.objects decided): 503, so
        clients retry, and a one-line warning. The database's outages come as
        StoreUnavailable, an EaselError, and are answered above."""
        trace = request.scope.get("state", {}).get("trace_id")
        log.warning("object store unavailable (trace %s): %s", trace, exc)
        return error_response(
            ServiceUnavailable(f"the server's object store is unavailable for now (trace {trace}).")
        )

    app.add_exception_handler(EaselError, _with_request_id(on_easel_error))
    app.add_exception_handler(RequestValidationError, _with_request_id(on_validation_error))
    app.add_exception_handler(StarletteHTTPException, _with_request_id(on_http_error))
    app.add_exception_handler(ObjectStoreError, _with_request_id(on_storage_error))


Handler = Callable[[Request, Exception], Awaitable[JSONResponse]]


def _with_request_id(handler: Handler) -> Handler:
    """On ``/v3`` routes the error envelope also carries ``request_id`` (the trace id), as
    Tripo's v3 does; the v2 envelope stays exactly ``code``, ``message``, ``suggestion``."""

    async def handle(request: Request, exc: Exception) -> JSONResponse:
        response = await handler(request, exc)
        if not request.url.path.startswith("/v3/"):
            return response
        body = json.loads(bytes(response.body))
        body["request_id"] = request.scope.get("state", {}).get("trace_id")
        headers = {k: v for k, v in response.headers.items() if k.lower() == "retry-after"}
        return JSONResponse(body, status_code=response.status_code, headers=headers)

    return handle
