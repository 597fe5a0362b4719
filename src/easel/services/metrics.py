"""The figures ``/metrics`` reports: a snapshot the database makes per scrape, the one place
that knows every replica's and every worker's work."""

from __future__ import annotations

import time

from easel.domain.metrics import Snapshot
from easel.store.ports import MetricsPort


class Metrics:
    def __init__(self, store: MetricsPort) -> None:
        self._store = store

    async def snapshot(self) -> Snapshot:
        return await self._store.snapshot(time.time())
