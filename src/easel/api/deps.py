"""Request dependencies: the runtime and the authenticated caller."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from easel.errors import AuthenticationFailed
from easel.runtime import Runtime
from easel.store.accounts import KEY_PREFIX, Caller, UnknownKey


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


async def authenticate(runtime: Runtime, header: str) -> Caller:
    """The caller named by an ``Authorization: Bearer tsk_…`` header, or 1002."""
    scheme, _, key = header.partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key.startswith(KEY_PREFIX):
        raise AuthenticationFailed(
            "Authentication failed: missing or malformed API key."
            if not header
            else "Authentication failed: the Authorization header is not 'Bearer tsk_…'."
        )
    try:
        return await runtime.store.accounts.authenticate(key)
    except UnknownKey:
        raise AuthenticationFailed("Authentication failed: unknown or revoked API key.") from None


async def get_caller(request: Request, runtime: Annotated[Runtime, Depends(get_runtime)]) -> Caller:
    return await authenticate(runtime, request.headers.get("authorization", ""))


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
CallerDep = Annotated[Caller, Depends(get_caller)]
