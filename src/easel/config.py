"""Configuration: one TOML file plus ``EASEL_*`` environment overrides.

No file is needed: the defaults run embedded (SQLite and a local object store under
``./easel-data/``), with backends enabled from the provider keys in the environment when the
file names none (``easel.backends.autoconfig``). Unknown keys are an error that names the key. Every
top-level key can be overridden by ``EASEL_<KEY>`` (lists as JSON or comma-separated);
backend, model and alias tables live in the file only, since their names hold dots and dashes.
"""

from __future__ import annotations

import ipaddress
import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    InstanceOf,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from easel.backends.autoconfig import auto_tables, has_local_gpu
from easel.domain.catalog import CATALOG, Catalog, ImageRule

CONFIG_ENV = "EASEL_CONFIG"


class ConfigError(Exception):
    """The configuration is wrong; the message says where and how to fix it."""


class BackendTable(BaseModel):
    """A ``[backends.<name>]`` table: a kind plus the kind's own settings (checked by it)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    kind: str

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class ModelTable(BaseModel):
    """A ``[models."<model_version>"]`` table: ordered backends, optional provider ids, and
    optionally the model's price in credits (default: the catalog's)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    backends: list[str] = Field(min_length=1)
    provider_model: dict[str, str] = Field(default_factory=dict)
    credits: int | None = Field(default=None, gt=0, le=1_000_000)


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    database_url: str = "sqlite+aiosqlite:///easel-data/easel.db"
    # PostgreSQL connections one process (an API process, a worker) keeps open at most; a
    # statement beyond them waits for a free one (easel.store.db.create_engine).
    database_pool_size: int = Field(default=20, ge=2, le=1000)
    storage_url: str = "file://easel-data/objects"
    # Create the storage_url's S3 bucket when it does not exist (at startup, or when a later
    # check finds it missing); otherwise the server starts, /readyz says what is wrong and
    # no task runs until the bucket exists (easel.storage.check).
    storage_create_bucket: bool = False
    allow_outbound_cidrs: list[str] = Field(default_factory=list)
    public_url: str | None = None
    output_url_ttl_s: int = Field(default=3600, gt=0)
    max_unfinished_tasks: int = Field(default=10, gt=0)
    worker_concurrency: int = Field(default=2, gt=0)
    lease_s: float = Field(default=30.0, gt=0)
    max_attempts: int = Field(default=3, gt=0)
    poll_interval_s: float = Field(default=0.5, gt=0)
    # On SIGTERM a worker claims nothing more and gives its running tasks worker_drain_s to
    # finish; those still running are then stopped and put back in the queue (0: at once).
    worker_drain_s: float = Field(default=20.0, ge=0)
    # A worker claims the tasks of the models it has resident (no pipeline to swap into GPU
    # memory first) before older ones of its other models, until one of those has waited
    # swap_patience_s; then it claims in the plain order. 0: no preference.
    swap_patience_s: float = Field(default=30.0, ge=0)
    # `easel worker` serves /healthz, /readyz and /metrics (its pipelines' load and swap
    # times) on this port (127.0.0.1 unless worker_health_host says otherwise); None: no HTTP.
    worker_health_port: int | None = Field(default=None, ge=1, le=65535)
    worker_health_host: str = "127.0.0.1"
    # A worker's diffusers pipelines may keep at most this many GB (10⁹ bytes) of weights
    # on each device; the least recently used idle ones make room, parked in CPU memory
    # (gpu_offload = "cpu") or freed ("unload"). None: no budget, each stays where it loaded.
    gpu_memory_budget_gb: float | None = Field(default=None, gt=0)
    gpu_offload: Literal["cpu", "unload"] = "cpu"
    # How long a starting worker waits for an unreachable database before it exits non-zero.
    worker_register_timeout_s: float = Field(default=300.0, gt=0)
    fetch_timeout_s: float = Field(default=20.0, gt=0)
    queue_timeout_s: float = Field(default=3600.0, gt=0)  # queued longer: expired, refunded
    output_retention_s: float = Field(default=7 * 86400.0, gt=0)  # then output is deleted
    janitor_interval_s: float = Field(default=30.0, gt=0)  # how often both are checked
    # delivered or dead webhook deliveries (and their attempt log) are forgotten after this
    delivery_log_retention_s: float = Field(default=30 * 86400.0, gt=0)
    # how long one webhook delivery attempt may take (connect to the end of the answer's
    # headers) before it counts as failed and is retried later
    webhook_timeout_s: float = Field(default=10.0, gt=0, le=300)
    # task events (what watch and SSE replay, e.g. after Last-Event-ID) are forgotten after this
    event_log_retention_s: float = Field(default=7 * 86400.0, gt=0)
    log_format: Literal["text", "json"] = "text"  # json: one object per line, with trace_id
    # Request limits (easel.api.limits, easel.services.ratelimit): a body over max_request_bytes is
    # refused (413/1004) before it is parsed (uploads: 20 MB); each API key may make
    # rate_limit_per_s requests a second (bursts up to rate_limit_burst; 0: no limit) in
    # each API process; a header block over max_header_bytes is refused by the HTTP server.
    max_request_bytes: int = Field(default=1024 * 1024, ge=1024)
    rate_limit_per_s: float = Field(default=20.0, ge=0)
    rate_limit_burst: int = Field(default=40, ge=1)
    max_header_bytes: int = Field(default=16 * 1024, ge=4096)
    # Slow clients and connections (easel.server, docs/reliability.md "Availability and
    # streams"): a request's header block must arrive within header_timeout_s; its body
    # within body_timeout_s plus a second per body_min_bytes_per_s received; an idle
    # kept-alive connection is closed after keep_alive_timeout_s; each API process holds at
    # most max_connections (fewer if its descriptor limit is lower). On SIGTERM, event
    # streams end and requests still running get shutdown_grace_s.
    header_timeout_s: float = Field(default=10.0, gt=0)
    body_timeout_s: float = Field(default=30.0, gt=0)
    body_min_bytes_per_s: int = Field(default=8192, gt=0)
    keep_alive_timeout_s: int = Field(default=75, gt=0)
    max_connections: int = Field(default=1000, ge=16)
    shutdown_grace_s: int = Field(default=10, ge=1)
    # Event streams (easel.services.streams): at most max_streams_per_key open per key in each API
    # process; each re-checks its key every stream_check_s (ended once it is revoked) and
    # is charged one request per check.
    max_streams_per_key: int = Field(default=20, ge=1)
    stream_check_s: float = Field(default=5.0, gt=0)
    # Streams read the event log when woken (PostgreSQL: LISTEN/NOTIFY; SQLite: in-process
    # after each commit). On SQLite each API process also reads the log's new rows every
    # stream_poll_s, for events other processes committed (--processes N).
    stream_poll_s: float = Field(default=0.25, gt=0)
    # Reverse proxies (addresses or CIDR networks) whose X-Forwarded-For is believed: the
    # client is the right-most hop not in this list. From other peers it is ignored.
    trusted_proxies: list[str] = Field(default_factory=list)
    # POST /upload/sts/token (with an s3:// storage_url): temporary credentials from STS
    # AssumeRole, signed with the AWS_* credentials of the environment. The role must allow
    # s3:PutObject on <prefix>/uploads/*; each token narrows it to one new key.
    sts_endpoint: str | None = None  # e.g. https://sts.us-west-2.amazonaws.com; None: off
    sts_role_arn: str | None = None  # the role to assume, arn:aws:iam::<account>:role/<name>
    sts_duration_s: int = Field(default=900, ge=900, le=43200)  # credential lifetime (AWS: ≥900)
    # host[:port] clients reach the bucket at over HTTPS (the SDK prepends https://); default:
    # the host of AWS_ENDPOINT_URL, else s3.<AWS_REGION>.amazonaws.com
    s3_public_host: str | None = None
    # The models this server knows (not a key of the file: code passes another catalog,
    # e.g. a test serving a model the code does not list), with the file's [aliases] and
    # [models."…"] credits applied (_configure_catalog). Before models: it checks them.
    catalog: InstanceOf[Catalog] = Field(default_factory=lambda: CATALOG, exclude=True)
    # Other names for models: a request naming the key runs as the model the value names (a
    # model_version or v3 name), at its price, on its backends. A key that is a model_version
    # sends all of that entry's names there: how a model retired upstream is remapped.
    aliases: dict[str, str] = Field(default_factory=dict)
    # The model a v2 text_to_image task runs on (its body names none); None: the catalog's
    # default model. Its price stays Tripo's flat 5 credits.
    text_to_image_model: str | None = None
    # The image editing model that makes the four views of generate_multiview_image and
    # edit_multiview_image tasks (one generation per view); None: the catalog's default
    # model. It must take reference images. Prices stay Tripo's (10; 5 per edited view).
    multiview_model: str | None = None
    backends: dict[str, BackendTable] = Field(default_factory=dict)
    models: dict[str, ModelTable] = Field(default_factory=dict)

    @field_validator("allow_outbound_cidrs", "trusted_proxies")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        for cidr in value:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError as exc:
                raise ValueError(f"{cidr!r} is not a CIDR network such as 10.1.0.0/16") from exc
        return value

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        """An http(s) origin (and path) of at most 256 characters: it is stored, as a
        webhook's base of output links (512 characters), and starts every output URL."""
        if not value:
            return None
        parts = urlsplit(value)
        if (
            parts.scheme not in ("http", "https")
            or not parts.hostname
            or parts.query
            or parts.fragment
            or len(value) > 256
        ):
            raise ValueError(
                f"{value[:80]!r} is not an http(s) URL of at most 256 characters without a "
                "query, such as https://images.example.com"
            )
        return value

    @model_validator(mode="before")
    @classmethod
    def _configure_catalog(cls, data: Any) -> Any:
        """Apply ``aliases`` and the model tables' ``credits`` to the catalog, before the
        fields that are checked against it. Ill-typed values are left to the fields' own
        checks, which name them."""
        if not isinstance(data, dict):
            return data
        aliases, models = data.get("aliases") or {}, data.get("models") or {}
        if not isinstance(aliases, dict) or not isinstance(models, dict):
            return data
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in aliases.items()):
            return data
        credits = {}
        for version, table in models.items():
            price = table.get("credits") if isinstance(table, dict) else None
            if isinstance(table, ModelTable):
                price = table.credits
            if isinstance(price, int) and not isinstance(price, bool) and price > 0:
                credits[version] = price
        catalog = data.get("catalog", CATALOG)
        if not isinstance(catalog, Catalog) or not (aliases or credits):
            return data
        known = {version: price for version, price in credits.items() if version in catalog}
        return {**data, "catalog": catalog.configured(aliases, known)}

    @field_validator("text_to_image_model")
    @classmethod
    def _text_to_image_model(cls, value: str | None, info: ValidationInfo) -> str | None:
        models = info.data.get("catalog", CATALOG)
        if value is not None and value not in models and value not in models.aliases:
            raise ValueError(f"unknown model_version {value!r}; known: {', '.join(models)}")
        return value

    @field_validator("multiview_model")
    @classmethod
    def _multiview_model(cls, value: str | None, info: ValidationInfo) -> str | None:
        models = info.data.get("catalog", CATALOG)
        if value is None:
            return value
        if value not in models and value not in models.aliases:
            raise ValueError(f"unknown model_version {value!r}; known: {', '.join(models)}")
        if models.lookup(value).images is not ImageRule.ACCEPTS:
            raise ValueError(
                f"multiview_model {value!r} takes no reference images; pick an editing model"
            )
        return value

    @field_validator("models")
    @classmethod
    def _model_versions(
        cls, value: dict[str, ModelTable], info: ValidationInfo
    ) -> dict[str, ModelTable]:
        models = info.data.get("catalog", CATALOG)
        for version in value:
            if version in models.aliases:
                target = models.aliases[version]
                raise ValueError(
                    f"{version!r} is an alias of {target!r} ([aliases]): its requests run on "
                    f'{target}\'s backends. Configure [models."{target}"] instead, or remove '
                    "the alias"
                )
            if version not in models:
                raise ValueError(f"unknown model_version {version!r}; known: {', '.join(models)}")
        return value

    @model_validator(mode="after")
    def _backends_exist(self) -> Settings:
        for version, table in self.models.items():
            for name in table.backends:
                if name not in self.backends:
                    raise ValueError(
                        f'models."{version}" names backend {name!r}, which has no '
                        f"[backends.{name}] table"
                    )
        return self


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, field in Settings.model_fields.items():
        raw = env.get(f"EASEL_{name.upper()}")
        if raw is None or name in ("backends", "models", "aliases", "catalog"):
            continue
        if field.annotation == list[str]:
            stripped = raw.strip()
            out[name] = (
                json.loads(stripped)
                if stripped.startswith("[")
                else [part.strip() for part in stripped.split(",") if part.strip()]
            )
        else:
            out[name] = raw
    return out


def _describe(exc: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "(top level)"
        if error["type"] == "extra_forbidden":
            lines.append(f"  unknown key {where!r}")
        elif not error["loc"] and error["type"] == "value_error":  # a check of several keys
            lines.append(f"  {error['ctx']['error']}")
        else:
            lines.append(f"  {where}: {error['msg']}")
    return "\n".join(lines)


def load_settings(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Read ``path`` (or ``$EASEL_CONFIG``; none is fine) and apply ``EASEL_*`` overrides."""
    env = os.environ if env is None else env
    path = path or env.get(CONFIG_ENV) or None
    data: dict[str, Any] = {}
    source = "the environment"
    if path is not None:
        source = str(path)
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"configuration file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    if "catalog" in data:  # code passes a catalog (Settings.catalog); a file cannot
        raise ConfigError(f"invalid configuration in {source}:\n  unknown key 'catalog'")
    data.update(_env_overrides(env))
    if not data.get("backends") and not data.get("models"):
        aliases = data.get("aliases")
        retired: list[str] = list(aliases) if isinstance(aliases, dict) else []
        data.update(auto_tables(env, local_gpu=has_local_gpu(), retired=retired))
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from None
