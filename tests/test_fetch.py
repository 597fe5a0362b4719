"""Specification of the safe URL fetcher: SSRF rules, redirects, size caps, timeouts.

Real HTTP servers run on loopback in threads; nothing here reaches beyond this machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import ipaddress
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from PIL import Image

from easel.domain.errors import EmptyImage, FileNotFound, InvalidParameter
from easel.outbound import OutboundPolicy
from easel.outbound.fetch import check_url, fetch_image

LOOPBACK = OutboundPolicy.from_strings(["127.0.0.0/8", "::1/128"])
NOTHING_ALLOWED = OutboundPolicy()


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


PNG = _png()


# --- loopback servers -------------------------------------------------------------------------


@dataclass
class Route:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_length: int | None = None  # None: len(body); -1: no header (close-delimited)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str) -> None:
        super().__init__((host, 0), _Handler)
        self.routes: dict[str, Route] = {}
        self.hosts_seen: list[str] = []

    def url(self, path: str) -> str:
        return f"http://{self.server_address[0]!s}:{self.server_port}{path}"

    def handle_error(self, request: object, client_address: object) -> None:
        """Quiet: a client that hangs up early (the size caps) is expected."""


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        self.server.hosts_seen.append(self.headers.get("Host", ""))
        route = self.server.routes.get(self.path, Route(404, b"not found"))
        self.send_response(route.status)
        for name, value in route.headers.items():
            self.send_header(name, value)
        length = len(route.body) if route.content_length is None else route.content_length
        if length >= 0:
            self.send_header("Content-Length", str(length))
        self.end_headers()
        self.wfile.write(route.body)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


@contextlib.contextmanager
def _running(host: str) -> Iterator[_Server]:
    server = _Server(host)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def server() -> Iterator[_Server]:
    with _running("127.0.0.1") as running:
        yield running


@pytest.fixture
def server2() -> Iterator[_Server]:
    """A second server on 127.0.0.2 (all of 127/8 is loopback)."""
    with _running("127.0.0.2") as running:
        yield running


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections (the kernel's backlog) but never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield int(listener.getsockname()[1])


# --- the address rules ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.0.0.1",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "255.255.255.255",
        "240.0.0.1",
        "224.0.0.1",
        "::",
        "::1",
        "fe80::1",
        "fec0::1",
        "fc00::1",
        "fd12:3456::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "2002:a00:1::",  # 6to4 wrapping 10.0.0.1
        "64:ff9b::a9fe:a9fe",  # NAT64 wrapping 169.254.169.254
    ],
)
def test_non_public_addresses_are_refused(address: str) -> None:
    assert not NOTHING_ALLOWED.address_allowed(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert NOTHING_ALLOWED.address_allowed(ipaddress.ip_address(address))


def test_the_allow_list_opens_only_its_own_networks() -> None:
    policy = OutboundPolicy.from_strings(["127.0.0.0/8", " 10.1.0.0/16 "])
    assert policy.address_allowed(ipaddress.ip_address("127.0.0.1"))
    assert policy.address_allowed(ipaddress.ip_address("::ffff:127.0.0.1"))
    assert policy.address_allowed(ipaddress.ip_address("10.1.2.3"))
    assert not policy.address_allowed(ipaddress.ip_address("10.2.0.1"))
    assert not policy.address_allowed(ipaddress.ip_address("::1"))
    assert not OutboundPolicy.from_strings(["::/0"]).address_allowed(
        ipaddress.ip_address("10.0.0.1")
    )


def test_a_malformed_cidr_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="not-a-network"):
        OutboundPolicy.from_strings(["not-a-network"])


# --- check_url --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["ftp://example.com/a.png", "file:///etc/passwd", "gopher://x/", "/a.png", "http:///a"]
)
async def test_only_http_urls_with_a_host_are_accepted(url: str) -> None:
    with pytest.raises(InvalidParameter) as caught:
        await check_url(url, LOOPBACK)
    assert caught.value.code == 1004
    assert caught.value.suggestion
    with pytest.raises(InvalidParameter):
        await fetch_image(url, LOOPBACK)


async def test_a_host_that_does_not_resolve_is_refused() -> None:
    url = "http://no-such-host.invalid/a.png"
    with pytest.raises(InvalidParameter, match="does not resolve") as caught:
        await check_url(url, LOOPBACK)
    assert caught.value.code == 1004


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1/a.png", "https://[::1]:8443/a.png", "http://169.254.169.254/latest/"],
)
async def test_check_url_refuses_internal_addresses(url: str) -> None:
    with pytest.raises(InvalidParameter, match="not a public address") as caught:
        await check_url(url, NOTHING_ALLOWED)
    assert caught.value.code == 1004


async def test_check_url_accepts_allowed_addresses() -> None:
    await check_url("http://127.0.0.1:9/a.png", LOOPBACK)
    await check_url("http://localhost/a.png", LOOPBACK)


# --- fetch_image ------------------------------------------------------------------------------


async def test_a_png_on_an_allowed_loopback_server_is_fetched(server: _Server) -> None:
    server.routes["/a.png"] = Route(body=PNG, headers={"Content-Type": "image/png"})
    assert await fetch_image(server.url("/a.png"), LOOPBACK) == PNG


async def test_the_loopback_server_is_refused_without_an_allow_list(server: _Server) -> None:
    server.routes["/a.png"] = Route(body=PNG)
    with pytest.raises(InvalidParameter) as caught:
        await fetch_image(server.url("/a.png"), NOTHING_ALLOWED)
    assert caught.value.code == 1004
    assert server.hosts_seen == []  # refused before connecting


async def test_the_original_host_header_is_sent(server: _Server) -> None:
    server.routes["/a.png"] = Route(body=PNG)
    url = f"http://localhost:{server.server_port}/a.png"
    assert await fetch_image(url, LOOPBACK) == PNG
    assert server.hosts_seen == [f"localhost:{server.server_port}"]


async def test_relative_redirects_are_followed(server: _Server) -> None:
    server.routes["/old"] = Route(302, headers={"Location": "/a.png"})
    server.routes["/a.png"] = Route(body=PNG)
    assert await fetch_image(server.url("/old"), LOOPBACK) == PNG


async def test_a_redirect_to_a_non_allowed_address_is_refused(
    server: _Server, server2: _Server
) -> None:
    server.routes["/secret.png"] = Route(body=PNG)
    server2.routes["/r"] = Route(302, headers={"Location": server.url("/secret.png")})
    only_server2 = OutboundPolicy.from_strings(["127.0.0.2/32"])
    with pytest.raises(InvalidParameter, match=r"redirects to .* 127\.0\.0\.1") as caught:
        await fetch_image(server2.url("/r"), only_server2)
    assert caught.value.code == 1004
    assert server.hosts_seen == []
    assert len(server2.hosts_seen) == 1


async def test_a_redirect_to_another_scheme_is_refused(server: _Server) -> None:
    server.routes["/r"] = Route(301, headers={"Location": "file:///etc/passwd"})
    with pytest.raises(
        InvalidParameter, match=r"redirects to .file:.*refused: only http and https"
    ) as caught:
        await fetch_image(server.url("/r"), LOOPBACK)
    assert caught.value.code == 1004


def _chain(server: _Server, hops: int) -> str:
    for hop in range(hops):
        server.routes[f"/hop{hop}"] = Route(307, headers={"Location": f"/hop{hop + 1}"})
    server.routes[f"/hop{hops}"] = Route(body=PNG)
    return server.url("/hop0")


async def test_redirects_up_to_the_limit_are_followed(server: _Server) -> None:
    assert await fetch_image(_chain(server, 3), LOOPBACK, max_redirects=3) == PNG


async def test_redirects_beyond_the_limit_are_refused(server: _Server) -> None:
    with pytest.raises(FileNotFound, match="more than 3 redirects") as caught:
        await fetch_image(_chain(server, 4), LOOPBACK, max_redirects=3)
    assert caught.value.code == 2019
    assert len(server.hosts_seen) == 4


async def test_a_redirect_loop_is_refused(server: _Server) -> None:
    server.routes["/loop"] = Route(302, headers={"Location": "/loop"})
    with pytest.raises(FileNotFound) as caught:
        await fetch_image(server.url("/loop"), LOOPBACK)
    assert caught.value.code == 2019
    assert len(server.hosts_seen) == 6  # the first request and 5 redirects


async def test_a_body_over_the_cap_is_refused_while_streaming(server: _Server) -> None:
    server.routes["/big"] = Route(body=b"x" * 5000, content_length=-1)
    server.routes["/fits"] = Route(body=b"x" * 1000, content_length=-1)
    with pytest.raises(InvalidParameter, match="larger than 1000 bytes") as caught:
        await fetch_image(server.url("/big"), LOOPBACK, max_bytes=1000)
    assert caught.value.code == 1004
    assert await fetch_image(server.url("/fits"), LOOPBACK, max_bytes=1000) == b"x" * 1000


async def test_a_content_length_over_the_cap_is_refused_early(server: _Server) -> None:
    server.routes["/huge"] = Route(body=b"x" * 10, content_length=21 * 1024 * 1024)
    with pytest.raises(InvalidParameter, match="larger than 20 MB") as caught:
        await fetch_image(server.url("/huge"), LOOPBACK)
    assert caught.value.code == 1004


async def test_an_empty_body_is_an_empty_image(server: _Server) -> None:
    server.routes["/empty"] = Route(body=b"")
    with pytest.raises(EmptyImage) as caught:
        await fetch_image(server.url("/empty"), LOOPBACK)
    assert caught.value.code == 2003


@pytest.mark.parametrize("status", [404, 403, 500])
async def test_a_non_2xx_answer_is_file_not_found(server: _Server, status: int) -> None:
    url = server.url("/missing.png")
    server.routes["/missing.png"] = Route(status, b"no")
    with pytest.raises(FileNotFound, match=f"could not download {url}: .*HTTP {status}") as caught:
        await fetch_image(url, LOOPBACK)
    assert caught.value.code == 2019


async def test_a_server_that_never_answers_times_out(silent_port: int) -> None:
    url = f"http://127.0.0.1:{silent_port}/a.png"
    started = time.monotonic()
    with pytest.raises(FileNotFound, match=f"could not download {url}: no answer") as caught:
        await fetch_image(url, LOOPBACK, timeout_s=0.5)
    assert caught.value.code == 2019
    assert time.monotonic() - started < 5


async def test_a_refused_connection_is_file_not_found() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    url = f"http://127.0.0.1:{port}/a.png"
    with pytest.raises(FileNotFound, match=f"could not download {url}") as caught:
        await fetch_image(url, LOOPBACK, timeout_s=2)
    assert caught.value.code == 2019


async def test_the_connection_goes_to_the_checked_address(
    server: _Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No DNS rebinding: the name is resolved once, then the checked IP is dialled."""
    loop = asyncio.get_running_loop()
    real_getaddrinfo = loop.getaddrinfo
    answers = iter(["127.0.0.1", "10.0.0.1"])  # a rebinding resolver: public, then internal
    asked: list[bytes | str | None] = []

    async def rebinding_getaddrinfo(host: bytes | str | None, *args: Any, **kwargs: Any) -> Any:
        asked.append(host)
        if host == "rebind.test":
            host = next(answers)
        return await real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(loop, "getaddrinfo", rebinding_getaddrinfo)
    server.routes["/a.png"] = Route(body=PNG)
    url = f"http://rebind.test:{server.server_port}/a.png"
    assert await fetch_image(url, LOOPBACK) == PNG
    assert asked.count("rebind.test") == 1
    assert server.hosts_seen == [f"rebind.test:{server.server_port}"]
