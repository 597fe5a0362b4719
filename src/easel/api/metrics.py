"""``GET /metrics``: Prometheus text format: a database snapshot taken per scrape (the
same on every replica), this server's HTTP requests per route, and the load and swap times of
its worker's diffusers pipelines (``easel_pipeline_*``: when the worker runs in this server,
embedded or supervised; see :mod:`easel.backends.pipeline_metrics`).

HTTP counts and latencies are kept in the process, per route *template*
(``/v2/openapi/task/{task_id}``, never a path with an id in it: one series per route, not
per task; a path no route matches is ``unmatched``), method and status class. Under
``easel serve --processes N`` every process serves the same port and a scrape reaches one of
them at random, so per-process series would jump between scrapes: prometheus_client's
multiprocess mode is used instead (``$PROMETHEUS_MULTIPROC_DIR``, set by the supervisor),
and every scrape reports the sum over all the server's processes, past ones included.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterable, Iterator

from fastapi import APIRouter, Request, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    generate_latest,
)
from prometheus_client import Histogram as HistogramMetric
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from easel.api.deps import RuntimeDep
from easel.domain.metrics import Histogram, Snapshot
from easel.domain.tasks import FINAL, Status
from easel.supervise import MULTIPROCESS_ENV

router = APIRouter()

UNMATCHED = "unmatched"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_LABELS = ("route", "method", "status")


class HttpMetrics:
    """Request counts and latency histograms of one app, by route template, method and
    status class; shared between processes when ``$PROMETHEUS_MULTIPROC_DIR`` is set."""

    def __init__(self) -> None:
        self.shared = MULTIPROCESS_ENV in os.environ
        # Shared: the values live in files of the directory, read back by one collector.
        self._registry = None if self.shared else CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "easel_http_requests",
            "HTTP requests by route template, method and status class.",
            _LABELS,
            registry=self._registry,
        )
        self.seconds = HistogramMetric(
            "easel_http_request_duration_seconds",
            "Time from a request's arrival to its response's end (an event stream's: the "
            "stream's length), by route template, method and status class.",
            _LABELS,
            registry=self._registry,
        )

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        labels = (route, method if method in _METHODS else "other", f"{status // 100}xx")
        self.requests.labels(*labels).inc()
        self.seconds.labels(*labels).observe(seconds)

    def register(self, registry: CollectorRegistry) -> None:
        """Add these metrics (every process's, when shared) to a scrape's registry."""
        if self.shared:
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        else:
            registry.register(self.requests)
            registry.register(self.seconds)


class HttpMetricsMiddleware:
    """Times every HTTP request and counts it by route template; outermost, so requests
    refused before routing (a body too large, a malformed path) count too."""

    def __init__(
        self, app: ASGIApp, metrics: HttpMetrics, documented: Callable[[], Iterable[str]]
    ) -> None:
        self.app, self.metrics = app, metrics
        self._documented = documented  # the OpenAPI document's path templates
        self._patterns: list[tuple[re.Pattern[str], str]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500  # no answer: the server's error

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            seconds = time.perf_counter() - started
            route = routed_template(scope) or self._documented_template(scope["path"])
            self.metrics.observe(route, scope["method"], status, seconds)

    def _documented_template(self, path: str) -> str:
        """For a request refused before routing: the documented route its path matches."""
        if self._patterns is None:
            self._patterns = [(compile_path(p)[0], p) for p in self._documented()]
        return next((p for pattern, p in self._patterns if pattern.match(path)), UNMATCHED)


def routed_template(scope: Scope) -> str | None:
    """The template of the route that served the request, prefix included, or None.

    The router notes the route in the scope; an included router's route knows only its own
    part of the template (FastAPI 0.16x), so the prefix is the text of the path before the
    part that route matched (a fixed text: prefixes here have no parameters).
    """
    own = getattr(scope.get("route"), "path_format", None)
    if not isinstance(own, str):
        return None
    try:
        tail = own.format(**scope.get("path_params", {}))
    except (KeyError, IndexError, ValueError):
        return own
    path = scope["path"].removeprefix(scope.get("root_path", ""))
    return path.removesuffix(tail) + own if path.endswith(tail) else own


def _gauge(name: str, doc: str, per_model: dict[str, int]) -> Metric:
    family = GaugeMetricFamily(name, doc, labels=["model_version"])
    for model, n in sorted(per_model.items()):
        family.add_metric([model], n)
    return family


def _histogram(
    name: str, doc: str, labels: list[str], rows: Iterable[tuple[list[str], Histogram]]
) -> Metric:
    family = HistogramMetricFamily(name, doc, labels=labels)
    for values, h in rows:
        buckets = [(str(bound), float(n)) for bound, n in h.buckets] + [("+Inf", float(h.count))]
        family.add_metric(values, buckets, h.total)
    return family


class SnapshotCollector(Collector):
    """The snapshot's series; ``served`` models get queue and running gauges even at 0, so
    a dashboard or an alert sees an empty queue rather than no series."""

    def __init__(self, snap: Snapshot, served: Iterable[str] = ()) -> None:
        self.snap, self.served = snap, served

    def collect(self) -> Iterator[Metric]:
        snap = self.snap
        outcomes = CounterMetricFamily(
            "easel_tasks_finished", "Tasks by final status.", labels=["model_version", "status"]
        )
        unfinished = {Status.QUEUED.value: dict.fromkeys(self.served, 0)}
        unfinished[Status.RUNNING.value] = dict(unfinished[Status.QUEUED.value])
        for (model, status), n in snap.tasks.items():
            if status in unfinished:
                unfinished[status][model] = n
            elif Status(status) in FINAL:
                outcomes.add_metric([model, status], n)
        yield _gauge("easel_queue_depth", "Queued tasks.", unfinished[Status.QUEUED.value])
        yield _gauge("easel_tasks_running", "Running tasks.", unfinished[Status.RUNNING.value])
        yield outcomes
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
async def metrics(request: Request, runtime: RuntimeDep) -> Response:
    registry = CollectorRegistry(auto_describe=False)
    snap = await runtime.metrics.snapshot()
    registry.register(SnapshotCollector(snap, await runtime.service.served()))
    for collector in runtime.metrics.process_collectors():
        registry.register(collector)
    http: HttpMetrics = request.app.state.http_metrics
    http.register(registry)
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
