"""Serve an ASGI app on 127.0.0.1 in a background thread: the far side of a provider adapter.

``with serve_app(app) as base_url:`` starts uvicorn on a free loopback port and yields
``http://127.0.0.1:PORT``; leaving the block stops the server. Fake providers built on it
speak the provider's documented wire format, so the real SDKs run against them unchanged.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

_START_TIMEOUT_S = 10.0


@contextmanager
def serve_app(
    app: Any,
    *,
    lifespan: Literal["on", "off"] = "off",
    ws: Literal["auto", "none"] = "none",
    host: str = "127.0.0.1",
) -> Iterator[str]:
    """Run ``app`` on ``host`` (a loopback address; a free port) until the block ends; yield
    its base URL. Linux answers on all of 127.0.0.0/8, so tests can run "other hosts"."""
    config = uvicorn.Config(app, host=host, port=0, lifespan=lifespan, ws=ws, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="loopback-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + _START_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the loopback server did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=_START_TIMEOUT_S)


@dataclass
class Peer:
    """A loopback HTTP server on a chosen 127.x address that records every request reaching
    it and answers ``routes`` (any other path: ``otherwise``, by default a body that must never
    leak into a task)."""

    host: str
    routes: dict[str, Response] = field(default_factory=dict)
    otherwise: Response = field(default_factory=lambda: Response(b"internal secret"))
    seen: list[tuple[str, dict[str, str]]] = field(default_factory=list)  # path, headers
    url: str = ""

    async def handle(self, request: Request) -> Response:
        self.seen.append((request.url.path, dict(request.headers)))
        return self.routes.get(request.url.path, self.otherwise)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/{path:path}", self.handle, methods=["GET", "POST"])])


@contextmanager
def running(peer: Peer) -> Iterator[Peer]:
    with serve_app(peer.app(), host=peer.host) as url:
        peer.url = url
        yield peer
