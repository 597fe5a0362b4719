"""The response envelope, the trace id and the one place errors become HTTP responses."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from easel import logs
from easel.errors import (
    EaselError,
    InvalidParameter,
    NotAllowed,
    TooManyUnfinishedTasks,
    UnknownServerError,
)

TRACE_HEADER = "X-Tripo-Trace-ID"
log = logging.getLogger("easel.api")


def ok(data: Any) -> dict[str, Any]:
    return {"code": 0, "data": data}


def error_response(exc: EaselError) -> JSONResponse:
    headers = {}
    if isinstance(exc, TooManyUnfinishedTasks):
        headers["Retry-After"] = str(exc.retry_after_s)
    body = {"code": exc.code, "message": exc.message, "suggestion": exc.suggestion}
    return JSONResponse(body, status_code=exc.status, headers=headers)


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

        async def send_with_trace(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [
                    *message["headers"],
                    (TRACE_HEADER.lower().encode(), trace_id.encode()),
                ]
            await send(message)

        await self.app(scope, receive, send_with_trace)


def install_error_handlers(app: FastAPI) -> None:
    async def on_easel_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, EaselError)
        return error_response(exc)

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()))
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
        return error_response(InvalidParameter(str(exc.detail)))

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        trace = request.scope.get("state", {}).get("trace_id")
        log.exception("unhandled error (trace %s)", trace)
        return error_response(UnknownServerError(f"unexpected server error (trace {trace})"))

    app.add_exception_handler(EaselError, on_easel_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
