"""``easel worker --health-port``: ``/healthz`` and ``/readyz`` for an orchestrator's probes.

* ``/healthz`` is 200 while the worker's event loop answers (draining included: a worker
  finishing its tasks must not be killed for it).
* ``/readyz`` is 200 once the worker has registered, while its last registration (renewed
  every second) is recent, the object store takes writes and some model it takes has a ready
  backend; 503 otherwise, and while it drains after SIGTERM. The body names each check, as
  the API's ``/readyz`` does.
* ``/metrics`` is the load and swap times and resident bytes of the worker's ``diffusers``
  pipelines (``easel_pipeline_*``, :mod:`easel.backends.pipeline_metrics`) in Prometheus text
  format: this process's, or, when ``$PROMETHEUS_MULTIPROC_DIR`` is set, every series that
  directory holds (the worker writes its own there then).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from easel.backends import pipeline_metrics
from easel.storage.check import StorageCheck

STALE_S = 10.0  # a registration older than this: the database is not answering


class WorkerHealth:
    def __init__(self, storage: StorageCheck, models: Callable[[], list[str]]) -> None:
        self._storage, self._models = storage, models
        self._registered_at: float | None = None
        self.draining = False

    def registered(self) -> None:
        self._registered_at = time.monotonic()

    async def checks(self) -> dict[str, str]:
        checks = {"registration": "ok", "object_store": "ok", "models": "ok", "draining": "ok"}
        if self._registered_at is None:
            checks["registration"] = "not registered yet"
        elif (age := time.monotonic() - self._registered_at) > STALE_S:
            checks["registration"] = f"last renewed {age:.0f} s ago (the database?)"
        checks["object_store"] = await self._storage.problem() or "ok"
        if not self._models():
            checks["models"] = "no model this worker takes has a ready backend"
        if self.draining:
            checks["draining"] = "stopping: finishing its tasks, claiming no more"
        return checks

    def app(self) -> Starlette:
        async def healthz(_: Request) -> JSONResponse:
            return JSONResponse({"status": "ok"})

        async def readyz(_: Request) -> JSONResponse:
            checks = await self.checks()
            ready = all(value == "ok" for value in checks.values())
            return JSONResponse(
                {"status": "ok" if ready else "unavailable", "checks": checks},
                status_code=200 if ready else 503,
            )

        async def metrics(_: Request) -> Response:
            return Response(scrape(), media_type=CONTENT_TYPE_LATEST)

        routes = [Route("/healthz", healthz), Route("/readyz", readyz), Route("/metrics", metrics)]
        return Starlette(routes=routes)


def scrape() -> bytes:
    """The pipeline series in Prometheus text format: this process's, or the multiprocess
    directory's when the series are written there."""
    registry = CollectorRegistry(auto_describe=False)
    if pipeline_metrics.metrics().shared:
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    for collector in pipeline_metrics.collectors():
        registry.register(collector)
    return generate_latest(registry)


class _Server(uvicorn.Server):
    """uvicorn, leaving the process's signals to ``easel worker``."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def serving(health: WorkerHealth, host: str, port: int | None) -> AsyncIterator[None]:
    """Serve ``health``'s probes on ``host:port`` while the block runs (nothing if no port)."""
    if port is None:
        yield
        return
    config = uvicorn.Config(
        health.app(), host=host, port=port, lifespan="off", log_config=None, access_log=False
    )
    server = _Server(config)
    running = asyncio.create_task(server.serve())
    try:
        yield
    finally:
        server.should_exit = True
        await running
