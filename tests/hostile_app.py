"""A real app for hostile-request tests: lifespan started, one key, the state a refusal must
leave alone, and a resolver stub so that generated URLs send no DNS query."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi import FastAPI

from apptools import State, account_state, settings_for
from asgi_raw import Answer, Headers, call
from easel.api.app import create_app
from easel.domain.accounts import Caller
from easel.runtime import Runtime

CREDITS = 1_000_000


@dataclass
class Served:
    app: FastAPI
    runtime: Runtime
    key: str
    caller: Caller

    @property
    def auth(self) -> tuple[bytes, bytes]:
        return (b"authorization", f"Bearer {self.key}".encode())

    async def call(
        self,
        method: str,
        path: str,
        *,
        query: bytes = b"",
        headers: Headers = (),
        body: bytes = b"",
        json_body: bool = False,
    ) -> Answer:
        """The request with the key (unless ``headers`` name an Authorization of their own)
        and a Host, as a client sends them."""
        given = {name.lower() for name, _ in headers}
        sent = [*headers]
        if b"authorization" not in given:
            sent.append(self.auth)
        if b"host" not in given:
            sent.append((b"host", b"testserver"))
        if json_body:
            sent.append((b"content-type", b"application/json"))
        return await call(self.app, method, path, query=query, headers=sent, body=body)

    async def state(self) -> State:
        return await account_state(self.runtime, self.caller.account_id)


@contextlib.asynccontextmanager
async def serve(database_url: str, **overrides: Any) -> AsyncIterator[Served]:
    """The app without a worker (tasks stay queued), without a rate limit, with loopback
    allowed as an outbound address (webhooks and ``url`` inputs on 127.0.0.1)."""
    settings = settings_for(
        database_url,
        **{"rate_limit_per_s": 0, "allow_outbound_cidrs": ["127.0.0.0/8"], **overrides},
    )
    app = create_app(settings, run_worker=False)
    async with app.router.lifespan_context(app):
        runtime: Runtime = app.state.runtime
        key = await runtime.store.accounts.create_key("hostile", CREDITS)
        caller = await runtime.store.accounts.authenticate(key)
        yield Served(app, runtime, key, caller)


_real_getaddrinfo = socket.getaddrinfo


def _numeric_getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
    name = host.decode() if isinstance(host, bytes) else host
    try:
        ipaddress.ip_address(name)
    except ValueError:
        raise socket.gaierror(socket.EAI_NONAME, f"{name!r}: names do not resolve here") from None
    return _real_getaddrinfo(host, port, *args, **kwargs)


@contextlib.contextmanager
def numeric_dns_only() -> Iterator[None]:
    """IP literals resolve, names do not (as an unknown name): no test sends a DNS query."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket, "getaddrinfo", _numeric_getaddrinfo)
        yield
