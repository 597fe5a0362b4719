"""Fetching reference images from a File's ``url``, safely (no SSRF).

The rules, applied to the URL a client sends and again to every redirect target:

* Only ``http`` and ``https`` URLs with a host are fetched.
* The host is resolved with the event loop's ``getaddrinfo``; if it does not resolve, or ANY
  of its addresses is not a public (global) unicast address, the URL is refused with 1004.
  Refused are loopback, private (RFC 1918, ``fc00::/7``), link-local (``169.254/16`` with the
  cloud metadata address, ``fe80::/10``), site-local, unspecified, multicast, reserved and
  shared (``100.64/10``) addresses; an IPv6 address embedding an IPv4 one (IPv4-mapped,
  6to4, NAT64) is judged by the IPv4 address. The operator's ``allow_cidrs`` override this.
* The connection goes to the checked address itself, never to the name again (no DNS
  rebinding): the URL's host is replaced by the IP literal, the original ``Host`` header is
  sent and, for https, the real name is used for SNI and the certificate check. Proxies from
  the environment are ignored.
* Redirects are followed by hand, at most ``max_redirects`` of them, each one checked anew.
* The body is streamed with a hard cap (and refused early when ``Content-Length`` is too big):
  too big → 1004; empty → 2003.
* A timeout (connect, read or the whole download), a connection error, a non-2xx answer or too
  many redirects → 2019, "could not download <url>: …".
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from easel.errors import EmptyImage, FileNotFound, InvalidParameter

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_SCHEMES = frozenset({"http", "https"})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_MB = 1024 * 1024
_USE_UPLOAD = "Use a publicly reachable http(s) URL, or upload the image with "
_USE_UPLOAD += "'POST /v2/openapi/upload' and send its image_token."
_HEADERS = {"Accept": "image/png, image/jpeg, image/*;q=0.8", "User-Agent": "easel-fetch"}


@dataclass(frozen=True, slots=True)
class OutboundPolicy:
    """Which addresses the server may fetch from: public ones, plus ``allow_cidrs``."""

    allow_cidrs: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_strings(cls, cidrs: Sequence[str]) -> OutboundPolicy:
        """Build from CIDR strings such as ``"127.0.0.0/8"`` (ValueError when malformed)."""
        return cls(tuple(ipaddress.ip_network(c.strip(), strict=False) for c in cidrs))

    def address_allowed(self, address: IPAddress) -> bool:
        """True for a public unicast address or one inside an allowed network."""
        if any(address.version == net.version and address in net for net in self.allow_cidrs):
            return True
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return self.address_allowed(embedded)
        return _is_public(address)


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _is_public(address: IPAddress) -> bool:
    site_local = isinstance(address, ipaddress.IPv6Address) and address.is_site_local
    return address.is_global and not (
        site_local
        or address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_unspecified
        or address.is_multicast
        or address.is_reserved
    )


def _parse(url: str, what: str) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError) as exc:
        raise InvalidParameter(f"{what} is not a valid URL: {exc}.", _USE_UPLOAD) from exc
    if parsed.scheme not in _SCHEMES:
        scheme = parsed.scheme or "none"
        raise InvalidParameter(f"{what} has scheme {scheme!r}; only http and https.", _USE_UPLOAD)
    if not parsed.raw_host:
        raise InvalidParameter(f"{what} has no host.", _USE_UPLOAD)
    return parsed


def _unresolved(what: str, host: str) -> str:
    return f"{what} has host {host!r}, which does not resolve."


async def _resolve(parsed: httpx.URL, policy: OutboundPolicy, what: str) -> list[IPAddress]:
    host = parsed.raw_host.decode("ascii")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise InvalidParameter(_unresolved(what, host), _USE_UPLOAD) from exc
    addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))
    if not addresses:
        raise InvalidParameter(_unresolved(what, host), _USE_UPLOAD)
    for address in addresses:
        if not policy.address_allowed(address):
            raise InvalidParameter(
                f"{what} points at {address}, which is not a public address; "
                "this server does not fetch from private or internal networks.",
                _USE_UPLOAD,
            )
    return addresses


async def check_url(url: str, policy: OutboundPolicy) -> None:
    """Refuse (1004) a URL the server must not fetch: see the module's rules."""
    await checked_addresses(url, policy)


async def checked_addresses(url: str, policy: OutboundPolicy) -> tuple[httpx.URL, list[IPAddress]]:
    """``url`` parsed, with the addresses it resolves to, all allowed; else 1004."""
    parsed = _parse(url, f"url {url!r}")
    return parsed, await _resolve(parsed, policy, f"url {url!r}")


def pinned(parsed: httpx.URL, address: IPAddress) -> tuple[httpx.URL, str, dict[str, Any]]:
    """Where to connect for ``parsed`` at the checked ``address`` (no DNS rebinding): the URL
    with the IP literal as host, the original ``Host`` header value and, for https, the
    request extensions that keep the real name for SNI and the certificate check."""
    sni = {"sni_hostname": parsed.raw_host.decode("ascii")} if parsed.scheme == "https" else {}
    return parsed.copy_with(host=str(address)), parsed.netloc.decode("ascii"), sni


def _limit_text(max_bytes: int) -> str:
    return f"{max_bytes // _MB} MB" if max_bytes % _MB == 0 else f"{max_bytes} bytes"


def _too_large(url: str, max_bytes: int) -> InvalidParameter:
    return InvalidParameter(
        f"the image at {url} is larger than {_limit_text(max_bytes)}.", "Send a smaller image."
    )


async def read_at_most(response: httpx.Response, max_bytes: int, too_large: Exception) -> bytes:
    """The body of a streamed ``response``; ``too_large`` is raised, the rest unread, as
    soon as it declares or delivers more than ``max_bytes``."""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > max_bytes:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def _read_body(response: httpx.Response, url: str, max_bytes: int) -> bytes:
    if not response.is_success:
        reason = f"the server answered HTTP {response.status_code} {response.reason_phrase}"
        raise FileNotFound(f"could not download {url}: {reason.strip()}.")
    body = await read_at_most(response, max_bytes, _too_large(url, max_bytes))
    if not body:
        raise EmptyImage(f"the image at {url} is empty.")
    return body


async def _open(
    client: httpx.AsyncClient, parsed: httpx.URL, addresses: list[IPAddress]
) -> httpx.Response:
    """Send the GET to the checked addresses in turn (the next only when connecting fails)."""
    error: httpx.ConnectError | None = None
    for address in addresses:
        target, host, extensions = pinned(parsed, address)
        headers = {**_HEADERS, "Host": host}
        request = client.build_request("GET", target, headers=headers, extensions=extensions)
        try:
            return await client.send(request, stream=True)
        except httpx.ConnectError as exc:
            error = exc
    assert error is not None
    raise error


async def _follow(
    client: httpx.AsyncClient, url: str, policy: OutboundPolicy, max_bytes: int, max_redirects: int
) -> bytes:
    what = f"url {url!r}"
    current = _parse(url, what)
    for _ in range(max_redirects + 1):
        response = await _open(client, current, await _resolve(current, policy, what))
        try:
            location = response.headers.get("location")
            if response.status_code not in _REDIRECTS or location is None:
                return await _read_body(response, url, max_bytes)
        finally:
            await response.aclose()
        target = str(current.join(location))
        what = f"url {url!r} redirects to {target!r}, which"
        current = _parse(target, what)
    raise FileNotFound(f"could not download {url}: more than {max_redirects} redirects.")


async def fetch_image(
    url: str,
    policy: OutboundPolicy,
    *,
    timeout_s: float = 20.0,
    max_bytes: int = 20 * 1024 * 1024,
    max_redirects: int = 5,
) -> bytes:
    """Download the image at ``url`` under the module's rules and return its bytes."""
    try:
        async with (
            asyncio.timeout(timeout_s),
            httpx.AsyncClient(
                follow_redirects=False, trust_env=False, timeout=httpx.Timeout(timeout_s)
            ) as client,
        ):
            return await _follow(client, url, policy, max_bytes, max_redirects)
    except (httpx.TimeoutException, TimeoutError) as exc:
        raise FileNotFound(f"could not download {url}: no answer within {timeout_s:g} s.") from exc
    except httpx.HTTPError as exc:
        detail = str(exc) or type(exc).__name__
        raise FileNotFound(f"could not download {url}: {detail}.") from exc
