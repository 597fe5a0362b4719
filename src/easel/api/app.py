"""The FastAPI application: lifespan wiring, routers, the error envelope."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from easel import __version__
from easel.api import (
    account,
    cancel,
    events,
    files,
    metrics,
    models,
    openapi,
    sts,
    tasks,
    v3,
    webhooks,
)
from easel.api.door import TextRules
from easel.api.envelope import TraceIdMiddleware, install_error_handlers
from easel.api.limits import RequestLimits
from easel.config import Settings, load_settings
from easel.runtime import freeze_startup_objects, open_runtime
from easel.server import ON_SHUTDOWN
from easel.services.loops import (
    DISPATCHER_DOWN,
    EVENTS_DOWN,
    JANITOR_DOWN,
    LOOP_RESTARTS,
    WORKER_DOWN,
    Backoff,
    LoopGroup,
)
from easel.services.webhooks import Dispatcher
from easel.web import router as playground

API_PREFIX = "/v2/openapi"
DOCS_ASSETS = "/docs-assets"


def create_app(
    settings: Settings, *, run_worker: bool = True, restarts: Backoff = LOOP_RESTARTS
) -> FastAPI:
    """The API; with ``run_worker`` an in-process worker runs tasks beside it. ``restarts``
    says when a crashed background loop starts again (tests shorten it)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[Mapping[str, Any]]:
        runtime = await open_runtime(settings)
        app.state.runtime = runtime
        runtime.log_served()
        loops = LoopGroup(runtime.problems, restarts)
        if run_worker:
            worker = runtime.new_worker()
            runtime.service.on_submit = worker.wake
            loops.add("worker", worker.run, meanwhile=WORKER_DOWN)
        loops.add("webhooks", Dispatcher.for_runtime(runtime).run, meanwhile=DISPATCHER_DOWN)
        loops.add("janitor", runtime.janitor().run, meanwhile=JANITOR_DOWN)
        loops.add("event wake-ups", runtime.event_wake_ups().run, meanwhile=EVENTS_DOWN)
        try:
            async with loops.running(asyncio.Event()):
                freeze_startup_objects()
                # The server calls this when it begins to shut down (easel.server): open event
                # streams end then, instead of holding the shutdown until their clients leave.
                yield {ON_SHUTDOWN: runtime.streams.end_all}
        finally:
            await runtime.close()

    # /docs and /redoc from assets packaged with fastapi-offline (Swagger UI, ReDoc), served
    # under DOCS_ASSETS: FastAPI's own pages load them from a CDN, blank without internet.
    app = FastAPIOffline(
        static_url=DOCS_ASSETS,
        title="Easel",
        version=__version__,
        summary="Tripo 3D OpenAPI v2 generate_image task server",
        lifespan=lifespan,
    )
    # The last added runs first: the trace id is set before a body is refused as too large.
    # The upload routes declare their larger limit; app.routes fills as routers are included.
    app.add_middleware(RequestLimits, max_bytes=settings.max_request_bytes, routes=app.routes)
    app.add_middleware(TextRules)  # path, query and headers are text; Host is a host
    app.add_middleware(TraceIdMiddleware)
    if settings.trusted_proxies:
        # The client is the right-most X-Forwarded-For hop that is not a trusted proxy (what
        # rate limits count by); from any other peer the header is ignored.
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.trusted_proxies)
    # Outermost: every request counts, those refused before routing too.
    app.state.http_metrics = http_metrics = metrics.HttpMetrics()
    app.add_middleware(
        metrics.HttpMetricsMiddleware,
        metrics=http_metrics,
        documented=lambda: app.openapi()["paths"],
    )
    install_error_handlers(app)
    openapi.install(app)
    for router in (
        tasks.router,
        cancel.router,
        events.router,
        files.router,
        account.router,
        models.router,
        sts.router,
        webhooks.router,
    ):
        app.include_router(router, prefix=API_PREFIX)
    app.include_router(v3.router)  # the Tripo v3 image routes, for tripo3d 1.x
    app.include_router(account.health)
    app.include_router(metrics.router)
    app.include_router(playground)  # the web playground at /
    return app


def api_from_environment() -> FastAPI:
    """The API alone, configured from ``$EASEL_CONFIG`` and ``EASEL_*``: the app factory of
    each process of ``easel serve --processes N``."""
    from easel import logs

    settings = load_settings()
    logs.configure(settings.log_format)
    return create_app(settings, run_worker=False)
