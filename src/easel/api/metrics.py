"""``GET /metrics``: Prometheus text format, from a database snapshot taken per scrape."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

from fastapi import APIRouter, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from easel.api.deps import RuntimeDep
from easel.domain.tasks import FINAL, Status
from easel.store.metrics import Histogram, Snapshot

router = APIRouter()


def _histogram(
    name: str, doc: str, labels: list[str], rows: Iterable[tuple[list[str], Histogram]]
) -> Metric:
    family = HistogramMetricFamily(name, doc, labels=labels)
    for values, h in rows:
        buckets = [(str(bound), float(n)) for bound, n in h.buckets] + [("+Inf", float(h.count))]
        family.add_metric(values, buckets, h.total)
    return family


class SnapshotCollector(Collector):
    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap

    def collect(self) -> Iterator[Metric]:
        snap = self.snap
        queued = GaugeMetricFamily("easel_queue_depth", "Queued tasks.", labels=["model_version"])
        running = GaugeMetricFamily(
            "easel_tasks_running", "Running tasks.", labels=["model_version"]
        )
        outcomes = CounterMetricFamily(
            "easel_tasks_finished", "Tasks by final status.", labels=["model_version", "status"]
        )
        for (model, status), n in sorted(snap.tasks.items()):
            if status == Status.QUEUED.value:
                queued.add_metric([model], n)
            elif status == Status.RUNNING.value:
                running.add_metric([model], n)
            elif Status(status) in FINAL:
                outcomes.add_metric([model, status], n)
        yield from (queued, running, outcomes)
        yield GaugeMetricFamily(
            "easel_queue_oldest_wait_seconds",
            "How long the oldest queued task has waited.",
            value=snap.oldest_queued_s,
        )
        yield _histogram(
            "easel_task_run_seconds",
            "Run time of successful tasks.",
            ["model_version", "backend"],
            [([m, b], h) for (m, b), h in sorted(snap.run_seconds.items())],
        )
        yield _histogram(
            "easel_task_wait_seconds",
            "Time from submit to start.",
            ["model_version"],
            [([m], h) for m, h in sorted(snap.wait_seconds.items())],
        )
        yield GaugeMetricFamily(
            "easel_credits_held", "Credits held by unfinished tasks.", value=snap.credits_held
        )
        moved = CounterMetricFamily(
            "easel_credits_moved", "Credits moved, by ledger kind.", labels=["kind"]
        )
        for kind, amount in sorted(snap.credits.items()):
            moved.add_metric([kind], amount)
        yield moved


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    include_in_schema=True,
    response_class=PlainTextResponse,  # documents text/plain (the Prometheus text format)
)
async def metrics(runtime: RuntimeDep) -> Response:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(await runtime.store.metrics.snapshot(time.time())))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
