"""Request dependencies: the runtime and the authenticated caller."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from easel.domain.accounts import KEY_PREFIX, Caller, UnknownKey
from easel.domain.errors import AuthenticationFailed, RateLimited
from easel.runtime import Runtime


async def get_runtime(request: Request) -> Runtime:
    """The app's runtime. (Async, as every dependency here: FastAPI runs a plain ``def``
    dependency in a worker thread, a thread hop per request.)"""
    runtime: Runtime = request.app.state.runtime
    return runtime


async def authenticate(runtime: Runtime, header: str, address: str | None = None) -> Caller:
    """The caller named by an ``Authorization: Bearer tsk_…`` header, or 1002; 1007 when
    the key is over its requests per second (every authenticated request counts).

    Unknown keys are counted per client ``address`` (behind a trusted proxy, the address it
    forwards) in a bucket of their own: once it is empty, that address's unknown keys get
    1007 instead of 1002. Every key is still looked up, so a valid key is never refused for
    what unknown keys did from its address (a proxy's address is everyone's); it is limited
    by its own bucket alone.
    """
    scheme, _, key = header.partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key.startswith(KEY_PREFIX):
        raise AuthenticationFailed(
            "Authentication failed: missing or malformed API key."
            if not header
            else "Authentication failed: the Authorization header is not 'Bearer tsk_…'."
        )
    try:
        caller = await runtime.accounts.authenticate(key)
    except UnknownKey:
        _count_unknown_key(runtime, address)
        raise AuthenticationFailed("Authentication failed: unknown or revoked API key.") from None
    limiter = runtime.limiter
    wait_s = limiter.take(caller.key_id)
    if wait_s:
        raise RateLimited(
            f"this API key made more than {limiter.rate_per_s:g} requests per second "
            f"(bursts up to {limiter.burst}).",
            wait_s,
            f"Wait {wait_s} s (the Retry-After header) and send fewer requests; poll a task "
            "every few seconds, or watch it over WebSocket or SSE.",
        )
    return caller


def _count_unknown_key(runtime: Runtime, address: str | None) -> None:
    """Take a token from the address's unknown-key bucket; 1007 once it is empty."""
    if address is None:
        return
    wait_s = runtime.unknown_keys.take(address)
    if wait_s:
        raise RateLimited(
            f"too many requests with unknown API keys came from {address[:64]}.",
            wait_s,
            f"Wait {wait_s} s (the Retry-After header) and check the key you send.",
        )


async def get_caller(request: Request, runtime: Annotated[Runtime, Depends(get_runtime)]) -> Caller:
    address = request.client.host if request.client else None
    return await authenticate(runtime, request.headers.get("authorization", ""), address)


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
CallerDep = Annotated[Caller, Depends(get_caller)]
