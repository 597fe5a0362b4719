"""Backend kind ``midjourney-proxy``: Midjourney through an operator's self-hosted proxy.

Midjourney has no official API, and its guidelines forbid automating the service; accounts
driven through a proxy risk a ban. This backend therefore talks only to a proxy that the
operator runs and configures: the REST shape of the open-source novicezk/midjourney-proxy
(also served by its forks, e.g. trueai-org/midjourney-proxy).

- ``POST {base_url}/mj/submit/imagine`` with ``{"prompt", "base64Array": [data URLs]}`` and,
  when ``MJ_API_SECRET`` (``api_key_env``) is set, the header ``mj-api-secret``; the job's
  options become Midjourney parameters at the prompt's end (:func:`imagine_prompt`: ``--ar``
  for the aspect ratio or a ``WxH`` size's ratio, ``--no`` for the negative prompt). The answer is
  ``{"code", "description", "result": "<task id>"}``: code 1 (submitted), 22 (queued) and 21
  (that task exists already) go on, 23 (queue full) is retried, 24 (banned prompt) is a policy
  refusal, others fail.
- ``GET {base_url}/mj/task/{id}/fetch`` until ``status`` is ``SUCCESS`` (download
  ``imageUrl``, the 2×2 grid) or ``FAILURE`` (``failReason``; banned wording is a refusal);
  ``progress`` such as ``"45%"`` is reported.

``base_url`` is the root that holds ``/mj/``. Unset, ``MJ_PROXY_URL`` is used; with neither the
backend stays unavailable and says which to set. The proxy is the operator's own, so it may
live on a private address; the image URLs it answers with may not (they go through the
guarded client, and ``mj-api-secret`` goes to the proxy's own origin only).
"""

from __future__ import annotations

import base64
import os
import re
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import Field

from easel.backends._flows import PollingBackend
from easel.backends._remote import (
    RemoteOptions,
    download_image,
    http_error,
    png_or_jpeg,
    read_api_key,
    shorten,
    unreachable,
)
from easel.backends.base import (
    BackendFailed,
    BackendRejected,
    BackendUnavailable,
    GeneratedImage,
    Job,
    JobCancelled,
    JobControl,
    record_mapping,
)
from easel.domain.options import reduced_ratio
from easel.outbound import OutboundPolicy

PROVIDER = "the Midjourney proxy"
URL_ENV = "MJ_PROXY_URL"
_SUBMITTED, _EXISTED, _QUEUED, _QUEUE_FULL, _BANNED = 1, 21, 22, 23, 24
_RUNNING = ("NOT_START", "SUBMITTED", "IN_PROGRESS")
_BANNED_WORDING = re.compile(
    r"banned|moderat|community (standards|guidelines)|image filter|敏感词", re.IGNORECASE
)
_PERCENT = re.compile(r"(\d+(?:\.\d+)?)\s*%")


class Options(RemoteOptions):
    base_url: str = ""  # empty: read MJ_PROXY_URL
    api_key_env: str = "MJ_API_SECRET"
    timeout_s: float = Field(default=600, gt=0)
    request_timeout_s: float = Field(default=30, gt=0)  # submit, one poll, the download


def parse_progress(value: object) -> float | None:
    """``"45%"`` → 0.45; None when the proxy gives no percentage."""
    match = _PERCENT.search(value) if isinstance(value, str) else None
    return min(float(match.group(1)) / 100, 1.0) if match else None


def imagine_prompt(job: Job) -> str:
    """The prompt with the job's options as Midjourney parameters: ``--ar W:H`` (the aspect
    ratio, else a ``WxH`` size reduced) and ``--no …`` (the negative prompt, on one line)."""
    options, parameters = job.options, []
    ratio = options.aspect_ratio or (reduced_ratio(*options.pixels) if options.pixels else None)
    if ratio is not None:
        parameters.append(f"--ar {ratio}")
    if job.negative_prompt:
        parameters.append(f"--no {' '.join(job.negative_prompt.split())}")
    return " ".join([job.prompt, *parameters])


def _data_urls(job: Job) -> list[str]:
    urls = []
    for image in job.images:
        data, fmt = png_or_jpeg(image)
        urls.append(f"data:image/{fmt};base64,{base64.b64encode(data).decode('ascii')}")
    return urls


def task_id_from(answer: dict[str, Any]) -> str:
    """The task id from a submit answer, or the error its ``code`` stands for."""
    code = answer.get("code")
    said = shorten(str(answer.get("description") or "no description"))
    if code in (_SUBMITTED, _QUEUED, _EXISTED) and isinstance(answer.get("result"), str | int):
        return str(answer["result"])
    if code == _BANNED:
        word = (answer.get("properties") or {}).get("bannedWord")
        hint = f" (banned word: {shorten(str(word), 80)})" if word else ""
        raise BackendRejected(f"Midjourney refuses this prompt{hint}: {said}")
    if code == _QUEUE_FULL:
        raise BackendUnavailable(f"the Midjourney proxy's queue is full (code 23): {said}")
    raise BackendFailed(
        f"the Midjourney proxy refused the task (code {shorten(repr(code), 40)}): {said}"
    )


def interpret(task: dict[str, Any]) -> str | None:
    """``imageUrl`` once ``SUCCESS``; None while running; raises on a terminal state."""
    status = task.get("status")
    if status in _RUNNING:
        return None
    if status == "SUCCESS":
        url = task.get("imageUrl")
        if not isinstance(url, str) or not url:
            raise BackendFailed("the Midjourney proxy said SUCCESS but gave no imageUrl")
        return url
    reason = shorten(str(task.get("failReason") or "no reason given"))
    if status == "FAILURE" and _BANNED_WORDING.search(reason):
        raise BackendRejected(f"Midjourney refused the task: {reason}")
    if status in ("FAILURE", "CANCEL", "MODAL"):
        raise BackendFailed(f"Midjourney task ended {status}: {reason}")
    raise BackendFailed(
        f"the Midjourney proxy answered an unknown task status {shorten(repr(status), 80)}"
    )


class MidjourneyProxyBackend(PollingBackend):
    kind = "midjourney-proxy"
    provider = PROVIDER
    credential_headers = ("mj-api-secret",)
    options: Options
    poll_interval_s = 2.0

    @property
    def root(self) -> str:
        """The proxy root that holds ``/mj/``: ``base_url``, else ``$MJ_PROXY_URL``."""
        return (self.options.base_url or os.environ.get(URL_ENV, "")).strip().rstrip("/")

    @property
    def origin(self) -> str:
        return self.root

    def configuration_problem(self) -> str | None:
        """Only the URL is required: the proxy's ``mj-api-secret`` is optional."""
        if self.root:
            return None
        return (
            f"no midjourney-proxy URL: set base_url in [backends.{self.name}] or {URL_ENV} to "
            "the root of your proxy (the URL that holds /mj/, e.g. http://127.0.0.1:8080)"
        )

    async def generate(self, job: Job, control: JobControl) -> GeneratedImage:
        """Submit an imagine task, poll its fetch route, download ``imageUrl``."""
        if control.cancelled:
            raise JobCancelled(job.task_id)
        reason = self.unavailable_reason()
        if reason:
            raise BackendUnavailable(f"backend {self.name!r} has {reason}")
        secret = read_api_key(self.options)
        headers = {"mj-api-secret": secret} if secret else {}
        body = {"prompt": imagine_prompt(job), "base64Array": _data_urls(job)}
        record_mapping(self.name, job, {"prompt": body["prompt"]})
        async with self.session() as client:
            task_id = await self.request(lambda: self._submit(client, headers, body))
            image_url = await self._poll(client, task_id, headers, control, job)
            url = str(httpx.URL(f"{self.root}/").join(image_url))
            image = await self.request(lambda: download_image(client, url, PROVIDER))
        control.progress(1.0)
        return image

    async def _submit(
        self, client: httpx.AsyncClient, headers: dict[str, str], body: dict[str, Any]
    ) -> str:
        """``POST /mj/submit/imagine`` once; the proxy's task id."""
        answer = await self._json(client, "POST", "/mj/submit/imagine", headers, body)
        return task_id_from(answer if isinstance(answer, dict) else {})

    async def _poll(
        self,
        client: httpx.AsyncClient,
        task_id: str,
        headers: dict[str, str],
        control: JobControl,
        job: Job,
    ) -> str:
        """``GET /mj/task/{id}/fetch`` every ``poll_interval_s`` until a terminal status."""
        path = f"/mj/task/{quote(task_id, safe='')}/fetch"  # the proxy's id, as one segment

        async def fetch() -> dict[str, Any]:
            task = await self.request(lambda: self._json(client, "GET", path, headers))
            if not isinstance(task, dict):
                raise BackendFailed(f"the Midjourney proxy no longer knows task {task_id}")
            return task

        return await self.poll(
            fetch,
            lambda task: parse_progress(task.get("progress")),
            interpret,
            control,
            job.task_id,
        )

    async def _json(
        self,
        client: httpx.AsyncClient,
        method: str,
        path: str,
        headers: dict[str, str],
        body: dict[str, Any] | None = None,
    ) -> Any:
        """One request to the proxy; its decoded JSON (None for an empty body)."""
        url = f"{self.root}{path}"
        try:
            response = await client.request(method, url, headers=headers, json=body)
        except httpx.TransportError as exc:
            raise unreachable(PROVIDER, self.root, exc) from exc
        if response.status_code >= 400:
            raise http_error(response.status_code, response.text, provider=PROVIDER)
        if not response.content.strip():
            return None
        try:
            return response.json()
        except ValueError:
            raise BackendFailed(f"the Midjourney proxy answered {path} with no JSON") from None


def create(name: str, options: Options, outbound: OutboundPolicy) -> MidjourneyProxyBackend:
    return MidjourneyProxyBackend(name, options, outbound=outbound)
