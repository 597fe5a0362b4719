"""The figures ``/metrics`` reports: a snapshot the database makes per scrape, the one place
that knows every replica's and every worker's work, and this process's own series that no
database holds (its pipelines' load and swap times, :mod:`easel.backends.pipeline_metrics`)."""

from __future__ import annotations

import time

from prometheus_client.registry import Collector

from easel.backends import pipeline_metrics
from easel.domain.metrics import Snapshot
from easel.store.ports import MetricsPort


class Metrics:
    def __init__(self, store: MetricsPort) -> None:
        self._store = store

    async def snapshot(self) -> Snapshot:
        return await self._store.snapshot(time.time())

    def process_collectors(self) -> list[Collector]:
        """Series kept in this process's memory: the load and swap times and resident bytes
        of the pipelines an embedded worker loaded (none when the worker writes them to the
        multiprocess directory, which the HTTP series' collector reads)."""
        return pipeline_metrics.collectors()
