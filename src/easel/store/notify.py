"""Wake-ups instead of polls: a queued task wakes idle workers, a committed event wakes the
streams that follow its account.

* **PostgreSQL:** ``NOTIFY`` sent inside the transaction that queues the task (channel
  ``easel_tasks``) or appends the event (``easel_events``, payload the account id), so it is
  delivered when, and only if, that transaction commits. Each process ``LISTEN``s on one
  connection of its own (:class:`Listener`).
* **SQLite** has no such channel. An event committed by this process is signalled in-process
  after its commit (:func:`event_appended`, :func:`watch_local_events`); events committed by
  other processes (``easel serve --processes N``) are found by :class:`EventLogTail`, one
  cheap read of the log's new rows per process every ``stream_poll_s``.

A wake-up carries no data: who is woken reads the log after the last number it saw, so a
lost, doubled or early wake-up costs a read, never an event. Workers (and PostgreSQL
streams while their listening connection is down) fall back to polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any
from weakref import WeakKeyDictionary

from sqlalchemy import func, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from easel.store.db import after_commit, connection, read_only
from easel.store.outage import is_outage
from easel.store.tables import accounts

CHANNEL = "easel_tasks"
EVENTS_CHANNEL = "easel_events"
TAIL_BATCH = 10_000  # rows of the log read by one EventLogTail.poll
RECONNECT_FIRST_S = 0.1
RECONNECT_MAX_S = 5.0
LISTENING_CHECK_S = 5.0  # how often a listening connection is looked at, besides its loss
log = logging.getLogger("easel.store")


async def notify(conn: AsyncConnection) -> None:
    """Announce a queued task; delivered when the surrounding transaction commits."""
    if conn.dialect.name == "postgresql":
        await conn.execute(text(f"NOTIFY {CHANNEL}"))


class Listener:
    """Calls ``on_notify(payload)`` for each notification on ``channel`` (PostgreSQL only),
    and ``on_lost()`` when the listening connection drops (notifications may be missed
    until :meth:`ensure` listens again)."""

    def __init__(
        self,
        engine: AsyncEngine,
        channel: str,
        on_notify: Callable[[str], None],
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        self._engine, self._channel = engine, channel
        self._on_notify, self._on_lost = on_notify, on_lost
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
            driver = self._driver()
            await driver.add_listener(self._channel, self._callback)
            driver.add_termination_listener(self._terminated)
        except Exception as exc:  # the database may be restarting: poll until it is back
            log.warning("cannot LISTEN on %s (%s); polling meanwhile", self._channel, exc)
            await self.close()

    def _callback(self, _conn: object, _pid: object, _channel: object, payload: object) -> None:
        self._on_notify(str(payload))

    def _terminated(self, _conn: object) -> None:
        log.warning("the connection listening on %s was lost", self._channel)
        if self._on_lost is not None:
            self._on_lost()

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            driver = self._driver_of(conn)
            if driver is not None:
                driver.remove_termination_listener(self._terminated)
            try:
                await conn.close()
            except Exception:
                log.debug("closing the listening connection failed", exc_info=True)

    @staticmethod
    def _driver_of(conn: AsyncConnection) -> Any:
        sync = conn.sync_connection
        return None if sync is None or sync.closed else sync.connection.driver_connection


class QueueListener(Listener):
    """Calls ``on_notify`` whenever a task is queued anywhere (PostgreSQL only)."""

    def __init__(self, engine: AsyncEngine, on_notify: Callable[[], None]) -> None:
        super().__init__(engine, CHANNEL, lambda _payload: on_notify())


# -- events -----------------------------------------------------------------------------------

# The in-process subscribers of each SQLite database, by its engine's connection pool (shared
# by the engine's read-only variants); weak: a disposed engine takes its subscribers along.
_local: WeakKeyDictionary[Any, list[Callable[[str], None]]] = WeakKeyDictionary()


def watch_local_events(engine: AsyncEngine, on_event: Callable[[str], None]) -> Callable[[], None]:
    """Call ``on_event(account_id)`` after each commit of this process that appended an event
    of the account (SQLite; PostgreSQL's own notifications reach :class:`Listener`).
    Returns the function that stops it."""
    subscribers = _local.setdefault(engine.pool, [])
    subscribers.append(on_event)
    return lambda: subscribers.remove(on_event)


# PostgreSQL: what the statement that numbers an event returns beside the number, which sends
# the notification with no round trip of its own (``easel.store.events``).
NOTIFY_EVENT = func.pg_notify(EVENTS_CHANNEL, accounts.c.id)
# PostgreSQL: :func:`notify` as an expression, for a statement that queues a task (the
# workers' wake-up rides on it: ``easel.store.changes``).
NOTIFY_QUEUED = func.pg_notify(CHANNEL, "")


def event_appended(conn: AsyncConnection, account_id: str) -> None:
    """Signal, once ``conn``'s transaction commits, that it appended an event of
    ``account_id`` (SQLite: in-process; PostgreSQL sent :data:`NOTIFY_EVENT` already)."""
    subscribers = _local.get(conn.engine.pool)
    if subscribers:
        after_commit(conn, lambda: _signal(subscribers, account_id))


def _signal(subscribers: list[Callable[[str], None]], account_id: str) -> None:
    for subscriber in list(subscribers):
        subscriber(account_id)


class EventLogTail:
    """The accounts of the events committed since the last look, by any process (SQLite:
    its rows' ``rowid`` grows in commit order, as there is one writer at a time)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._reads = read_only(engine, snapshot=False)
        self._last: int | None = None

    async def poll(self) -> set[str]:
        async with connection(self._reads) as conn:
            if self._last is None:
                self._last = int(await conn.scalar(text("SELECT max(rowid) FROM events")) or 0)
                return set()
            rows = (
                await conn.execute(
                    text(
                        "SELECT rowid, account_id FROM events WHERE rowid > :last "
                        "ORDER BY rowid LIMIT :batch"
                    ),
                    {"last": self._last, "batch": TAIL_BATCH},
                )
            ).all()
            if not rows:
                # Pruned down to nothing, rowids start again from 1: look from there.
                newest = await conn.scalar(text("SELECT max(rowid) FROM events"))
                if int(newest or 0) < self._last:
                    self._last = 0
                return set()
        self._last = int(rows[-1][0])
        return {str(row[1]) for row in rows}


class EventWakeUps:
    """Calls ``on_event(account_id)`` when an event of the account may have been committed,
    and ``on_gap()`` when some may have been missed (every follower should read on):

    * PostgreSQL: one ``LISTEN`` connection (:class:`Listener`). When it drops, it listens
      again with back-off (``RECONNECT_FIRST_S`` doubling to ``RECONNECT_MAX_S``), calling
      ``on_gap`` at each try and once more when listening again, so what was committed while
      nobody listened is caught up.
    * SQLite: this process's commits at once (:func:`watch_local_events`), and every
      ``poll_s`` the log's new rows (:class:`EventLogTail`), for other processes' commits.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        on_event: Callable[[str], None],
        on_gap: Callable[[], None],
        poll_s: float,
    ) -> None:
        self._engine, self._on_event, self._on_gap = engine, on_event, on_gap
        self._poll_s = poll_s
        self._lost = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        if self._engine.dialect.name == "postgresql":
            await self._listen(stop)
        else:
            await self._tail(stop)

    async def _listen(self, stop: asyncio.Event) -> None:
        listener = Listener(self._engine, EVENTS_CHANNEL, self._on_event, self._lost.set)
        backoff = 0.0
        try:
            while not stop.is_set():
                self._lost.clear()
                was_listening = listener.listening
                await listener.ensure()
                if listener.listening and not was_listening:
                    if backoff:
                        log.info("listening for events again; streams catch up")
                    self._on_gap()  # what was committed before LISTEN took effect
                    backoff = 0.0
                if listener.listening:
                    await _until(stop, self._lost, LISTENING_CHECK_S)
                    continue
                self._on_gap()  # nobody is listening: read, in case
                backoff = min(RECONNECT_MAX_S, max(backoff * 2, RECONNECT_FIRST_S))
                await _until(stop, None, backoff)
        finally:
            await listener.close()

    async def _tail(self, stop: asyncio.Event) -> None:
        unsubscribe = watch_local_events(self._engine, self._on_event)
        tail = EventLogTail(self._engine)
        try:
            while not stop.is_set():
                try:
                    for account_id in await tail.poll():
                        self._on_event(account_id)
                except Exception as exc:
                    if not is_outage(exc):
                        raise
                    log.warning("cannot read the event log's tail (%s); trying again", exc)
                await _until(stop, None, self._poll_s)
        finally:
            unsubscribe()


async def _until(stop: asyncio.Event, other: asyncio.Event | None, timeout_s: float) -> None:
    """Wait until ``stop`` (or ``other``) is set, at most ``timeout_s``."""
    waiters = [asyncio.ensure_future(e.wait()) for e in (stop, other) if e is not None]
    try:
        await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*waiters, return_exceptions=True)
