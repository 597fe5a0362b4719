"""What wakes this process's event streams when an event of their account is committed.

A stream reads the event log only when woken (:meth:`Streams.publish`), not on a timer:

* **PostgreSQL:** one ``LISTEN`` connection per process (``easel.store.notify.Listener``)
  fans every ``NOTIFY`` out to the streams of its account. When that connection drops, it
  listens again with back-off (``RECONNECT_FIRST_S`` doubling to ``RECONNECT_MAX_S``),
  waking every stream at each try meanwhile and once more when listening again: each reads
  on from the last event it sent, so what was committed while nobody listened is caught up.
* **SQLite:** an event this process commits wakes its account's streams just after the
  commit; one read of the log's new rows every ``stream_poll_s`` finds those other processes
  committed (``easel serve --processes N`` runs the worker in a process of its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sqlalchemy.ext.asyncio import AsyncEngine

from easel.services.streams import Streams
from easel.store import is_outage
from easel.store.notify import EVENTS_CHANNEL, EventLogTail, Listener, watch_local_events

log = logging.getLogger("easel.streams")
RECONNECT_FIRST_S = 0.1
RECONNECT_MAX_S = 5.0
LISTENING_CHECK_S = 5.0  # how often a listening connection is looked at, besides its loss

EVENT_WAKEUPS_DOWN = "meanwhile open event streams see new events only at their key checks"


class EventWakeups:
    def __init__(self, engine: AsyncEngine, streams: Streams, poll_s: float) -> None:
        self._engine, self._streams, self._poll_s = engine, streams, poll_s
        self._lost = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        if self._engine.dialect.name == "postgresql":
            await self._listen(stop)
        else:
            await self._tail(stop)

    async def _listen(self, stop: asyncio.Event) -> None:
        listener = Listener(self._engine, EVENTS_CHANNEL, self._streams.publish, self._lost.set)
        backoff = 0.0
        try:
            while not stop.is_set():
                self._lost.clear()
                if await listener.ensure():
                    if backoff:
                        log.info("listening for events again; streams catch up")
                    self._streams.wake_all()  # what was committed before LISTEN took effect
                    backoff = 0.0
                if listener.listening:
                    await _until(stop, self._lost, LISTENING_CHECK_S)
                    continue
                self._streams.wake_all()  # nobody is listening: read, in case
                backoff = min(RECONNECT_MAX_S, max(backoff * 2, RECONNECT_FIRST_S))
                await _until(stop, None, backoff)
        finally:
            await listener.close()

    async def _tail(self, stop: asyncio.Event) -> None:
        unsubscribe = watch_local_events(self._engine, self._streams.publish)
        tail = EventLogTail(self._engine)
        try:
            while not stop.is_set():
                try:
                    for account_id in await tail.poll():
                        self._streams.publish(account_id)
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
