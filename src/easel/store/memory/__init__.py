"""The store in memory: the same port as :class:`easel.store.SqlStore`, for tests.

One process, nothing kept: every table is a Python object (:mod:`.state`) and every method
holds one ``asyncio.Lock``, so each is atomic as a SQL transaction is. The rules are the
domain's (the table of moves, the claim order, the mean-run-time fallbacks) and the store's
words are :mod:`easel.store.refusals`, shared with the SQL store; ``tests/store_contract``
runs the same behaviours on this, SQLite and PostgreSQL, which keeps it honest.
Settings choose it with ``database_url = "memory://"``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

from easel.store.memory.accounts import MemoryAccounts
from easel.store.memory.queue import MemoryQueue
from easel.store.memory.records import MemoryEvents, MemoryFiles, MemoryMetrics, MemorySecrets
from easel.store.memory.state import Memory
from easel.store.memory.tasks import MemoryTasks
from easel.store.memory.webhooks import MemoryWebhooks

MEMORY_URL = "memory://"

__all__ = ["MEMORY_URL", "MemoryStore"]


class MemoryWakeUps:
    """Calls ``on_queued`` whenever a task is queued in this store, while ensured."""

    def __init__(self, memory: Memory, on_queued: Callable[[], None]) -> None:
        self._memory, self._on_queued = memory, on_queued

    @property
    def listening(self) -> bool:
        return self._on_queued in self._memory.listeners

    async def ensure(self) -> None:
        if not self.listening:
            self._memory.listeners.append(self._on_queued)

    async def close(self) -> None:
        if self.listening:
            self._memory.listeners.remove(self._on_queued)


class MemoryEventWakeUps:
    """Every ``poll_s``, every stream reads on (no per-account signal: a store for tests)."""

    def __init__(self, on_gap: Callable[[], None], poll_s: float) -> None:
        self._on_gap, self._poll_s = on_gap, poll_s

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self._on_gap()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._poll_s)


@dataclass(frozen=True, slots=True)
class MemoryStore:
    """The store in memory (a :class:`easel.store.Store`)."""

    memory: Memory = field(default_factory=Memory)

    @property
    def accounts(self) -> MemoryAccounts:
        return MemoryAccounts(self.memory)

    @property
    def tasks(self) -> MemoryTasks:
        return MemoryTasks(self.memory)

    @property
    def queue(self) -> MemoryQueue:
        return MemoryQueue(self.memory)

    @property
    def files(self) -> MemoryFiles:
        return MemoryFiles(self.memory)

    @property
    def secrets(self) -> MemorySecrets:
        return MemorySecrets(self.memory)

    @property
    def events(self) -> MemoryEvents:
        return MemoryEvents(self.memory)

    @property
    def metrics(self) -> MemoryMetrics:
        return MemoryMetrics(self.memory)

    @property
    def webhooks(self) -> MemoryWebhooks:
        return MemoryWebhooks(self.memory)

    def wake_ups(self, on_queued: Callable[[], None]) -> MemoryWakeUps:
        return MemoryWakeUps(self.memory, on_queued)

    def event_wake_ups(
        self, on_event: Callable[[str], None], on_gap: Callable[[], None], poll_s: float
    ) -> MemoryEventWakeUps:
        return MemoryEventWakeUps(on_gap, poll_s)

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None
