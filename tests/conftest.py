"""Shared fixtures. The network guard makes any connection outside loopback fail the test,
unless the test made that network itself (:func:`reachable`: the namespaces of ``netns.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import socket
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from easel.store import Store, connect
from easel.store.memory import MEMORY_URL
from loopback import Peer, running
from s3server import S3Server, moto_server
from tcpproxy import TcpProxy

# The tripo3d SDK starts geo-IP lookups on import unless this is set; set it before any test
# module imports it.
os.environ.setdefault("TRIPO_DISABLE_GEO_DETECTION", "1")

_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


class OutboundConnectionBlocked(AssertionError):
    """A test tried to reach a host outside loopback."""


# Private networks a test made itself (a bridge and namespaces), reachable while it runs.
_made_here: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []


@contextlib.contextmanager
def reachable(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> Iterator[None]:
    """Let the guard pass connections to ``network`` (a private one the test made) meanwhile."""
    if not network.is_private:
        raise ValueError(f"only a private network the test made may be reached, not {network}")
    _made_here.append(network)
    try:
        yield
    finally:
        _made_here.remove(network)


def _check(address: Any) -> None:
    if isinstance(address, (str, bytes)):  # AF_UNIX
        return
    host = address[0]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise OutboundConnectionBlocked(f"tests may not resolve and reach {host!r}") from None
    if not ip.is_loopback and not any(ip in network for network in _made_here):
        raise OutboundConnectionBlocked(f"tests may not connect to {host} (not loopback)")


def _check_or_close(sock: socket.socket, address: Any) -> None:
    try:
        _check(address)
    except OutboundConnectionBlocked:
        sock.close()
        raise


def _guarded_connect(self: socket.socket, address: Any) -> None:
    _check_or_close(self, address)
    _real_connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: Any) -> int:
    _check_or_close(self, address)
    return _real_connect_ex(self, address)


@pytest.fixture(autouse=True, scope="session")
def _no_outbound_network() -> Iterator[None]:
    setattr(socket.socket, "connect", _guarded_connect)  # noqa: B010
    setattr(socket.socket, "connect_ex", _guarded_connect_ex)  # noqa: B010
    yield
    setattr(socket.socket, "connect", _real_connect)  # noqa: B010
    setattr(socket.socket, "connect_ex", _real_connect_ex)  # noqa: B010


# -- databases: every store and API test runs on SQLite and on PostgreSQL --------------------

POSTGRES_URL = os.environ.get(
    "EASEL_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)


def _admin(sql: str) -> None:
    """Run one statement on the admin database (in a thread: a test's loop may be running)."""

    async def run() -> None:
        url = make_url(POSTGRES_URL).set(drivername="postgresql")
        conn = await asyncpg.connect(url.render_as_string(hide_password=False))
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, run()).result()


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's S3 (and STS) server on loopback, one per test module."""
    with moto_server(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A database of its own for this test session, dropped at the end. A missing server
    skips locally and fails in CI (``EASEL_CI=1``)."""
    name = f"easel_test_{os.getpid()}"
    try:
        _admin(f"CREATE DATABASE {name}")
    except (OSError, asyncpg.PostgresError) as exc:
        if os.environ.get("EASEL_CI"):
            raise
        pytest.skip(f"PostgreSQL is not reachable at {POSTGRES_URL}: {exc}")
    try:
        yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        _admin(f"DROP DATABASE {name} WITH (FORCE)")


async def reset_schema(url: str) -> None:
    """Empty the PostgreSQL database at ``url``."""
    plain = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    conn = await asyncpg.connect(plain)
    try:
        await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    finally:
        await conn.close()


async def _empty_database(request: pytest.FixtureRequest, kind: str, tmp_path: Path) -> str:
    if kind == "memory":
        return MEMORY_URL
    if kind == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'easel.db'}"
    url: str = request.getfixturevalue("postgres_database")
    await reset_schema(url)
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database: a SQLite file, or a freshly emptied PostgreSQL schema."""
    return await _empty_database(request, request.param, tmp_path)


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """``database_url``'s databases and the in-memory store (``memory://``): for what every
    store must do alike (the store contract, and service and API tests that test no SQL)."""
    return await _empty_database(request, request.param, tmp_path)


@pytest.fixture
async def any_store(store_url: str) -> AsyncIterator[Store]:
    """An empty store of each kind (see ``store_url``), closed after the test."""
    store = await connect(store_url)
    try:
        yield store
    finally:
        await store.close()


# -- other hosts: Linux answers on all of 127.0.0.0/8 -----------------------------------------


@pytest.fixture
def outsider() -> Iterator[Peer]:
    """A server on 127.0.0.2: a host that is not the provider (tests allow it by policy)."""
    with running(Peer("127.0.0.2")) as peer:
        yield peer


@pytest.fixture
def internal() -> Iterator[Peer]:
    """A server on 127.0.0.3: an internal service the address rules must keep out of reach."""
    with running(Peer("127.0.0.3")) as peer:
        yield peer


@pytest.fixture
async def postgres_behind_proxy(postgres_database: str) -> AsyncIterator[tuple[str, TcpProxy]]:
    """The test database behind a :class:`TcpProxy`: cut it for an outage, start it again
    to end one."""
    await reset_schema(postgres_database)
    real = make_url(postgres_database)
    proxy = TcpProxy(real.port or 5432)
    await proxy.start()
    try:
        yield real.set(port=proxy.port).render_as_string(hide_password=False), proxy
    finally:
        with contextlib.suppress(AssertionError):  # already cut
            await proxy.cut()
