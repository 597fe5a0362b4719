"""Engine creation and migrations for SQLite (embedded) and PostgreSQL (scaled out)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

MIGRATIONS = Path(__file__).parent / "migrations"
_READ_ONLY = "easel_read_only"


def is_sqlite(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "sqlite"


def create_engine(database_url: str) -> AsyncEngine:
    """An async engine; SQLite gets WAL, a busy timeout and ``BEGIN IMMEDIATE`` writes."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        return create_async_engine(url, pool_pre_ping=True)
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(url, connect_args={"timeout": 30})

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, open transactions, so BEGIN IMMEDIATE takes the
        # write lock up front: the single writer serialises claims and credit moves.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Connection) -> None:
        # Writers take the lock up front; readers (see read_only) share WAL snapshots, or
        # open no transaction at all.
        read_only = connection.get_execution_options().get(_READ_ONLY)
        if read_only != _PER_STATEMENT:
            connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


_PER_STATEMENT = "per-statement"


def read_only(engine: AsyncEngine, *, snapshot: bool = True) -> AsyncEngine:
    """The same engine, for reads: on SQLite its transactions do not take the write lock.

    Without ``snapshot`` no transaction is opened: each statement reads the database as it
    is when it runs. That saves a hop to aiosqlite's thread (SQLite) or a round trip each
    for ``BEGIN`` and ``ROLLBACK`` (PostgreSQL) on every read, for the reads whose
    statements need not agree with one another, such as a poll of a task.
    """
    if snapshot:
        return engine.execution_options(**{_READ_ONLY: True})
    if is_sqlite(engine):
        return engine.execution_options(**{_READ_ONLY: _PER_STATEMENT})
    return engine.execution_options(isolation_level="AUTOCOMMIT")


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to the newest migration (idempotent; safe at every start)."""

    def _upgrade(connection: Connection) -> None:
        command.upgrade(alembic_config(connection), "head")

    async with engine.begin() as connection:
        await connection.run_sync(_upgrade)
