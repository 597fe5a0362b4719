"""Persistence: every SQL statement lives in this package, behind the port
:class:`easel.store.ports.Store` (:class:`SqlStore` on SQLite or PostgreSQL; the in-memory
fake, :mod:`easel.store.memory`, for tests)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from easel.store.accounts import AccountStore
from easel.store.db import POSTGRES_POOL_SIZE, connection, create_engine, migrate, read_only
from easel.store.estimates import Estimates
from easel.store.events import EventStore
from easel.store.files import FileStore, SecretStore
from easel.store.metrics import MetricsStore
from easel.store.notify import EventWakeUps, QueueListener
from easel.store.outage import is_outage, outages_suppressed
from easel.store.ports import Store
from easel.store.queue import QueueStore
from easel.store.tasks import TaskStore
from easel.store.webhooks import WebhookStore

# Which errors are outages (retried later) and which are bugs (fail loudly) is decided in
# one place, easel.store.outage: at the store's edge (an outage leaves as StoreUnavailable)
# and for the worker, the janitor and the dispatcher.
__all__ = [
    "SqlStore",
    "Store",
    "connect",
    "is_outage",
    "open_store",
    "outages_suppressed",
]


# How long run-time means and live worker slots are remembered between polls.
ESTIMATES_TTL_S = 2.0


@dataclass(frozen=True, slots=True)
class SqlStore:
    """The store on SQLite or PostgreSQL (a :class:`Store`)."""

    engine: AsyncEngine
    accounts: AccountStore
    tasks: TaskStore
    queue: QueueStore
    files: FileStore
    secrets: SecretStore
    events: EventStore
    metrics: MetricsStore
    webhooks: WebhookStore

    def wake_ups(self, on_queued: Callable[[], None]) -> QueueListener:
        return QueueListener(self.engine, on_queued)

    def event_wake_ups(
        self, on_event: Callable[[str], None], on_gap: Callable[[], None], poll_s: float
    ) -> EventWakeUps:
        return EventWakeUps(self.engine, on_event, on_gap, poll_s)

    async def ping(self) -> None:
        async with connection(read_only(self.engine)) as conn:
            await conn.execute(text("SELECT 1"))

    async def close(self) -> None:
        await self.engine.dispose()


async def open_store(database_url: str, pool_size: int = POSTGRES_POOL_SIZE) -> SqlStore:
    """Connect, migrate to the newest schema and return the stores (``pool_size``: the
    PostgreSQL connections kept, see ``create_engine``)."""
    engine = create_engine(database_url, pool_size)
    await migrate(engine)
    estimates = Estimates(ESTIMATES_TTL_S)
    return SqlStore(
        engine=engine,
        accounts=AccountStore(engine),
        tasks=TaskStore(engine, estimates),
        queue=QueueStore(engine, estimates),
        files=FileStore(engine),
        secrets=SecretStore(engine),
        events=EventStore(engine),
        metrics=MetricsStore(engine),
        webhooks=WebhookStore(engine),
    )


async def connect(database_url: str, pool_size: int = POSTGRES_POOL_SIZE) -> Store:
    """The store ``database_url`` names: ``memory://`` is the in-memory one (one process,
    nothing kept; see :mod:`easel.store.memory`), anything else a SQL database."""
    from easel.store.memory import MEMORY_URL, MemoryStore

    if database_url == MEMORY_URL:
        return MemoryStore()
    return await open_store(database_url, pool_size)
