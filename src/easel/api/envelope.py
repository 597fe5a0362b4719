"""The response envelope, the trace id and the one place errors become HTTP responses."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from easel import logs
from easel.domain import v3
from easel.domain.errors import (
    EaselError,
    InvalidParameter,
    MalformedBody,
    MethodNotAllowed,
    NotAllowed,
    RateLimited,
    ServiceUnavailable,
    StoreUnavailable,
    TooManyUnfinishedTasks,
    UnknownRoute,
    UnknownServerError,
)
from easel.storage.objects import ObjectStoreError

TRACE_HEADER = "X-Tripo-Trace-ID"
# On /v3 a client may name its request (Tripo's v3 echoes it as ``request_id``): an id of this
# form becomes the request's trace id; any other value is not used, and one is made instead.
REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:+/=-]{1,128}")
_UNPARSABLE_BODY = "There was an error parsing the body"  # FastAPI, for UTF-8 and depth errors
log = logging.getLogger("easel.api")


def ok(data: Any) -> dict[str, Any]:
    return {"code": 0, "data": data}


def ok_v3(data: Any) -> dict[str, Any]:
    """v3's success envelope: v2's plus ``status: "success"``."""
    return {"code": 0, "status": "success", "data": data}


def is_v3(path: str) -> bool:
    return path == "/v3" or path.startswith("/v3/")


def error_response(
    exc: EaselError, scope: Scope | None = None, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """The error envelope of ``exc`` (with ``Retry-After`` where the refusal has one): v2's
    ``{code, message, suggestion}``, or for a ``/v3`` path of ``scope`` v3's, which has v3's
    code and status (:func:`easel.domain.v3.error_code`), ``status: "error"`` and
    ``request_id``: the request's trace id, which a client chooses with ``X-Request-ID``."""
    headers = dict(headers or {})
    if isinstance(exc, (TooManyUnfinishedTasks, ServiceUnavailable, RateLimited)):
        headers["Retry-After"] = str(exc.retry_after_s)
    body: dict[str, Any] = {"code": exc.code, "message": exc.message, "suggestion": exc.suggestion}
    status = exc.status
    if scope is not None and is_v3(scope["path"]):
        body["code"], status = v3.error_code(exc)
        body["status"] = "error"
        body["request_id"] = scope.get("state", {}).get("trace_id")
    return JSONResponse(body, status_code=status, headers=headers)


async def refuse(exc: EaselError, scope: Scope, receive: Receive, send: Send) -> None:
    """Answer a request refused before any route ran (from ASGI middleware): the envelope
    the handlers give (v3's on ``/v3``, ``Retry-After`` kept); a WebSocket is closed with
    1008 and the code and message as its reason."""
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        reason = f"{exc.code}: {exc.message}".encode()[:123].decode(errors="ignore")
        await send({"type": "websocket.close", "code": 1008, "reason": reason})
        return
    await error_response(exc, scope)(scope, receive, send)


def _trace_id(scope: Scope) -> str:
    """The client's ``X-Request-ID`` on ``/v3`` where it has the form of an id, else new."""
    if is_v3(scope["path"]):
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        for name, value in headers:
            if name == REQUEST_ID_HEADER.lower().encode() and _REQUEST_ID.fullmatch(value):
                return value.decode("ascii")
    return str(uuid.uuid4())


class TraceIdMiddleware:
    """Give every request a trace id (on ``/v3``, the client's ``X-Request-ID`` if it has the
    form of one): on the response header, on ``scope['state']`` and in the logs."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        trace_id = _trace_id(scope)
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
        return error_response(exc, request.scope)

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()))
        if first.get("type") == "json_invalid" or (
            tuple(first.get("loc", ())) == ("body",)
            and first.get("type") == "model_attributes_type"
        ):  # the body itself is not JSON, or not an object: 1003 as on POST /task
            error: EaselError = MalformedBody(
                f"the request body is not a JSON object ({where}: {first['msg']})."
            )
        else:
            error = InvalidParameter(f"{where}: {first.get('msg', 'invalid')}")
        return error_response(error, request.scope)

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        return error_response(_http_error(request, exc), request.scope, exc.headers)

    async def on_storage_error(request: Request, exc: Exception) -> JSONResponse:
        """The object store failed a read or a write (easel.storage.objects decided): 503, so
        clients retry, and a one-line warning. The database's outages come as
        StoreUnavailable, an EaselError, and are answered above."""
        trace = request.scope.get("state", {}).get("trace_id")
        log.warning("object store unavailable (trace %s): %s", trace, exc)
        message = f"the server's object store is unavailable for now (trace {trace})."
        return error_response(ServiceUnavailable(message), request.scope)

    app.add_exception_handler(EaselError, on_easel_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(ObjectStoreError, on_storage_error)


def _http_error(request: Request, exc: StarletteHTTPException) -> EaselError:
    """Routing's refusals in the protocol's words: no such path is 1005 on v2 and 4001 on
    v3; a method the path does not take is 1005 on v2 and 1003 on v3."""
    method, path = request.method, request.url.path
    if exc.status_code == 404:
        if is_v3(request.scope["path"]):
            return UnknownRoute(f"no route {method} {path}.")
        return NotAllowed(
            f"no route {method} {path}", "Check the path; the API lives under /v2/openapi."
        )
    if exc.status_code == 405:
        if is_v3(request.scope["path"]):
            return MethodNotAllowed(f"{method} is not allowed on {path}.")
        return NotAllowed(f"{method} is not allowed on {path}")
    if exc.status_code == 400 and exc.detail == _UNPARSABLE_BODY:  # FastAPI's words
        return MalformedBody("the request body is not valid JSON (bad UTF-8, or nested too deep).")
    return InvalidParameter(str(exc.detail))
