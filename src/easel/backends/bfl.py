"""Backend kind ``bfl``: Black Forest Labs' hosted FLUX API, spoken over httpx.

Every request carries the key in the ``x-key`` header (``BFL_API_KEY`` by default). The
endpoint is ``POST {base_url}/v1/{endpoint}``, ``endpoint`` being the job's
``provider_model`` (by default the catalog's ``bfl`` id: ``flux-kontext-pro``,
``flux-dev``):

- a Kontext endpoint (``flux-kontext-pro``): ``prompt``, ``output_format`` (the job's, else
  ``png``), the job's ``aspect_ratio`` (a ``WxH`` size as the nearest ratio) and the
  references as raw base64 in ``input_image``, ``input_image_2`` … ``input_image_4``;
- another (``flux-dev``): ``prompt``, ``width``/``height`` (1024 square, or the job's size or
  ratio in multiples of 32 within 256–1440), ``output_format``.

The answer is ``{"id", "polling_url"}``. The backend polls that URL as given (it may name a
regional host) until ``status`` is ``Ready``, then downloads ``result.sample`` at once, since
the signed link expires in minutes. Both URLs come from the provider's answer, so both go
through the guarded client: the address rules apply on every hop, and ``x-key`` goes only to
``base_url``'s origin and https hosts in ``trusted_hosts`` (default: ``bfl.ai`` and every
name under it, where BFL's regional polling hosts live).

``Request Moderated`` / ``Content Moderated`` end in :class:`BackendRejected`; ``Error``,
``Failed`` and ``Task not found`` in :class:`BackendFailed`. HTTP 429 and 5xx are retried
with bounded back-off; 402 means the BFL account is out of credits.
"""

from __future__ import annotations

import base64
from typing import Any

import httpx
from pydantic import Field

from easel.backends._flows import PollingBackend
from easel.backends._remote import (
    RemoteOptions,
    download_image,
    http_error,
    png_or_jpeg,
    shorten,
    unreachable,
)
from easel.backends.base import (
    BackendError,
    BackendFailed,
    BackendRejected,
    GeneratedImage,
    Job,
    JobCancelled,
    JobControl,
    record_mapping,
)
from easel.domain.options import ASPECT_RATIOS, ImageOptions, nearest_ratio, pixel_size
from easel.outbound import OutboundPolicy

PROVIDER = "Black Forest Labs"
MAX_REFERENCES = 4
TEXT_TO_IMAGE_SIZE = 1024
_MODERATED = ("Request Moderated", "Content Moderated")
_FAILED = ("Error", "Failed", "Task not found")


class Options(RemoteOptions):
    base_url: str = "https://api.bfl.ai"
    api_key_env: str = "BFL_API_KEY"
    trusted_hosts: tuple[str, ...] = ("bfl.ai", "*.bfl.ai")
    request_timeout_s: float = Field(default=30, gt=0)  # submit, one poll, the download


def endpoint_for(job: Job) -> str:
    """The path segment after ``/v1/``: the job's ``provider_model`` (the model table's, else
    the catalog's)."""
    name = job.provider_model
    if not name:
        raise BackendFailed(
            f"no BFL endpoint is known for model_version {job.model_version!r}; map one with "
            f'provider_model = {{ <backend> = "flux-…" }} in its [models] table'
        )
    return name.strip().strip("/").removeprefix("v1/")


def request_body(endpoint: str, job: Job) -> dict[str, Any]:
    """The JSON for ``POST /v1/{endpoint}``: references as ``input_image``, ``input_image_2``…"""
    if len(job.images) > MAX_REFERENCES:
        raise BackendFailed(f"BFL takes at most {MAX_REFERENCES} reference images")
    body: dict[str, Any] = {"prompt": job.prompt, **shape_params(endpoint, job.options)}
    for index, image in enumerate(job.images, start=1):
        data, _ = png_or_jpeg(image)
        key = "input_image" if index == 1 else f"input_image_{index}"
        body[key] = base64.b64encode(data).decode("ascii")
    if job.images and "kontext" not in endpoint:
        del body["width"], body["height"]  # flux-dev draws no references: BFL's default
    if job.seed is not None:
        body["seed"] = job.seed
    return body


def shape_params(endpoint: str, options: ImageOptions) -> dict[str, Any]:
    """``output_format`` and the shape for ``endpoint``: Kontext takes ``aspect_ratio`` (a
    ``WxH`` size as its nearest ratio between 21:9 and 9:21), the others ``width`` and
    ``height`` (multiples of 32 within 256–1440)."""
    params: dict[str, Any] = {"output_format": options.output_format or "png"}
    if "kontext" in endpoint:
        if options.aspect_ratio is not None:
            params["aspect_ratio"] = options.aspect_ratio
        elif options.ratio is not None:
            params["aspect_ratio"] = nearest_ratio(options.ratio, (*ASPECT_RATIOS, "9:21"))
        return params
    default = (TEXT_TO_IMAGE_SIZE, TEXT_TO_IMAGE_SIZE)
    width, height = pixel_size(options, default, multiple=32, min_side=256, max_side=1440)
    return params | {"width": width, "height": height}


def _error(response: httpx.Response, endpoint: str) -> BackendError:
    if response.status_code == 402:
        return BackendFailed(
            "the Black Forest Labs account is out of credits (HTTP 402); add credits at "
            "https://dashboard.bfl.ai or route this model to another backend"
        )
    return http_error(response.status_code, response.text, provider=PROVIDER, model=endpoint)


def _progress(answer: dict[str, Any]) -> float | None:
    value = answer.get("progress")
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    fraction = value / 100 if value > 1 else value
    return min(max(float(fraction), 0.0), 1.0)


def interpret(answer: dict[str, Any]) -> str | None:
    """The result URL once ``Ready``, None while ``Pending``; raises on a terminal failure."""
    status = answer.get("status")
    if status == "Ready":
        sample = (answer.get("result") or {}).get("sample")
        if not isinstance(sample, str) or not sample:
            raise BackendFailed("Black Forest Labs said Ready but gave no result.sample URL")
        return sample
    if status == "Pending":
        return None
    if status in _MODERATED:
        raise BackendRejected(f"Black Forest Labs moderated the task ({status})")
    if status in _FAILED:
        details = answer.get("details") or answer.get("result")
        said = f": {shorten(str(details))}" if details else ""
        raise BackendFailed(f"Black Forest Labs could not generate the image ({status}){said}")
    raise BackendFailed(
        f"Black Forest Labs answered an unknown task status {shorten(repr(status), 80)}"
    )


class BflBackend(PollingBackend):
    kind = "bfl"
    provider = PROVIDER
    credential_headers = ("x-key",)
    options: Options
    poll_interval_s = 1.0

    async def generate(self, job: Job, control: JobControl) -> GeneratedImage:
        """Submit, poll ``polling_url`` until Ready, download ``result.sample``."""
        if control.cancelled:
            raise JobCancelled(job.task_id)
        endpoint = endpoint_for(job)
        body = request_body(endpoint, job)
        record_mapping(self.name, job, {k: v for k, v in body.items() if "image" not in k})
        headers = {"x-key": self.api_key(), "accept": "application/json"}
        async with self.session() as client:
            url = f"{self.options.base_url.rstrip('/')}/v1/{endpoint}"
            submitted = await self._json(client, "POST", url, endpoint, headers, body)
            polling_url = submitted.get("polling_url")
            if not isinstance(polling_url, str) or not polling_url:
                said = shorten(str(submitted))
                raise BackendFailed(f"Black Forest Labs gave no polling_url: {said}")
            sample = await self.poll(
                lambda: self._json(client, "GET", polling_url, endpoint, headers),
                _progress,
                interpret,
                control,
                job.task_id,
            )
            image = await self.request(lambda: download_image(client, sample, PROVIDER))
        control.progress(1.0)
        return image

    async def _json(
        self,
        client: httpx.AsyncClient,
        method: str,
        url: str,
        endpoint: str,
        headers: dict[str, str],
        body: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """One request with bounded retries on 429, 5xx and timeouts; the JSON object back."""

        async def once() -> httpx.Response:
            try:
                response = await client.request(method, url, headers=headers, json=body)
            except httpx.TransportError as exc:
                raise unreachable(PROVIDER, url, exc) from exc
            if response.status_code >= 400:
                raise _error(response, endpoint)
            return response

        response = await self.request(once)
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise BackendFailed(
                f"Black Forest Labs answered {shorten(url, 200)} with something not a JSON object"
            )
        return answer


def create(name: str, options: Options, outbound: OutboundPolicy) -> BflBackend:
    return BflBackend(name, options, outbound=outbound)
