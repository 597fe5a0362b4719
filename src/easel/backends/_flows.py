"""The two ways a remote kind runs a job, on top of :class:`~easel.backends._remote.RemoteBackend`.

- :class:`SdkBackend` (``openai``, ``gemini``): one vendor SDK client, made on first use, and
  one request per job under the concurrency limit and the retry policy.
- :class:`HttpBackend` (``modelark``): over plain httpx, one guarded client per job under the
  concurrency limit, each request under the retry policy.
- :class:`PollingBackend` (``bfl``, ``midjourney-proxy``): an :class:`HttpBackend` that
  submits a task, polls it until it ends and downloads the result.

Each request has ``request_timeout_s`` for its whole answer and is retried past it
(:meth:`~easel.backends._remote.RemoteBackend.request`); the job as a whole has ``timeout_s``,
which the worker enforces. A cancelled task stops either between steps.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Generic, TypeVar

import httpx

from easel.backends._remote import (
    DEFAULT_RETRY,
    RemoteBackend,
    RemoteOptions,
    RetryPolicy,
    model_for,
    refused,
)
from easel.backends.base import BackendError, GeneratedImage, Job, JobCancelled, JobControl
from easel.outbound import OutboundPolicy, OutboundRefused, find_refusal, guarded_client

C = TypeVar("C")  # a vendor SDK's client
R = TypeVar("R")  # the SDK's answer to one request


class SdkBackend(RemoteBackend, ABC, Generic[C, R]):
    """A remote kind on a vendor SDK: one client made on first use, one request per job.

    The SDK is imported in :meth:`_open` and the hooks, never when the kind's module is.
    """

    _client: C | None = None

    @abstractmethod
    def _open(self) -> C:
        """A new SDK client (:func:`~easel.backends._remote.missing_sdk` when not installed)."""

    @abstractmethod
    async def _request(self, client: C, model: str, job: Job) -> R:
        """One request for ``job``, SDK errors translated into the backend error tree."""

    @abstractmethod
    def _image(self, answer: R, model: str) -> GeneratedImage:
        """The image in ``answer``, or the error that explains its absence."""

    @abstractmethod
    async def _close(self, client: C) -> None: ...

    async def generate(self, job: Job, control: JobControl) -> GeneratedImage:
        model = model_for(job, self.kind)
        if self._client is None:
            self._client = self._open()
        client = self._client
        answer = await self.call(lambda: self._refusals(client, model, job), control, job.task_id)
        image = self._image(answer, model)
        control.progress(1.0)
        return image

    async def _refusals(self, client: C, model: str, job: Job) -> R:
        """One request; a URL the outbound rules refused fails it (BackendFailed), even where
        the SDK wrapped the refusal its transport raised."""
        try:
            return await self._request(client, model, job)
        except (BackendError, OutboundRefused) as exc:
            refusal = find_refusal(exc)
            if refusal is None:
                raise
            raise refused(self.provider, refusal.url, refusal.reason) from exc

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await self._close(client)


class HttpBackend(RemoteBackend):
    """A remote kind spoken over plain httpx: :meth:`session` gives each job its client."""

    @asynccontextmanager
    async def session(self) -> AsyncIterator[httpx.AsyncClient]:
        """A guarded HTTP client for one job (:meth:`transport`: the address rules on every
        URL a provider names, the key only to trusted hosts), under the concurrency limit.
        Send each request through :meth:`request` (its time limit and retries). A URL the
        rules refuse fails the job (BackendFailed), unfetched."""
        limit_s = self.options.request_limit_s
        try:
            async with (
                self._slots,
                guarded_client(
                    self.transport(), timeout_s=limit_s, follow_redirects=True
                ) as client,
            ):
                yield client
        except OutboundRefused as refusal:
            raise refused(self.provider, refusal.url, refusal.reason) from None


class PollingBackend(HttpBackend):
    """A remote kind that submits a task over httpx, then polls it until it ends."""

    poll_interval_s: float = 1.0  # seconds between two polls; a kind sets its own

    def __init__(
        self,
        name: str,
        options: RemoteOptions,
        *,
        retry: RetryPolicy = DEFAULT_RETRY,
        poll_interval_s: float | None = None,
        outbound: OutboundPolicy | None = None,
    ) -> None:
        super().__init__(name, options, retry=retry, outbound=outbound)
        if poll_interval_s is not None:
            self.poll_interval_s = poll_interval_s

    async def poll(
        self,
        fetch: Callable[[], Awaitable[dict[str, Any]]],
        progress: Callable[[dict[str, Any]], float | None],
        result: Callable[[dict[str, Any]], str | None],
        control: JobControl,
        task_id: str,
    ) -> str:
        """``fetch`` the task every ``poll_interval_s``, reporting its ``progress``, until
        ``result`` gives the image URL (``result`` raises when the task failed)."""
        while True:
            if control.cancelled:
                raise JobCancelled(task_id)
            answer = await fetch()
            fraction = progress(answer)
            if fraction is not None:
                control.progress(fraction)
            url = result(answer)
            if url is not None:
                return url
            await asyncio.sleep(self.poll_interval_s)
