"""Outbound connections: the address rules and the one guarded client every fetch uses.

:mod:`easel.outbound.addresses` says which addresses are public (the IANA registries);
:mod:`easel.outbound.transport` applies that, and the credential scope, to every request and
every redirect hop. :func:`guarded_client` builds the httpx client the server uses for
reference URLs, webhooks and provider polling and downloads; provider SDKs get a
:class:`GuardedTransport` of their own.
"""

from __future__ import annotations

import httpx

from easel.outbound.addresses import IPAddress, OutboundPolicy, is_public
from easel.outbound.transport import (
    CredentialScope,
    GuardedTransport,
    Origin,
    OutboundRefused,
    Resolver,
    resolve,
)

__all__ = [
    "CredentialScope",
    "GuardedTransport",
    "IPAddress",
    "Origin",
    "OutboundPolicy",
    "OutboundRefused",
    "Resolver",
    "find_refusal",
    "guarded_client",
    "is_public",
    "resolve",
]


def guarded_client(
    transport: GuardedTransport,
    *,
    timeout_s: float,
    follow_redirects: bool = False,
    max_redirects: int = 5,
) -> httpx.AsyncClient:
    """An httpx client whose every request and redirect hop goes through ``transport``."""
    return httpx.AsyncClient(
        transport=transport,
        timeout=httpx.Timeout(timeout_s),
        follow_redirects=follow_redirects,
        max_redirects=max_redirects,
        trust_env=False,
    )


def find_refusal(exc: BaseException) -> OutboundRefused | None:
    """The :class:`OutboundRefused` behind ``exc`` (an SDK wraps what its transport raises)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, OutboundRefused):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
