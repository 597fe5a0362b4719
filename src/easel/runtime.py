"""Wiring: build the services from :class:`Settings` (no module-level singletons)."""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass, field

from easel.backends._diffusers_memory import LOADER
from easel.backends.autoconfig import HOSTED
from easel.backends.fallback import Router
from easel.config import Settings
from easel.domain.catalog import DEFAULT_MODEL
from easel.services.accounts import Accounts
from easel.services.events import EventFeed
from easel.services.janitor import Janitor
from easel.services.metrics import Metrics
from easel.services.models import ServedModels
from easel.services.ratelimit import RateLimiter
from easel.services.streams import Streams
from easel.services.tasks import TaskService
from easel.services.upload_tokens import UploadTokens
from easel.services.webhook_registry import WebhookRegistry
from easel.storage.check import StorageCheck
from easel.storage.objects import ObjectStore, open_object_store
from easel.storage.signing import UrlSigner
from easel.store import Store, connect
from easel.store.ports import EventWakeUps
from easel.worker.runner import Worker

log = logging.getLogger("easel")

*_VARIABLES, _LAST_VARIABLE = HOSTED.values()
HOW_TO_ENABLE = (
    "This server serves no model_version (no provider key in the environment, no GPU, no "
    f"backend in the config). To enable one: set {', '.join(_VARIABLES)} or {_LAST_VARIABLE}"
    "; or run on an NVIDIA GPU with pip install 'easel[local]'; or configure "
    "backends in the config file, e.g. for a dry run without model costs:\n"
    '  [backends.dry]\n  kind = "placeholder"\n'
    f'  [models."{DEFAULT_MODEL}"]\n  backends = ["dry"]\n'
    "(examples/placeholder.toml serves every model that way; see docs/configuration.md)."
)


@dataclass(slots=True)
class Runtime:
    settings: Settings
    store: Store
    objects: ObjectStore
    router: Router
    service: TaskService
    signer: UrlSigner
    storage: StorageCheck  # whether the object store takes writes (/readyz, the worker)
    accounts: Accounts = field(init=False)
    events: EventFeed = field(init=False)
    metrics: Metrics = field(init=False)
    models: ServedModels = field(init=False)  # what serves each model (GET /models, /readyz)
    webhooks: WebhookRegistry = field(init=False)
    upload_tokens: UploadTokens = field(init=False)
    limiter: RateLimiter = field(init=False)  # requests per second per key, this process
    unknown_keys: RateLimiter = field(init=False)  # unknown keys per client address
    streams: Streams = field(init=False)  # open SSE and WebSocket streams, this process
    # Parts of this process that stopped by themselves, and why (shown by /readyz).
    problems: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        settings = self.settings
        self.accounts = Accounts(self.store.accounts)
        self.events = EventFeed(self.store.events)
        self.metrics = Metrics(self.store.metrics)
        self.models = ServedModels(self.router, self.store.queue)
        self.webhooks = WebhookRegistry(self.store.webhooks, self.service.policy)
        self.upload_tokens = UploadTokens(settings, self.objects, self.store.files)
        self.limiter = RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst)
        self.unknown_keys = RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst)
        self.streams = Streams(
            self.store.accounts,
            self.limiter,
            settings.max_streams_per_key,
            settings.stream_check_s,
        )

    async def ping_database(self) -> None:
        """A trivial query: raises (StoreUnavailable) when the database cannot answer."""
        await self.store.ping()

    def event_wake_ups(self) -> EventWakeUps:
        """What wakes this process's event streams when their account has a new event."""
        streams = self.streams
        return self.store.event_wake_ups(
            streams.publish, streams.wake_all, self.settings.stream_poll_s
        )

    def janitor(self) -> Janitor:
        return Janitor(self.store, self.objects, self.settings)

    def new_worker(self, models: list[str] | None = None) -> Worker:
        return Worker(
            self.store,
            self.objects,
            self.router,
            self.settings,
            models=models,
            storage=self.storage,
        )

    def log_served(self) -> None:
        """Log each model's backends here, and how to enable some when none is ready."""
        for line in self.router.describe():
            log.info("model %s", line)
        served = self.router.served()
        if served:
            log.info("serving %d model_version(s): %s", len(served), ", ".join(served))
        else:
            log.warning(HOW_TO_ENABLE)

    async def close(self) -> None:
        await self.router.close()
        await self.store.close()


def freeze_startup_objects() -> None:
    """Take the objects made while starting (modules, routes, schemas, built statements) out
    of the garbage collector's sight, as they live as long as the process. Otherwise every
    full collection walks them all (60 ms here), and every request in flight waits."""
    gc.collect()
    gc.freeze()


async def open_runtime(settings: Settings) -> Runtime:
    # the process's diffusers pipelines (none in an API process, which never loads)
    LOADER.configure(settings.gpu_memory_budget_gb, settings.gpu_offload)
    router = Router.from_settings(settings)
    store = await connect(settings.database_url, settings.database_pool_size)
    objects = open_object_store(settings.storage_url)
    signer = UrlSigner(await store.secrets.get_or_create("output_urls"), settings.output_url_ttl_s)
    service = TaskService(store, objects, router, settings, signer)
    storage = StorageCheck(objects, create_bucket=settings.storage_create_bucket)
    await storage.problem()  # probe now: a missing bucket is logged with its fix at startup
    return Runtime(settings, store, objects, router, service, signer, storage)
