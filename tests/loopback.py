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
from typing import Any, Literal

import uvicorn

_START_TIMEOUT_S = 10.0


@contextmanager
def serve_app(
    app: Any, *, lifespan: Literal["on", "off"] = "off", ws: Literal["auto", "none"] = "none"
) -> Iterator[str]:
    """Run ``app`` on 127.0.0.1 (a free port) until the block ends; yield its base URL."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, lifespan=lifespan, ws=ws, log_level="warning"
    )
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
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=_START_TIMEOUT_S)
