"""Wake idle workers at once on PostgreSQL: ``NOTIFY`` at enqueue, ``LISTEN`` in workers.

SQLite has no such channel; its workers (and PostgreSQL workers whose listening connection
dropped) fall back to polling every ``poll_interval_s``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

CHANNEL = "easel_tasks"
log = logging.getLogger("easel.store")


async def notify(conn: AsyncConnection) -> None:
    """Announce a queued task; delivered when the surrounding transaction commits."""
    if conn.dialect.name == "postgresql":
        await conn.execute(text(f"NOTIFY {CHANNEL}"))


class QueueListener:
    """Calls ``on_notify`` whenever a task is queued anywhere (PostgreSQL only)."""

    def __init__(self, engine: AsyncEngine, on_notify: Callable[[], None]) -> None:
        self._engine, self._on_notify = engine, on_notify
        self._conn: AsyncConnection | None = None

    @property
    def listening(self) -> bool:
        return self._conn is not None and not self._conn.closed and not self._driver_closed()

    def _driver_closed(self) -> bool:
        driver = self._driver()
        return driver is None or bool(driver.is_closed())

    def _driver(self) -> Any:
        if self._conn is None or self._conn.sync_connection is None:
            return None
        return self._conn.sync_connection.connection.driver_connection

    async def ensure(self) -> None:
        """Start listening, or start again after the connection dropped."""
        if self._engine.dialect.name != "postgresql" or self.listening:
            return
        await self.close()
        try:
            self._conn = await self._engine.connect()
            await self._conn.get_raw_connection()
            await self._driver().add_listener(CHANNEL, self._callback)
        except Exception as exc:  # the database may be restarting: poll until it is back
            log.warning("cannot LISTEN for new tasks (%s); polling meanwhile", exc)
            await self.close()

    def _callback(self, *_: object) -> None:
        self._on_notify()

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await conn.close()
            except Exception:
                log.debug("closing the listening connection failed", exc_info=True)
