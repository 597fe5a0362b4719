"""Reference images from a File's ``url``, and the URL checks a client's URLs get at submit.

The address rules are :mod:`easel.outbound`'s, applied to the URL a client sends (at submit,
by :func:`check_url`, so a bad URL is refused before any credit moves) and again, by the
guarded transport, to every connection the download makes, redirect hops included:

* Only ``http`` and ``https`` URLs with a host are fetched; a host that does not resolve or
  resolves to ANY address outside the public internet (per the IANA special-purpose
  registries) is refused with 1004. The operator's ``allow_outbound_cidrs`` override this.
* The connection goes to the checked address itself (no DNS rebinding); proxies from the
  environment are ignored.
* Redirects are followed, at most ``max_redirects`` of them, each one checked anew.
* The body is streamed with a hard cap (and refused early when ``Content-Length`` is too big):
  too big → 1004; empty → 2003.
* A timeout (connect, read or the whole download), a connection error, a non-2xx answer or too
  many redirects → 2019, "could not download <url>: …".
"""

from __future__ import annotations

import asyncio

import httpx

from easel.domain.errors import EmptyImage, FileNotFound, InvalidParameter
from easel.outbound import (
    GuardedTransport,
    OutboundPolicy,
    OutboundRefused,
    Resolver,
    guarded_client,
    resolve,
)

_SCHEMES = frozenset({"http", "https"})
_MB = 1024 * 1024
_USE_UPLOAD = "Use a publicly reachable http(s) URL, or upload the image with "
_USE_UPLOAD += "'POST /v2/openapi/upload' and send its image_token."
_HEADERS = {"Accept": "image/png, image/jpeg, image/*;q=0.8", "User-Agent": "easel-fetch"}


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


async def check_url(url: str, policy: OutboundPolicy, resolver: Resolver = resolve) -> None:
    """Refuse (1004) a URL the server must not fetch: see the module's rules."""
    what = f"url {url!r}"
    parsed = _parse(url, what)
    host = parsed.raw_host.decode("ascii")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        addresses = await resolver(host, port)
    except (OSError, UnicodeError) as exc:
        raise InvalidParameter(
            f"{what} has host {host!r}, which does not resolve.", _USE_UPLOAD
        ) from exc
    for address in addresses:
        if not policy.address_allowed(address):
            raise InvalidParameter(
                f"{what} points at {address}, which is not a public address; "
                "this server does not fetch from private or internal networks.",
                _USE_UPLOAD,
            )


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
    if declared.isascii() and declared.isdigit() and int(declared) > max_bytes:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > max_bytes:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def _download(client: httpx.AsyncClient, url: str, max_bytes: int) -> bytes:
    async with client.stream("GET", url, headers=_HEADERS) as response:
        if not response.is_success:
            reason = f"the server answered HTTP {response.status_code} {response.reason_phrase}"
            raise FileNotFound(f"could not download {url}: {reason.strip()}.")
        body = await read_at_most(response, max_bytes, _too_large(url, max_bytes))
    if not body:
        raise EmptyImage(f"the image at {url} is empty.")
    return body


def _refused(url: str, refusal: OutboundRefused) -> InvalidParameter:
    where = f"url {url!r}"
    if refusal.url != url:
        where += f" redirects to {refusal.url!r}, which"
    return InvalidParameter(f"{where} is refused: {refusal.reason}.", _USE_UPLOAD)


async def fetch_image(
    url: str,
    policy: OutboundPolicy,
    *,
    timeout_s: float = 20.0,
    max_bytes: int = 20 * 1024 * 1024,
    max_redirects: int = 5,
    resolver: Resolver = resolve,
) -> bytes:
    """Download the image at ``url`` under the module's rules and return its bytes."""
    _parse(url, f"url {url!r}")
    transport = GuardedTransport(policy, resolver=resolver)
    client = guarded_client(
        transport, timeout_s=timeout_s, follow_redirects=True, max_redirects=max_redirects
    )
    try:
        async with asyncio.timeout(timeout_s), client:
            return await _download(client, url, max_bytes)
    except OutboundRefused as refusal:
        raise _refused(url, refusal) from None
    except httpx.TooManyRedirects as exc:
        raise FileNotFound(
            f"could not download {url}: more than {max_redirects} redirects."
        ) from exc
    except (httpx.TimeoutException, TimeoutError) as exc:
        raise FileNotFound(f"could not download {url}: no answer within {timeout_s:g} s.") from exc
    except httpx.HTTPError as exc:
        detail = str(exc) or type(exc).__name__
        raise FileNotFound(f"could not download {url}: {detail}.") from exc
