"""Which errors are outages: ``easel.store.outage.is_outage`` over real exceptions.

Every exception below is raised by the real thing: asyncpg and SQLAlchemy against the test
PostgreSQL server (a closed port, ``pg_terminate_backend``, ``RAISE … USING ERRCODE``, a real
unique violation), SQLite through Easel's driver (a real lock, a real full database), obstore
against a closed port, Pillow on a corrupt image. An outage is retried later (503 with
``Retry-After``, a re-queued task); anything else is a bug that must fail loudly.
"""

from __future__ import annotations

import asyncio
import io
import logging
import socket
import sqlite3
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import obstore
import pytest
from obstore.store import MemoryStore, S3Store
from PIL import Image
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from apptools import engine_of, running_api, settings_for
from badimages import garbage_idat_png
from conftest import reset_schema
from easel.domain.errors import InvalidParameter, ServiceUnavailable, StoreUnavailable
from easel.storage.objects import ObjectStore
from easel.store import db
from easel.store import sqlite as easel_sqlite
from easel.store.db import connection, create_engine, transaction
from easel.store.outage import is_outage
from triggers import allow_inserts, refuse_inserts


@dataclass
class Where:
    """What a case may use: the session's PostgreSQL database and a temporary directory."""

    postgres: str
    tmp_path: Path

    @property
    def asyncpg_dsn(self) -> str:
        url = make_url(self.postgres).set(drivername="postgresql")
        return url.render_as_string(hide_password=False)


Build = Callable[[Where], Awaitable[BaseException]]


async def raised(work: Awaitable[Any]) -> BaseException:
    """The exception ``work`` raises (the test fails if it raises none)."""
    try:
        await work
    except Exception as exc:
        return exc
    raise AssertionError("the case raised nothing")


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- PostgreSQL, through SQLAlchemy as the store uses it ------------------------------------------


async def _on_postgres(where: Where, *statements: str) -> BaseException:
    engine = create_async_engine(where.postgres)
    try:

        async def run() -> None:
            async with engine.begin() as conn:
                for sql in statements:
                    await conn.execute(text(sql))

        return await raised(run())
    finally:
        await engine.dispose()


def server_error(sqlstate: str, message: str) -> Build:
    """PostgreSQL itself raising ``sqlstate`` with ``message`` (what it sends when, say, it
    is starting up), received by asyncpg and wrapped by SQLAlchemy as the API sees it."""
    sql = f"DO $$ BEGIN RAISE EXCEPTION '{message}' USING ERRCODE = '{sqlstate}'; END $$"
    return lambda where: _on_postgres(where, sql)


async def postgres_refused(where: Where) -> BaseException:
    url = make_url(where.postgres).set(port=closed_port())
    engine = create_async_engine(url)
    try:
        return await raised(engine.connect())
    finally:
        await engine.dispose()


async def postgres_terminated(where: Where) -> BaseException:
    return await _on_postgres(where, "SELECT pg_terminate_backend(pg_backend_pid())")


async def postgres_unique_violation(where: Where) -> BaseException:
    return await _on_postgres(
        where, "CREATE TEMP TABLE u (id int PRIMARY KEY)", "INSERT INTO u VALUES (1), (1)"
    )


async def postgres_value_too_long(where: Where) -> BaseException:
    return await _on_postgres(
        where, "CREATE TEMP TABLE v (s varchar(4))", "INSERT INTO v VALUES ('too long')"
    )


async def postgres_pool_timeout(where: Where) -> BaseException:
    engine = create_async_engine(where.postgres, pool_size=1, max_overflow=0, pool_timeout=0.1)
    try:
        async with engine.connect():
            return await raised(engine.connect())
    finally:
        await engine.dispose()


async def asyncpg_admin_shutdown(where: Where) -> BaseException:
    """asyncpg on its own (as the LISTEN connection uses it): 57P01 unwrapped."""
    conn = await asyncpg.connect(where.asyncpg_dsn)
    try:
        return await raised(
            conn.execute(
                "DO $$ BEGIN RAISE EXCEPTION 'terminating connection due to administrator "
                "command' USING ERRCODE = '57P01'; END $$"
            )
        )
    finally:
        await conn.close()


STARTING_UP = "the database system is starting up"
SHUTTING_DOWN = "the database system is shutting down"
TERMINATING = "terminating connection due to administrator command"

# (build, outage, what the exception's chain says: the case raised what it claims)
POSTGRES_CASES: list[Any] = [
    pytest.param(postgres_refused, True, "ConnectionRefusedError", id="connection-refused"),
    pytest.param(
        server_error("57P03", STARTING_UP), True, "CannotConnectNowError", id="starting-up"
    ),
    pytest.param(
        server_error("57P03", SHUTTING_DOWN), True, "CannotConnectNowError", id="shutting-down"
    ),
    pytest.param(
        server_error("57P01", TERMINATING), True, "AdminShutdownError", id="admin-shutdown"
    ),
    pytest.param(
        postgres_terminated, True, "ConnectionDoesNotExistError", id="pg_terminate_backend"
    ),
    pytest.param(
        server_error("53300", "sorry, too many clients already"),
        True,
        "TooManyConnectionsError",
        id="too-many-clients",
    ),
    pytest.param(
        server_error("58030", "could not read block"), True, "PostgresIOError", id="io-error"
    ),
    pytest.param(
        server_error("40P01", "deadlock detected"), True, "DeadlockDetectedError", id="deadlock"
    ),
    pytest.param(postgres_pool_timeout, True, "QueuePool limit", id="pool-timeout"),
    pytest.param(asyncpg_admin_shutdown, True, "AdminShutdownError", id="asyncpg-unwrapped"),
    pytest.param(postgres_unique_violation, False, "UniqueViolationError", id="unique-violation"),
    pytest.param(
        postgres_value_too_long, False, "StringDataRightTruncationError", id="value-too-long"
    ),
    pytest.param(server_error("P0001", "a plain RAISE"), False, "RaiseError", id="raise"),
    pytest.param(
        server_error("42P01", "relation does not exist"),
        False,
        "UndefinedTableError",
        id="undefined-table",
    ),
]


def described(exc: BaseException) -> str:
    """Every link of the chain, type and message, as a person reading the log sees them."""
    links: list[str] = []
    link: BaseException | None = exc
    while link is not None and len(links) < 16:
        links.append(f"{type(link).__name__}: {link}")
        link = link.__cause__ or link.__context__
    return " <- ".join(links)


def check(exc: BaseException, outage: bool, says: str) -> None:
    assert says in described(exc), described(exc)
    assert is_outage(exc) is outage, described(exc)


@pytest.fixture
def where(postgres_database: str, tmp_path: Path) -> Where:
    return Where(postgres_database, tmp_path)


@pytest.mark.parametrize(("build", "outage", "says"), POSTGRES_CASES)
async def test_postgresql_errors(where: Where, build: Build, outage: bool, says: str) -> None:
    check(await build(where), outage, says)


# -- SQLite, through Easel's driver and SQLAlchemy ---------------------------------------------


@pytest.fixture
async def sqlite_engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    path = str(tmp_path / "t.db")

    async def connect() -> easel_sqlite.Connection:
        return await easel_sqlite.connect(path, timeout_s=0.05)

    engine = create_async_engine("sqlite+aiosqlite://", async_creator=connect)
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, data BLOB)"))
    yield engine
    await engine.dispose()


async def _write(engine: AsyncEngine, *statements: str) -> BaseException:
    async def run() -> None:
        async with engine.begin() as conn:
            for sql in statements:
                await conn.execute(text(sql))

    return await raised(run())


async def sqlite_locked(engine: AsyncEngine, path: Path) -> BaseException:
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        return await _write(engine, "INSERT INTO t (data) VALUES (x'00')")
    finally:
        holder.close()


async def sqlite_full(engine: AsyncEngine, path: Path) -> BaseException:
    """A real SQLITE_FULL: the file may not grow past its current pages."""
    holder = sqlite3.connect(path, isolation_level=None)
    pages = holder.execute("PRAGMA page_count").fetchone()[0]
    holder.close()
    return await _write(
        engine,
        f"PRAGMA max_page_count = {pages}",
        "INSERT INTO t (data) VALUES (zeroblob(1000000))",
    )


async def sqlite_no_such_table(engine: AsyncEngine, path: Path) -> BaseException:
    return await _write(engine, "INSERT INTO missing VALUES (1)")


async def sqlite_unique_violation(engine: AsyncEngine, path: Path) -> BaseException:
    return await _write(engine, "INSERT INTO t (id) VALUES (1), (1)")


@pytest.mark.parametrize(
    ("build", "outage", "says"),
    [
        pytest.param(sqlite_locked, True, "database is locked", id="locked"),
        pytest.param(sqlite_full, True, "database or disk is full", id="full"),
        pytest.param(sqlite_no_such_table, False, "no such table", id="no-such-table"),
        pytest.param(sqlite_unique_violation, False, "UNIQUE constraint", id="unique"),
    ],
)
async def test_sqlite_errors(
    sqlite_engine: AsyncEngine,
    tmp_path: Path,
    build: Callable[[AsyncEngine, Path], Awaitable[BaseException]],
    outage: bool,
    says: str,
) -> None:
    check(await build(sqlite_engine, tmp_path / "t.db"), outage, says)


# -- the object store, the operating system, Pillow, bugs ---------------------------------------


def _s3_at_a_closed_port() -> S3Store:
    return S3Store(
        "bucket",
        endpoint=f"http://127.0.0.1:{closed_port()}",
        access_key_id="key",
        secret_access_key="secret",
        region="us-east-1",
        client_options={"allow_http": True},
        retry_config={"max_retries": 0, "retry_timeout": timedelta(seconds=1)},
    )


@dataclass
class Here:
    tmp_path: Path
    monkeypatch: pytest.MonkeyPatch


async def object_store_read_failed(here: Here) -> BaseException:
    return await raised(ObjectStore(_s3_at_a_closed_port(), "bucket", scheme="s3").get("k"))


async def obstore_unwrapped(here: Here) -> BaseException:
    return await raised(obstore.head_async(_s3_at_a_closed_port(), "k"))


async def object_not_found(here: Here) -> BaseException:
    return await raised(ObjectStore(MemoryStore(), "easel").get("missing"))


async def connection_reset(here: Here) -> BaseException:
    """A peer that resets the connection (SO_LINGER 0), seen by a reader."""
    accepted: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
        accepted.set_result(None)

    server = await asyncio.start_server(on_client, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await accepted
        return await raised(reader.read())
    finally:
        writer.close()
        server.close()


async def wrapper_of_a_reset(here: Here) -> BaseException:
    """A wrapper that says nothing itself: the verdict is its cause's."""
    reset = await connection_reset(here)
    try:
        raise RuntimeError("the request could not be completed") from reset
    except RuntimeError as exc:
        return exc


async def every_address_refused(here: Here) -> BaseException:
    """asyncio's plain OSError when a host name has two addresses and both refuse (as
    ``localhost`` with ::1 and 127.0.0.1 does on many hosts)."""
    loop = asyncio.get_running_loop()
    addresses = [
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", closed_port())),
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", closed_port())),
    ]

    async def resolve(*_: object, **__: object) -> list[Any]:
        return addresses

    here.monkeypatch.setattr(loop, "getaddrinfo", resolve)
    return await raised(asyncio.open_connection("db.internal", 5432))


async def pillow_broken_data_stream(here: Here) -> BaseException:
    async def decode() -> None:
        Image.open(io.BytesIO(garbage_idat_png())).load()

    return await raised(decode())


async def pillow_unidentified(here: Here) -> BaseException:
    async def identify() -> None:
        Image.open(io.BytesIO(b"not an image"))

    return await raised(identify())


async def file_not_found(here: Here) -> BaseException:
    async def read() -> None:
        (here.tmp_path / "missing").read_bytes()

    return await raised(read())


async def key_error(here: Here) -> BaseException:
    async def look_up() -> None:
        found: dict[str, int] = {}
        _ = found["missing"]

    return await raised(look_up())


async def service_unavailable(here: Here) -> BaseException:
    async def refuse() -> None:
        raise ServiceUnavailable("already decided: the API renders it as 503 itself")

    return await raised(refuse())


async def easel_error(here: Here) -> BaseException:
    async def refuse() -> None:
        raise InvalidParameter("a bad request is no outage, whatever caused it")

    return await raised(refuse())


@pytest.mark.parametrize(
    ("build", "outage", "says"),
    [
        pytest.param(object_store_read_failed, True, "failed to read k", id="store-read-failed"),
        pytest.param(obstore_unwrapped, True, "GenericError", id="obstore-generic-error"),
        pytest.param(connection_reset, True, "ConnectionResetError", id="connection-reset"),
        pytest.param(wrapper_of_a_reset, True, "RuntimeError", id="wrapper-of-a-reset"),
        pytest.param(every_address_refused, True, "Multiple exceptions", id="all-refused"),
        pytest.param(object_not_found, False, "ObjectNotFound", id="object-not-found"),
        pytest.param(pillow_broken_data_stream, False, "broken data stream", id="pillow-decode"),
        pytest.param(pillow_unidentified, False, "cannot identify", id="pillow-unidentified"),
        pytest.param(file_not_found, False, "FileNotFoundError", id="file-not-found"),
        pytest.param(key_error, False, "KeyError", id="key-error"),
        pytest.param(service_unavailable, True, "ServiceUnavailable", id="service-unavailable"),
        pytest.param(easel_error, False, "InvalidParameter", id="easel-error"),
    ],
)
async def test_other_errors(
    build: Callable[[Here], Awaitable[BaseException]],
    outage: bool,
    says: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    check(await build(Here(tmp_path, monkeypatch)), outage, says)


# -- the store's edge: outages leave as StoreUnavailable, bugs unchanged -------------------------


async def test_the_store_translates_an_outage_and_lets_a_bug_through(where: Where) -> None:
    """Above the store nobody needs a driver's exceptions: a refused connection leaves
    ``transaction``/``connection`` as ``StoreUnavailable`` (the driver's error its cause); a
    unique violation, a bug, leaves as itself."""
    refused = create_async_engine(make_url(where.postgres).set(port=closed_port()))
    live = create_async_engine(where.postgres)
    try:

        async def write(engine: AsyncEngine, *statements: str) -> None:
            async with transaction(engine) as conn:
                for sql in statements:
                    await conn.execute(text(sql))

        async def read(engine: AsyncEngine) -> None:
            async with connection(engine) as conn:
                await conn.execute(text("SELECT 1"))

        for exc in (await raised(write(refused, "SELECT 1")), await raised(read(refused))):
            assert isinstance(exc, StoreUnavailable), described(exc)
            assert isinstance(exc.__cause__, OSError | DBAPIError), described(exc)
            assert is_outage(exc)
        bug = await raised(
            write(live, "CREATE TEMP TABLE u (id int PRIMARY KEY)", "INSERT INTO u VALUES (1), (1)")
        )
        assert isinstance(bug, IntegrityError), described(bug)
    finally:
        await refused.dispose()
        await live.dispose()


# -- what an API client sees -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sqlstate", "message", "status"),
    [
        pytest.param("57P03", STARTING_UP, 503, id="starting-up"),
        pytest.param("57P03", SHUTTING_DOWN, 503, id="shutting-down"),
        pytest.param("57P01", TERMINATING, 503, id="admin-shutdown"),
        pytest.param("53300", "sorry, too many clients already", 503, id="too-many-clients"),
        pytest.param("23505", "duplicate key value violates unique constraint", 500, id="bug"),
    ],
)
async def test_the_api_answers_503_while_postgresql_is_away_and_500_for_a_bug(
    postgres_database: str,
    caplog: pytest.LogCaptureFixture,
    sqlstate: str,
    message: str,
    status: int,
) -> None:
    """PostgreSQL raises ``sqlstate`` inside the submit's transaction (a trigger on the tasks
    table): what the API meets while a server restarts, wrapped by SQLAlchemy in a plain
    ``DBAPIError``. Outages answer 503 with ``Retry-After`` and a warning; a bug answers 500
    with a traceback. Either way nothing is charged or stored."""
    await reset_schema(postgres_database)
    caplog.set_level(logging.WARNING, logger="easel.api")
    async with running_api(settings_for(postgres_database), run_worker=False) as api:
        await refuse_inserts(engine_of(api.runtime.store), "tasks", message, sqlstate=sqlstate)
        v2 = await api.submit(prompt="a fox")
        v3 = await api.client.post("/v3/generation/text-to-image", json={"prompt": "a fox"})
        assert await api.balance() == {"balance": 100, "frozen": 0}
        await allow_inserts(engine_of(api.runtime.store), "tasks")
        assert (await api.submit(prompt="a fox")).status_code == 200  # and it recovers
    for response in (v2, v3):
        assert response.status_code == status, response.text
        body = response.json()
        assert body["code"] == 1000
        assert ("Retry-After" in response.headers) is (status == 503)
        if status == 503:
            assert int(response.headers["Retry-After"]) > 0
            assert "try again shortly" in body["suggestion"]
    assert set(v2.json()) == {"code", "message", "suggestion"}
    assert v3.json()["request_id"] == v3.headers["X-Tripo-Trace-ID"]
    logged = [r for r in caplog.records if message in str(r.exc_info and r.exc_info[1])]
    warned = [r for r in caplog.records if message in r.getMessage()]
    assert (len(logged), len(warned)) == ((0, 2) if status == 503 else (2, 0))


async def test_postgres_ends_a_transaction_whose_client_went_silent(
    postgres_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every session carries ``idle_in_transaction_session_timeout``: a worker cut off
    mid-transaction cannot keep its row locks (and its task) for the hours TCP takes."""
    engine = create_engine(postgres_database)
    try:
        async with engine.connect() as conn:
            assert await conn.scalar(text("SHOW idle_in_transaction_session_timeout")) == "30s"
    finally:
        await engine.dispose()
    monkeypatch.setitem(db.POSTGRES_SESSION, "idle_in_transaction_session_timeout", "300ms")
    engine = create_engine(postgres_database)
    try:
        async with engine.connect() as conn:
            await conn.begin()
            await conn.execute(text("SELECT 1"))
            await asyncio.sleep(1.0)  # silent inside the transaction: the server ends it
            with pytest.raises(DBAPIError, match=r"idle-in-transaction timeout|closed"):
                await conn.execute(text("SELECT 1"))
    finally:
        await engine.dispose()
