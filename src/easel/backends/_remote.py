"""What every hosted-provider kind shares: options, the API key, retries, limits, errors.

A remote kind (``openai``, ``gemini``, ``bfl``, ``midjourney-proxy``) subclasses
:class:`RemoteOptions` to set its defaults and :class:`RemoteBackend` (through one of the
job shapes in :mod:`easel.backends._flows`) to get the key check, the concurrency limit and
the bounded retry policy (:meth:`RemoteBackend.request`: one request within
``request_timeout_s``, retried on 429, 5xx and timeouts). Provider answers are translated into the
:mod:`easel.backends.base` error tree here, once: :func:`http_error` for an HTTP status and
:func:`unreachable` for timeouts and refused connections.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.util
import io
import json
import os
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, Field

from easel.backends.base import (
    BackendError,
    BackendFailed,
    BackendRateLimited,
    BackendRejected,
    BackendUnavailable,
    GeneratedImage,
    ImageBackend,
    InputImage,
    Job,
    JobCancelled,
    JobControl,
    within,
)
from easel.outbound import CredentialScope, GuardedTransport, OutboundPolicy
from easel.outbound.fetch import read_at_most

T = TypeVar("T")

# (import name, distribution) of what every remote kind runs on (stamina: the retry policy).
SHARED_PACKAGES = (("stamina", "stamina"),)
_MODERATION = re.compile(
    r"moderation|safety|content[ _-]?policy|nsfw|prohibited|inappropriate", re.IGNORECASE
)
_BAD_KEY = re.compile(r"api[_ ]key[_ ](invalid|not valid)", re.IGNORECASE)  # Gemini says 400
_DETAIL_CHARS = 300


class RemoteOptions(BaseModel):
    """Settings every remote kind takes; a kind subclasses it to set its own defaults.

    ``trusted_hosts`` are the hosts, besides ``base_url``'s own origin, that may receive the
    API key over https: exact names or ``*.domain``. A kind's default is its provider's
    documented domains; a polling or result URL anywhere else is fetched without the key.

    Two time limits: ``request_timeout_s`` for one HTTP request, its whole answer (past it the
    request counts as a timeout, which the retry policy tries again), and ``timeout_s`` for
    the whole attempt, requests, retries, waits and polls together (the worker enforces it;
    past it the next backend of the chain runs the task).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    base_url: str
    api_key_env: str
    trusted_hosts: tuple[str, ...] = ()
    timeout_s: float = Field(default=300, gt=0)
    request_timeout_s: float = Field(default=120, gt=0)
    max_concurrency: int = Field(default=4, ge=1)

    @property
    def request_limit_s(self) -> float:
        """``request_timeout_s``, at most ``timeout_s``: a configuration that only lowers
        ``timeout_s`` (as before ``request_timeout_s`` existed) bounds each request too."""
        return min(self.request_timeout_s, self.timeout_s)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently a remote request is retried on 429, 5xx and timeouts.

    It has no time limit of its own: the backend's ``timeout_s``, which the worker enforces on
    the whole attempt, ends a retry loop that would outlast it."""

    attempts: int = 3
    wait_initial_s: float = 0.5
    wait_max_s: float = 5.0


DEFAULT_RETRY = RetryPolicy()


def read_api_key(options: RemoteOptions) -> str | None:
    """The key from the environment variable ``options.api_key_env``, or None when unset."""
    return os.environ.get(options.api_key_env, "").strip() or None


def missing_key_reason(options: RemoteOptions) -> str | None:
    """None when the key is set, else the text ``unavailable_reason`` gives."""
    return None if read_api_key(options) else f"no API key: set {options.api_key_env}"


async def with_retries(call: Callable[[], Awaitable[T]], policy: RetryPolicy = DEFAULT_RETRY) -> T:
    """Run ``call``, retrying BackendRateLimited / BackendUnavailable as ``policy`` allows."""
    try:
        import stamina
    except ImportError:
        raise missing_sdk("stamina") from None
    async for attempt in stamina.retry_context(
        on=BackendUnavailable,  # BackendRateLimited is a subclass
        attempts=policy.attempts,
        timeout=None,  # the attempt's deadline (timeout_s) bounds it, in the worker
        wait_initial=policy.wait_initial_s,
        wait_max=policy.wait_max_s,
        wait_jitter=policy.wait_initial_s,
    ):
        with attempt:
            return await call()
    raise AssertionError("unreachable: stamina re-raises the last error")  # pragma: no cover


def shorten(text: str, limit: int = _DETAIL_CHARS) -> str:
    """``text`` on one line, cut to ``limit`` characters: what a provider said is quoted in
    a task's error, and a provider decides how long it is."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def error_detail(body_text: str) -> str:
    """The provider's own message from an error body (OpenAI, Gemini, BFL shapes), shortened."""
    text = body_text.strip()
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict):
            found = error.get("message") or error.get("detail") or error.get("description")
            text = str(found) if found else text
        elif isinstance(error, str):
            text = error
        elif isinstance(body.get("detail"), str):
            text = body["detail"]
    return shorten(text)


def http_error(
    status: int, body_text: str, *, provider: str = "the provider", model: str | None = None
) -> BackendError:
    """Translate an HTTP error answer into the backend error tree, in words a user can act on."""
    detail = error_detail(body_text)
    said = f" ({provider} said: {detail})" if detail else ""
    if status in (401, 403) or (status == 400 and _BAD_KEY.search(body_text)):
        return BackendFailed(
            f"{provider} refused the API key (HTTP {status}); check that the key in the "
            f"configured environment variable is valid and allowed to use this model{said}"
        )
    if status == 404:
        name = f"model {model!r}" if model else "the model"
        return BackendFailed(
            f"{name} not found or retired at {provider} (HTTP 404); set a current id with "
            f"provider_model in the [models] table of the config{said}"
        )
    if status == 429:
        return BackendRateLimited(f"{provider} is rate limiting requests (HTTP 429){said}")
    if status == 408 or status >= 500:
        return BackendUnavailable(f"{provider} is unavailable (HTTP {status}){said}")
    if status in (400, 422) and _MODERATION.search(body_text):
        return BackendRejected(f"{provider} refused the content under its usage policy{said}")
    return BackendFailed(f"{provider} rejected the request (HTTP {status}){said}")


def unreachable(provider: str, base_url: str, exc: BaseException) -> BackendUnavailable:
    """A timeout or a refused connection: the provider may answer on another attempt."""
    kind = "timed out" if "timeout" in type(exc).__name__.lower() else "could not be reached"
    said = shorten(str(exc) or type(exc).__name__)
    return BackendUnavailable(f"{provider} at {shorten(base_url, 200)} {kind}: {said}")


def refused(provider: str, url: str, reason: str) -> BackendFailed:
    """A provider's answer pointed the worker at an address the outbound rules refuse."""
    return BackendFailed(
        f"{provider} pointed the worker at {shorten(url, 200)}, which was not fetched: "
        f"{reason}. If that host is yours, allow its network in allow_outbound_cidrs"
    )


def to_generated_image(data: bytes, provider: str) -> GeneratedImage:
    """Wrap returned bytes, detecting PNG/JPEG from the bytes (WebP is converted to PNG)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return GeneratedImage(data=data, format="png")
    if data.startswith(b"\xff\xd8\xff"):
        return GeneratedImage(data=data, format="jpeg")
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        from PIL import Image

        out = io.BytesIO()
        with Image.open(io.BytesIO(data)) as image:
            image.save(out, format="PNG")
        return GeneratedImage(data=out.getvalue(), format="png")
    raise BackendFailed(f"{provider} answered with bytes that are not a PNG, JPEG or WebP image")


def model_for(job: Job, kind: str) -> str:
    """The provider's model id for ``job`` (the router gives the model table's
    ``provider_model``, else the catalog's id for ``kind``); a definite failure naming the
    config key when there is none."""
    if not job.provider_model:
        raise BackendFailed(
            f"the {kind} backend has no model id for {job.model_version!r} (the catalog names "
            f'none for this kind); set provider_model for it in [models."{job.model_version}"]'
        )
    return job.provider_model


def install_command(distribution: str) -> str:
    """``pip install 'openai>=1.80'``: the range easel's own metadata asks for, or the bare
    name where easel is not installed as a distribution."""
    try:
        requirements = importlib.metadata.requires("easel") or []
    except importlib.metadata.PackageNotFoundError:
        requirements = []
    for line in requirements:
        spec = line.split(";", 1)[0].strip()
        if re.split(r"[\s\[<>=!~(]", spec, maxsplit=1)[0].lower() == distribution.lower():
            return f"pip install '{spec}'"
    return f"pip install {distribution}"


def missing_package_reason(packages: Iterable[tuple[str, str]]) -> str | None:
    """Why a backend cannot run when a package it imports is not installed, with the command
    that installs it; None when every one is there. ``packages``: (import name, distribution)."""
    for module, distribution in packages:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a parent package missing, or a broken install
            found = False
        if not found:
            return str(missing_sdk(distribution))
    return None


def missing_sdk(package: str) -> BackendFailed:
    """The error a backend raises when its vendor SDK cannot be imported after all."""
    return BackendFailed(
        f"the {package!r} package is not installed; run: {install_command(package)}"
    )


def png_or_jpeg(image: InputImage) -> tuple[bytes, str]:
    """A reference as PNG or JPEG bytes and its format (WebP and others become PNG).

    For providers that document no WebP support (BFL, midjourney-proxy's Discord upload).
    """
    if image.format in ("png", "jpeg"):
        return image.data, image.format
    from PIL import Image

    out = io.BytesIO()
    with Image.open(io.BytesIO(image.data)) as source:
        source.save(out, format="PNG")
    return out.getvalue(), "png"


MAX_RESULT_BYTES = 50 * 1024 * 1024  # a provider's result image; a larger one is not read


async def download_image(client: httpx.AsyncClient, url: str, provider: str) -> GeneratedImage:
    """GET a result URL (often a signed, expiring link) once; no provider key is sent. At
    most ``MAX_RESULT_BYTES`` are read: a bigger answer fails the attempt unread."""
    try:
        async with client.stream("GET", url, follow_redirects=True) as response:
            too_large = BackendFailed(
                f"the result image from {provider} is larger than "
                f"{MAX_RESULT_BYTES // 2**20} MB; it was not downloaded"
            )
            body = await read_at_most(response, MAX_RESULT_BYTES, too_large)
    except httpx.TransportError as exc:
        raise unreachable(provider, url, exc) from exc
    status = response.status_code
    if status == 429 or status >= 500:
        raise http_error(status, body.decode("utf-8", "replace"), provider=provider)
    if status >= 400:
        raise BackendFailed(
            f"could not download the result image from {provider} (HTTP {status} at "
            f"{response.url.host}); a signed result URL may have expired"
        )
    return to_generated_image(body, provider)


class RemoteBackend(ImageBackend):
    """Base of the remote kinds: key check, concurrency limit, bounded retries, cancel checks.

    A provider's API has nothing to load (``load_state`` stays ``NOTHING_TO_LOAD``)."""

    kind: str = "remote"
    provider: str = "the provider"
    credential_headers: tuple[str, ...] = ()  # the headers that carry the API key
    packages: ClassVar[tuple[tuple[str, str], ...]] = ()  # (import name, distribution): its SDK

    def __init__(
        self,
        name: str,
        options: RemoteOptions,
        *,
        retry: RetryPolicy = DEFAULT_RETRY,
        outbound: OutboundPolicy | None = None,
    ) -> None:
        self.name = name
        self.options = options
        self.timeout_s = options.timeout_s
        self.retry = retry
        self.outbound = outbound or OutboundPolicy()
        self._slots = asyncio.Semaphore(options.max_concurrency)

    @property
    def origin(self) -> str:
        """The configured URL of the provider's API: exempt from the address rules (the
        operator chose it) and always trusted with the key."""
        return self.options.base_url

    def transport(self) -> GuardedTransport:
        """A guarded transport for this backend's requests: the address rules on every URL
        but the configured origin, the key only where :class:`CredentialScope` allows."""
        scope = CredentialScope.of(self.origin, self.credential_headers, self.options.trusted_hosts)
        return GuardedTransport(self.outbound, trusted_origin=self.origin, credentials=scope)

    @cached_property
    def missing_package(self) -> str | None:
        """A package the kind imports is not installed: the backend never takes a task (its
        models are not served) rather than accept one and fail it. Checked once: an install
        needs a restart to be imported anyway."""
        return missing_package_reason((*SHARED_PACKAGES, *self.packages))

    def configuration_problem(self) -> str | None:
        """What the operator must set before the backend can run (the API key here)."""
        return missing_key_reason(self.options)

    def unavailable_reason(self) -> str | None:
        return self.missing_package or self.configuration_problem()

    def api_key(self) -> str:
        """The key, or BackendUnavailable naming the variable to set (another backend may run)."""
        key = read_api_key(self.options)
        if key is None:
            raise BackendUnavailable(
                f"backend {self.name!r} has no API key: set {self.options.api_key_env}"
            )
        return key

    async def request(self, send: Callable[[], Awaitable[T]]) -> T:
        """One provider request, retried as :attr:`retry` allows on 429, 5xx and timeouts.

        Each try must bring its whole answer within ``request_timeout_s``: an SDK's (or
        httpx's) own timeout bounds each read, so a provider sending a byte now and then would
        hold it for ever. Past that the try is BackendUnavailable, tried again like a 5xx."""
        limit_s = self.options.request_limit_s
        late = (
            f"{self.provider} at {shorten(self.origin, 200)} timed out: no complete answer "
            f"within {limit_s:g} s"
        )
        return await with_retries(lambda: within(limit_s, send(), late), self.retry)

    async def call(
        self, attempt: Callable[[], Awaitable[T]], control: JobControl, task_id: str
    ) -> T:
        """Run one provider request (:meth:`request`) under the concurrency limit, unless
        the task was cancelled before a try."""

        async def checked() -> T:
            if control.cancelled:
                raise JobCancelled(task_id)
            return await attempt()

        async with self._slots:
            return await self.request(checked)
