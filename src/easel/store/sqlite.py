"""SQLite for asyncio without a thread: statements run on the event loop itself.

SQLAlchemy's ``sqlite+aiosqlite`` driver sends every statement to a thread of its own and
back, four hops a statement, and each hop waits for its turn on the event loop. On a busy
loop a write transaction then holds SQLite's one write lock across many turns of the loop,
and every other writer, in this process or another, waits behind it. A statement on a local
SQLite file takes microseconds, less than one such hop, so this module runs statements on the
loop: a transaction goes from ``BEGIN IMMEDIATE`` to ``COMMIT`` in one turn, unless the code
inside it awaits something else.

Nothing here waits for a lock in the loop's thread. The connection's busy timeout is 0: a
statement that finds the database locked (another connection is writing) is tried again
after an asyncio sleep, for up to ``timeout`` seconds, as SQLite's own busy handler would but
without blocking the loop. A statement that is slow by itself (a large scan) does hold the
loop; Easel's statements use indexes.

:func:`connect` speaks the part of aiosqlite's interface that SQLAlchemy's aiosqlite dialect
uses, and is given to it as ``async_creator`` (see :func:`easel.store.db.create_engine`).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")

# Sleeps between tries of a statement that found the database locked, in seconds; the last
# repeats until the timeout.
BUSY_BACKOFF_S = (0.0005, 0.001, 0.002, 0.004, 0.008)


def _locked(error: sqlite3.OperationalError) -> bool:
    """The database was locked by another connection: the statement did nothing and may be
    tried again. (``SQLITE_BUSY_SNAPSHOT`` may not: the transaction's snapshot is stale.)"""
    code: int | None = getattr(error, "sqlite_errorcode", None)
    if code is None:  # not raised by SQLite itself
        return False
    return code & 0xFF == sqlite3.SQLITE_BUSY and code != sqlite3.SQLITE_BUSY_SNAPSHOT


async def _when_unlocked(timeout_s: float, statement: Callable[[], T]) -> T:
    """Run ``statement``; while the database is locked, sleep (without blocking the loop)
    and try again, until ``timeout_s`` has passed."""
    deadline = time.monotonic() + timeout_s
    tries = 0
    while True:
        try:
            return statement()
        except sqlite3.OperationalError as error:
            if not _locked(error) or time.monotonic() >= deadline:
                raise
        await asyncio.sleep(BUSY_BACKOFF_S[min(tries, len(BUSY_BACKOFF_S) - 1)])
        tries += 1


class Cursor:
    """An aiosqlite-style cursor over a :class:`sqlite3.Cursor`."""

    def __init__(self, cursor: sqlite3.Cursor, timeout_s: float) -> None:
        self._cursor = cursor
        self._timeout_s = timeout_s

    async def __aenter__(self) -> Cursor:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        self._cursor.close()

    async def execute(self, sql: str, parameters: Sequence[Any] = ()) -> Cursor:
        await _when_unlocked(self._timeout_s, lambda: self._cursor.execute(sql, parameters))
        return self

    async def executemany(self, sql: str, parameters: Iterable[Sequence[Any]]) -> Cursor:
        rows = list(parameters)  # an iterator could not be read twice by a second try
        await _when_unlocked(self._timeout_s, lambda: self._cursor.executemany(sql, rows))
        return self

    async def fetchone(self) -> Any:
        return self._cursor.fetchone()

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        return self._cursor.fetchmany(self._cursor.arraysize if size is None else size)

    async def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()

    async def close(self) -> None:
        self._cursor.close()

    @property
    def description(self) -> Any:
        return self._cursor.description

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        return self._cursor.lastrowid

    @property
    def arraysize(self) -> int:
        return self._cursor.arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._cursor.arraysize = value


class Connection:
    """An aiosqlite-style connection over a :class:`sqlite3.Connection` in autocommit mode
    (SQLAlchemy's events, not the driver, open transactions)."""

    def __init__(self, connection: sqlite3.Connection, timeout_s: float) -> None:
        self._connection: sqlite3.Connection | None = connection  # None once closed
        self._timeout_s = timeout_s

    def _open(self) -> sqlite3.Connection:
        if self._connection is None:
            raise ValueError("no active connection")  # what aiosqlite raises; see the dialect
        return self._connection

    def cursor(self) -> Cursor:
        """A cursor, entered with ``async with`` as SQLAlchemy's dialect does."""
        return Cursor(self._open().cursor(), self._timeout_s)

    async def execute(self, sql: str, parameters: Sequence[Any] = ()) -> Cursor:
        return await self.cursor().execute(sql, parameters)

    async def commit(self) -> None:
        connection = self._open()
        await _when_unlocked(self._timeout_s, connection.commit)

    async def rollback(self) -> None:
        self._open().rollback()

    async def create_function(self, *args: Any, **kwargs: Any) -> None:
        self._open().create_function(*args, **kwargs)

    @property
    def isolation_level(self) -> str | None:
        return self._open().isolation_level

    async def close(self) -> None:
        self.stop()

    def stop(self) -> None:
        """Close now (SQLAlchemy's terminate); closing twice is harmless."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None


async def connect(database: str, *, timeout_s: float, uri: bool = False) -> Connection:
    """Open ``database``. SQLite checks that a connection stays in the thread that opened it;
    that check is off because SQLAlchemy may close a connection that the garbage collector
    found from another thread, never use one from two threads at once."""
    connection = sqlite3.connect(
        database, timeout=0, isolation_level=None, check_same_thread=False, uri=uri
    )
    return Connection(connection, timeout_s)
