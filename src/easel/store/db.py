"""Engine creation and migrations for SQLite (embedded) and PostgreSQL (scaled out)."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, event, exc, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from easel.domain.text import load_stored
from easel.store import sqlite
from easel.store.outage import translated

log = logging.getLogger("easel.store")
MIGRATIONS = Path(__file__).parent / "migrations"
BUSY_TIMEOUT_S = 30.0  # how long a SQLite statement waits for another writer's lock
# Connections kept open per SQLite engine. SQLAlchemy returns a connection to its pool a few
# loop turns after the transaction ends, so under load more are checked out than there are
# statements running; one opened beyond the pool is closed again on return, and a fresh one
# parses the schema before its first statement. An open SQLite connection costs memory only.
SQLITE_POOL_SIZE = 32
_READ_ONLY = "easel_read_only"


def is_sqlite(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "sqlite"


# Every PostgreSQL session: a transaction whose client goes silent (a worker host whose network
# was cut mid-transaction) is ended by the server after this long, releasing its row locks, so
# the task it held can be reclaimed when its lease lapses; TCP would notice after about two
# hours. Easel's transactions never wait on anything but the database.
POSTGRES_SESSION = {"idle_in_transaction_session_timeout": "30s"}
# A pooled PostgreSQL connection is pinged before use only when it sat idle in the pool this
# long. One given back a moment ago was working then, and under load every connection is, so
# the ping (a round trip: half of a poll's) is skipped where it costs most. A connection that
# breaks while busy fails its statement; SQLAlchemy then retires every connection of the pool
# opened before it, so a database restart costs one failed statement per process at most.
PING_IDLE_S = 1.0
_CHECKED_IN = "easel_checked_in"
# PostgreSQL connections a process keeps (the setting database_pool_size), and how long a
# statement waits for one of them when all are busy before it fails as an outage (503).
POSTGRES_POOL_SIZE = 20
POOL_TIMEOUT_S = 30.0


def create_engine(database_url: str, pool_size: int = POSTGRES_POOL_SIZE) -> AsyncEngine:
    """An async engine; SQLite gets WAL, a busy timeout and ``BEGIN IMMEDIATE`` writes.
    JSON columns read back through ``load_stored``: a value stored before the text rules
    held cannot make a task unreadable.

    PostgreSQL gets a pool of ``pool_size`` connections and no overflow: a connection is
    opened when the pool has none free and is kept, never closed on its return. SQLAlchemy's
    default (5 kept, 10 more opened on demand and closed again on return) opened 326
    connections in a 20 s run at 250 requests/s: each a new server process, its start-up
    and every statement prepared again, while the requests behind it waited (p50 of
    `GET /task` 51 ms; 4 ms with the pool kept: docs/performance.md). Without overflow the
    connections of a deployment are bounded by processes × ``pool_size``."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        engine = create_async_engine(
            url,
            json_deserializer=load_stored,
            connect_args={"server_settings": POSTGRES_SESSION},
            pool_size=pool_size,
            max_overflow=0,
            pool_timeout=POOL_TIMEOUT_S,
        )
        _ping_when_idle(engine, PING_IDLE_S)
        return engine
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    database, uri = url.database or ":memory:", bool(url.query.get("uri"))

    async def _connect() -> sqlite.Connection:
        return await sqlite.connect(database, timeout_s=BUSY_TIMEOUT_S, uri=uri)

    engine = create_async_engine(
        url,
        async_creator=_connect,
        pool_size=SQLITE_POOL_SIZE,
        max_overflow=SQLITE_POOL_SIZE,
        json_deserializer=load_stored,
    )

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # SQLAlchemy, not the driver, opens transactions (easel.store.sqlite connects with
        # isolation_level None), so BEGIN IMMEDIATE takes the write lock up front: the single
        # writer serialises claims and credit moves. A locked database is waited for there
        # too, without blocking the event loop.
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Connection) -> None:
        # Writers take the lock up front; readers (see read_only) share WAL snapshots, or
        # open no transaction at all.
        # Sent on the DBAPI cursor: SQLAlchemy's own execution path (compiled-statement cache,
        # result set-up, events) cost a write transaction more than all of SQLite's work.
        read_only = connection.get_execution_options().get(_READ_ONLY)
        if read_only != _PER_STATEMENT:
            cursor = connection.connection.cursor()
            try:
                cursor.execute("BEGIN" if read_only else "BEGIN IMMEDIATE")
            finally:
                cursor.close()

    return engine


_PER_STATEMENT = "per-statement"


def _ping_when_idle(engine: AsyncEngine, idle_s: float) -> None:
    """SQLAlchemy's pre-ping (``pool_pre_ping``), for the connections that sat in the pool
    longer than ``idle_s``; and, for every connection, the driver's own word that it is
    closed (a connection the server ended, such as a killed ``LISTEN`` connection given back
    to the pool, is known closed without a round trip). A dead one is replaced before it is
    used: the pool retries the checkout with a fresh connection."""
    pool, dialect = engine.sync_engine.pool, engine.sync_engine.dialect

    @event.listens_for(pool, "checkin")
    def _checked_in(_dbapi_connection: Any, record: Any) -> None:
        record.info[_CHECKED_IN] = time.monotonic()

    @event.listens_for(pool, "checkout")
    def _checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        since = record.info.pop(_CHECKED_IN, None)
        driver = getattr(dbapi_connection, "driver_connection", None)
        if driver is not None and driver.is_closed():  # the driver saw it close: no round trip
            raise exc.DisconnectionError("a pooled connection was closed")
        if since is None or time.monotonic() - since < idle_s:
            return  # new, or back in the pool a moment ago
        try:
            dialect.do_ping(dbapi_connection)
        except Exception as error:
            raise exc.DisconnectionError(f"an idle pooled connection is gone: {error}") from error


@contextlib.asynccontextmanager
async def transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """``engine.begin()`` at the store's edge: an outage leaves as ``StoreUnavailable``."""
    with translated():
        async with engine.begin() as conn:
            conn.info.pop(_AFTER_COMMIT, None)  # left by a transaction that rolled back
            yield conn
            callbacks = conn.info.pop(_AFTER_COMMIT, ())
    for callback in callbacks:
        callback()


_AFTER_COMMIT = "easel_after_commit"


def after_commit(conn: AsyncConnection, callback: Callable[[], None]) -> None:
    """Call ``callback`` once the :func:`transaction` of ``conn`` has committed (never if it
    rolls back)."""
    conn.info.setdefault(_AFTER_COMMIT, []).append(callback)


@contextlib.asynccontextmanager
async def connection(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """``engine.connect()`` at the store's edge: an outage leaves as ``StoreUnavailable``."""
    with translated():
        async with engine.connect() as conn:
            yield conn


def read_only(engine: AsyncEngine, *, snapshot: bool = True) -> AsyncEngine:
    """The same engine, for reads: on SQLite its transactions do not take the write lock.

    Without ``snapshot`` no transaction is opened: each statement reads the database as it
    is when it runs. That saves two statements (SQLite) or a round trip each for ``BEGIN``
    and ``ROLLBACK`` (PostgreSQL) on every read, for the reads whose statements need not
    agree with one another, such as a poll of a task.
    """
    if snapshot:
        return engine.execution_options(**{_READ_ONLY: True})
    if is_sqlite(engine):
        return engine.execution_options(**{_READ_ONLY: _PER_STATEMENT})
    return autocommit(engine)


def autocommit(engine: AsyncEngine) -> AsyncEngine:
    """The same PostgreSQL engine with each statement its own transaction: no ``BEGIN`` or
    ``COMMIT`` round trips, and the row locks a writing statement takes are held only until
    the statement itself commits (see :mod:`easel.store.changes`)."""
    return engine.execution_options(isolation_level="AUTOCOMMIT")


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to the newest migration (idempotent; safe at every start).

    Processes that start together (``easel serve --processes N``, replicas rolled out at
    once) migrate one after another: each holds the database's migration lock for its
    transaction, so the next one finds the schema already at head. Without it, two of them
    created the same tables on an empty PostgreSQL database and all but one failed. On
    PostgreSQL the lock is a transaction-scoped advisory lock; on SQLite the migration's
    ``BEGIN IMMEDIATE`` already takes the database's single write lock (waiting up to
    ``BUSY_TIMEOUT_S``), which serialises it the same way.
    """

    def _upgrade(connection: Connection) -> None:
        command.upgrade(alembic_config(connection), "head")

    async with engine.begin() as connection:
        if not is_sqlite(engine):
            await _take_migration_lock(connection)
        await connection.run_sync(_upgrade)


# The advisory lock key of migrations (any 64-bit number other code does not use): "easel"
# in ASCII, then 1.
MIGRATION_LOCK = 0x65617365_6C000001


async def _take_migration_lock(connection: AsyncConnection) -> None:
    """Hold PostgreSQL's migration lock until this transaction ends (commit or rollback)."""
    key = {"key": MIGRATION_LOCK}
    taken = await connection.scalar(text("SELECT pg_try_advisory_xact_lock(:key)"), key)
    if not taken:
        log.info("another process is migrating the database; waiting for it")
        await connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), key)
