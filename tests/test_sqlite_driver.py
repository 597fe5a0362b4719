"""easel.store.sqlite: SQLite statements on the event loop, waiting for locks without it."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest
from sqlalchemy import Connection, event, text

from easel.store import sqlite
from easel.store.db import create_engine


async def _ticks_while(work: asyncio.Future[object] | asyncio.Task[object]) -> int:
    """How many times a ticker coroutine ran while ``work`` was pending."""
    ticks = 0
    while not work.done():
        ticks += 1
        await asyncio.sleep(0.001)
    await work
    return ticks


async def _writer(path: Path, timeout_s: float = 5.0) -> sqlite.Connection:
    connection = await sqlite.connect(str(path), timeout_s=timeout_s)
    await connection.execute("PRAGMA journal_mode=WAL")
    return connection


async def test_a_locked_database_is_waited_for_without_blocking_the_loop(tmp_path: Path) -> None:
    holder = await _writer(tmp_path / "d.db")
    waiter = await _writer(tmp_path / "d.db")
    await holder.execute("CREATE TABLE t (x INTEGER)")
    await holder.execute("BEGIN IMMEDIATE")
    await holder.execute("INSERT INTO t VALUES (1)")

    async def write() -> object:
        await waiter.execute("BEGIN IMMEDIATE")  # locked until the holder commits
        await waiter.execute("INSERT INTO t VALUES (2)")
        await waiter.commit()
        return None

    async def release_later() -> None:
        await asyncio.sleep(0.1)
        await holder.commit()

    release = asyncio.create_task(release_later())
    started = time.monotonic()
    ticks = await _ticks_while(asyncio.create_task(write()))
    await release
    assert time.monotonic() - started >= 0.1  # it did wait for the lock ...
    assert ticks >= 10  # ... and the loop kept running meanwhile
    rows = await (await waiter.execute("SELECT x FROM t ORDER BY x")).fetchall()
    assert rows == [(1,), (2,)]
    await holder.close()
    await waiter.close()


async def test_a_lock_held_past_the_timeout_fails_the_statement(tmp_path: Path) -> None:
    holder = await _writer(tmp_path / "d.db")
    waiter = await _writer(tmp_path / "d.db", timeout_s=0.05)
    await holder.execute("BEGIN IMMEDIATE")
    started = time.monotonic()
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        await waiter.execute("BEGIN IMMEDIATE")
    assert 0.05 <= time.monotonic() - started < 1.0
    await holder.rollback()
    await holder.close()
    await waiter.close()


async def test_a_stale_snapshot_is_not_retried(tmp_path: Path) -> None:
    """A read transaction that another writer has overtaken cannot become a writer: waiting
    would not help, so it fails at once (SQLITE_BUSY_SNAPSHOT), not after the timeout."""
    reader = await _writer(tmp_path / "d.db", timeout_s=30.0)
    writer = await _writer(tmp_path / "d.db")
    await writer.execute("CREATE TABLE t (x INTEGER)")
    await reader.execute("BEGIN")
    await (await reader.execute("SELECT count(*) FROM t")).fetchall()  # takes a snapshot
    await writer.execute("INSERT INTO t VALUES (1)")  # autocommit: the snapshot is now old
    started = time.monotonic()
    with pytest.raises(sqlite3.OperationalError):
        await reader.execute("INSERT INTO t VALUES (2)")
    assert time.monotonic() - started < 1.0
    await reader.rollback()
    await reader.close()
    await writer.close()


async def test_a_write_transaction_runs_in_one_turn_of_the_loop(tmp_path: Path) -> None:
    """Through SQLAlchemy, BEGIN IMMEDIATE to COMMIT does not yield to the loop: no other
    coroutine ever runs while the write lock is held."""
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'e.db'}")
    opened: list[sqlite3.Connection] = []

    @event.listens_for(engine.sync_engine, "begin")
    def _note(conn: Connection) -> None:
        opened.append(conn.connection.driver_connection._connection)  # type: ignore[union-attr]

    seen_open = ticks = 0

    async def ticker() -> None:
        nonlocal seen_open, ticks
        while True:
            ticks += 1
            seen_open += sum(connection.in_transaction for connection in opened)
            await asyncio.sleep(0)

    try:
        ticking = asyncio.create_task(ticker())
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE t (x INTEGER)"))
        for _ in range(3):
            async with engine.begin() as conn:
                for x in range(20):
                    await conn.execute(text("INSERT INTO t VALUES (:x)"), {"x": x})
                await conn.execute(text("SELECT count(*) FROM t"))
        ticking.cancel()
        assert len(opened) == 4 and ticks > 4  # the ticker ran between the transactions ...
        assert seen_open == 0  # ... and never inside one
    finally:
        await engine.dispose()


async def test_a_closed_connection_refuses_statements(tmp_path: Path) -> None:
    connection = await _writer(tmp_path / "d.db")
    await connection.close()
    await connection.close()  # twice is harmless
    with pytest.raises(ValueError, match="no active connection"):
        await connection.execute("SELECT 1")
