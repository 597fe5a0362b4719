"""Backend kind ``modelark``: ByteDance's Seedream models on BytePlus ModelArk, over httpx.

Written from ModelArk's image generation API reference. One synchronous request per job:
``POST {base_url}/api/v3/images/generations`` with ``Authorization: Bearer <key>``
(``ARK_API_KEY`` by default, the variable BytePlus's own SDKs read) and a JSON body:

- ``model``: the job's ``provider_model`` (the catalog's ``modelark`` id, such as
  ``seedream-5-0-260128``, or an inference endpoint id ``ep-…`` set in ``provider_model``);
- ``prompt``; ``image``: the references as base64 data URIs (``data:image/png;base64,…``),
  one string for one reference, a list for several (multi-image fusion);
- ``size`` (``1K``/``2K``/``4K`` or ``WxH``), ``response_format`` (``url`` or ``b64_json``),
  ``watermark``, and ``sequential_image_generation: "disabled"`` (one image, no group).

The answer is ``{model, created, data: [{url | b64_json, size}], usage}``; an image the
provider refused instead carries ``data[i].error {code, message}``. A ``url`` is a signed link
on BytePlus's object store (valid about 24 hours), downloaded at once through the guarded
client: the address rules apply to it, and the key goes only to ``base_url``'s origin and
``trusted_hosts``, never to the link's host.

Errors are ``{"error": {"code", "message", "type", "param"}}``: a code naming sensitive
content or a risk detection (``InputTextSensitiveContentDetected``,
``OutputImageSensitiveContentDetected``, ``InputImageRiskDetection`` …) is a content-policy
refusal (:class:`BackendRejected`); 401 a bad key; 403 ``AccountOverdueError`` an account
in arrears; 404 a model or endpoint the account cannot use; 429 and 5xx are retried with
bounded back-off.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import replace
from typing import Any, Literal

import httpx
from pydantic import Field

from easel.backends._flows import HttpBackend
from easel.backends._remote import (
    RemoteOptions,
    download_image,
    http_error,
    model_for,
    shorten,
    to_generated_image,
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
)
from easel.domain.images import MIME_TYPES
from easel.domain.options import TIERS, ImageOptions, pixel_size
from easel.outbound import OutboundPolicy

PROVIDER = "BytePlus ModelArk"
PATH = "/api/v3/images/generations"
MAX_REFERENCES = 14  # the provider's limit; the catalog's is lower (seedream_v5: 4)
_POLICY = re.compile(r"SensitiveContent|RiskDetection", re.IGNORECASE)


class Options(RemoteOptions):
    base_url: str = "https://ark.ap-southeast.bytepluses.com"
    api_key_env: str = "ARK_API_KEY"
    size: str = Field(default="2K", pattern=r"^([124]K|\d{3,5}x\d{3,5})$")
    response_format: Literal["url", "b64_json"] = "url"
    watermark: bool = False  # the provider's default is true: an "AI generated" mark
    request_timeout_s: float = Field(default=180, gt=0)  # one synchronous generation


def size_param(options: ImageOptions, configured: str) -> str:
    """``size`` for the task's ``options``: a tier or ``WxH`` as asked; a shape asked by
    ratio alone (a v2 template's "ar 16:9") as the nearest ``WxH`` within the provider's
    limits (at most 4096 a side and 4096² pixels), over the tier's area or the configured
    size's; else the configured size."""
    if options.ratio is None or options.pixels is not None:
        return options.size or configured
    sized = replace(options, size=options.size or (configured if configured in TIERS else None))
    base = pixel_size(sized, (2048, 2048), multiple=16, min_side=512, max_side=4096)
    return f"{base[0]}x{base[1]}"


def request_body(model: str, job: Job, options: Options) -> dict[str, Any]:
    """The JSON of ``POST /api/v3/images/generations`` for ``job``: the task's own ``size``
    and ``watermark`` where it asked for them, else the backend's configured ones."""
    if len(job.images) > MAX_REFERENCES:
        raise BackendFailed(f"ModelArk takes at most {MAX_REFERENCES} reference images")
    asked = job.options
    body: dict[str, Any] = {
        "model": model,
        "prompt": job.prompt,
        "size": size_param(asked, options.size),
        "response_format": options.response_format,
        "watermark": options.watermark if asked.watermark is None else asked.watermark,
        "sequential_image_generation": "disabled",
    }
    images = [
        f"data:{MIME_TYPES[image.format]};base64,{base64.b64encode(image.data).decode('ascii')}"
        for image in job.images
    ]
    if images:
        body["image"] = images[0] if len(images) == 1 else images
    return body


def _error_code(text: str) -> str:
    """``error.code`` of a ModelArk error body ('' when it has none)."""
    try:
        error = json.loads(text).get("error")
    except (ValueError, AttributeError):
        return ""
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else ""


def error_for(status: int, text: str, model: str) -> BackendError:
    """A ModelArk error answer as a backend error, in words an operator can act on."""
    code = _error_code(text)
    if _POLICY.search(code):
        detail = shorten(json.loads(text)["error"].get("message") or code)
        return BackendRejected(f"{PROVIDER} refused the content ({code}): {detail}")
    if status == 403 and code == "AccountOverdueError":
        return BackendFailed(
            f"the {PROVIDER} account has an overdue balance (HTTP 403 {code}); top it up in "
            "the BytePlus billing center or route this model to another backend"
        )
    if status == 404 or code.startswith(("ModelNotOpen", "InvalidEndpoint")):
        return BackendFailed(
            f"{PROVIDER} does not serve {model!r} to this account (HTTP {status} {code}): "
            "activate the model in the ModelArk console, or set provider_model to a current "
            "model or inference endpoint id (ep-…) in the [models] table of the config"
        )
    return http_error(status, text, provider=PROVIDER, model=model)


def image_from(answer: object) -> str | bytes:
    """The first image of an answer: its URL, or its decoded bytes (``b64_json``)."""
    data = answer.get("data") if isinstance(answer, dict) else None
    first = data[0] if isinstance(data, list) and data else None
    if not isinstance(first, dict):
        raise BackendFailed(f"{PROVIDER} answered without an image: {shorten(str(answer))}")
    error = first.get("error")
    if isinstance(error, dict):
        code, message = str(error.get("code") or ""), shorten(str(error.get("message") or ""))
        if _POLICY.search(code):
            raise BackendRejected(f"{PROVIDER} refused the image it made ({code}): {message}")
        raise BackendFailed(f"{PROVIDER} could not generate the image ({code}): {message}")
    if isinstance(first.get("url"), str) and first["url"]:
        return str(first["url"])
    if isinstance(first.get("b64_json"), str):
        try:
            return base64.b64decode(first["b64_json"], validate=True)
        except (binascii.Error, ValueError):
            raise BackendFailed(f"{PROVIDER} answered with invalid base64") from None
    raise BackendFailed(f"{PROVIDER} answered with neither data[0].url nor data[0].b64_json")


class ModelArkBackend(HttpBackend):
    kind = "modelark"
    provider = PROVIDER
    credential_headers = ("authorization",)
    options: Options

    async def generate(self, job: Job, control: JobControl) -> GeneratedImage:
        """One generation request; the image from its answer (downloaded when a URL)."""
        if control.cancelled:
            raise JobCancelled(job.task_id)
        model = model_for(job, self.kind)
        body = request_body(model, job, self.options)
        headers = {"authorization": f"Bearer {self.api_key()}"}
        url = f"{self.options.base_url.rstrip('/')}{PATH}"
        async with self.session() as client:

            async def once() -> httpx.Response:
                if control.cancelled:
                    raise JobCancelled(job.task_id)
                try:
                    response = await client.post(url, headers=headers, json=body)
                except httpx.TransportError as exc:
                    raise unreachable(PROVIDER, url, exc) from exc
                if response.status_code >= 400:
                    raise error_for(response.status_code, response.text, model)
                return response

            response = await self.request(once)
            try:
                answer = response.json()
            except ValueError:
                raise BackendFailed(f"{PROVIDER} answered with something not JSON") from None
            found = image_from(answer)
            if isinstance(found, str):
                image = await self.request(lambda: download_image(client, found, PROVIDER))
            else:
                image = to_generated_image(found, PROVIDER)
        control.progress(1.0)
        return image


def create(name: str, options: Options, outbound: OutboundPolicy) -> ModelArkBackend:
    return ModelArkBackend(name, options, outbound=outbound)
