"""The guarded transport: every connection the server opens on someone else's say-so.

Reference URLs, webhook targets, a provider's polling and result URLs and every request of a
provider SDK go through :class:`GuardedTransport`, an httpx transport that, for each request
(so for every redirect hop too):

* allows only ``http`` and ``https`` URLs with a host;
* resolves the host once and refuses (:class:`OutboundRefused`) when ANY of its addresses is
  not allowed by the :class:`~easel.outbound.addresses.OutboundPolicy`; the operator's own
  configured origin (a backend's ``base_url``) is exempt, since the operator chose it;
* connects to a checked address itself, never to the name again (no DNS rebinding): the URL's
  host becomes the IP literal, the ``Host`` header keeps the name and, for https, the name is
  used for SNI and the certificate check;
* removes credential headers (:class:`CredentialScope`) from a request whose URL the
  backend does not trust, so a provider's answer can never steer its API key elsewhere.

Clients built on it ignore proxies from the environment (an explicit transport does that in
httpx): a proxy would make the address check meaningless.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

import httpx

from easel.outbound.addresses import IPAddress, OutboundPolicy

Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]

_SCHEMES = frozenset({"http", "https"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


class OutboundRefused(Exception):
    """The address rules refuse ``url``; nothing was sent to it."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"{url}: {reason}")
        self.url, self.reason = url, reason


async def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to, in the resolver's order (OSError if none)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))
    if not addresses:
        raise OSError(f"{host} has no address")
    return addresses


@dataclass(frozen=True, slots=True)
class Origin:
    """Scheme, host and port of a URL: what "the same server" means."""

    scheme: str
    host: str
    port: int

    @classmethod
    def of(cls, url: httpx.URL) -> Origin:
        host = url.raw_host.decode("ascii").lower()
        return cls(url.scheme, host, url.port or _DEFAULT_PORTS.get(url.scheme, 0))


def host_matches(host: str, patterns: Iterable[str]) -> bool:
    """``host`` equals a pattern, or lies under a ``*.domain`` pattern (not the domain
    itself: list both to trust both)."""
    host = host.lower().rstrip(".")
    for pattern in patterns:
        pattern = pattern.lower().rstrip(".")
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
                return True
        elif host == pattern:
            return True
    return False


@dataclass(frozen=True, slots=True)
class CredentialScope:
    """Where a backend's credential headers may go: its configured origin, and https URLs
    on ``trusted_hosts`` (exact names, or ``*.domain`` for every name under a domain). A
    plain-http URL gets them only from a backend whose own base URL is plain http."""

    base_url: str
    headers: frozenset[str]  # lower-case header names, e.g. {"x-key"}
    trusted_hosts: tuple[str, ...] = ()

    @classmethod
    def of(
        cls, base_url: str, headers: Iterable[str], trusted_hosts: Sequence[str] = ()
    ) -> CredentialScope:
        return cls(base_url, frozenset(h.lower() for h in headers), tuple(trusted_hosts))

    def allows(self, url: httpx.URL) -> bool:
        """True when the credential headers may be sent to ``url``."""
        base = httpx.URL(self.base_url)
        if Origin.of(url) == Origin.of(base):
            return True
        if url.scheme != "https" and base.scheme == "https":
            return False
        return host_matches(url.raw_host.decode("ascii"), self.trusted_hosts)


class GuardedTransport(httpx.AsyncBaseTransport):
    """An httpx transport that applies the outbound rules to every request (module doc)."""

    def __init__(
        self,
        policy: OutboundPolicy,
        *,
        trusted_origin: str | None = None,
        credentials: CredentialScope | None = None,
        resolver: Resolver = resolve,
        inner: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.policy = policy
        self._exempt = Origin.of(httpx.URL(trusted_origin)) if trusted_origin else None
        self._credentials = credentials
        self._resolve = resolver
        self._inner = inner or httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme not in _SCHEMES or not url.raw_host:
            raise OutboundRefused(str(url), "only http and https URLs with a host are fetched")
        addresses = await self._addresses(request)
        headers = self._scoped_headers(request)
        error: httpx.ConnectError | None = None
        for address in addresses:
            pinned = httpx.Request(
                request.method,
                url.copy_with(host=str(address)),
                headers=headers,
                stream=request.stream,
                extensions=_with_sni(request),
            )
            try:
                return await self._inner.handle_async_request(pinned)
            except httpx.ConnectError as exc:  # the next address, if any
                error = exc
        assert error is not None
        raise error

    async def _addresses(self, request: httpx.Request) -> list[IPAddress]:
        """The URL's addresses, every one allowed (or the origin exempt); else refused."""
        origin = Origin.of(request.url)
        try:
            addresses = await self._resolve(origin.host, origin.port)
        except (OSError, UnicodeError) as exc:
            raise httpx.ConnectError(f"{origin.host} does not resolve", request=request) from exc
        if origin == self._exempt:
            return addresses
        for address in addresses:
            if not self.policy.address_allowed(address):
                what = (
                    f"{address} is not"
                    if origin.host == str(address)
                    else f"{origin.host} resolves to {address}, which is not"
                )
                raise OutboundRefused(
                    str(request.url),
                    f"{what} a public address; the server does not connect to private or "
                    "internal networks",
                )
        return addresses

    def _scoped_headers(self, request: httpx.Request) -> httpx.Headers:
        headers = request.headers.copy()
        scope = self._credentials
        if scope is not None and not scope.allows(request.url):
            for name in scope.headers:
                headers.pop(name, None)
        return headers

    async def aclose(self) -> None:
        await self._inner.aclose()


def _with_sni(request: httpx.Request) -> dict[str, object]:
    """The request's extensions, plus the real host name for TLS once the URL holds an IP."""
    extensions = dict(request.extensions)
    if request.url.scheme == "https":
        extensions["sni_hostname"] = request.url.raw_host.decode("ascii")
    return extensions
