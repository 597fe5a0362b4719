"""Backend kind ``openai``: GPT image models through the official ``openai`` SDK.

A job without images goes to ``POST {base_url}/images/generations`` (JSON body: model, prompt,
n=1); a job with images goes to ``POST {base_url}/images/edits`` (multipart, every reference as
an ``image[]`` part, in image[N] order). GPT image models always answer with base64
(``data[0].b64_json``). The job's options go as ``size``, ``quality``, ``background`` and
``output_format`` (:func:`image_params`). The SDK's own retries are off (``max_retries=0``):
the bounded policy of :mod:`easel.backends._remote` decides, and SDK exceptions are translated
here.
"""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING, Any, cast

from easel.backends._flows import SdkBackend
from easel.backends._remote import (
    RemoteOptions,
    http_error,
    missing_sdk,
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
    record_mapping,
)
from easel.domain.images import MIME_TYPES
from easel.domain.options import ImageOptions, pixel_size
from easel.outbound import OutboundPolicy, guarded_client

if TYPE_CHECKING:
    from openai import AsyncOpenAI
    from openai.types import ImagesResponse

_POLICY_CODES = ("moderation_blocked", "content_policy_violation")
_EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}
# gpt-image-1 and 1.5 paint three sizes; gpt-image-2 and later any WxH within limits.
FIXED_SIZES = ((1024, 1024), (1536, 1024), (1024, 1536))
_FIXED_SIZE_MODELS = ("gpt-image-1", "chatgpt-image")


class Options(RemoteOptions):
    base_url: str = "https://api.openai.com/v1"
    api_key_env: str = "OPENAI_API_KEY"
    trusted_hosts: tuple[str, ...] = ("api.openai.com",)


def _references(job: Job) -> list[tuple[str, bytes, str]]:
    """Every input image as an SDK file tuple (filename, bytes, mime)."""
    return [
        (
            f"image{index}.{_EXTENSIONS.get(image.format, image.format)}",
            image.data,
            MIME_TYPES.get(image.format, "application/octet-stream"),
        )
        for index, image in enumerate(job.images)
    ]


def image_params(model: str, options: ImageOptions) -> dict[str, str]:
    """The Images API parameters for ``options`` on ``model``: ``size`` (a tier as its
    square, a ``WxH`` as given, an aspect ratio as the nearest size the model paints: one of
    :data:`FIXED_SIZES` for gpt-image-1/1.5, else multiples of 16 within 1:3 … 3:1 and
    3840x2160's pixels), ``quality``, ``background``, ``output_format``."""
    params: dict[str, str] = {}
    if options.size is not None or options.ratio is not None:
        if model.startswith(_FIXED_SIZE_MODELS):
            ratio = options.ratio or 1.0
            width, height = min(FIXED_SIZES, key=lambda s: abs(s[0] / s[1] - ratio))
        elif options.pixels is not None:
            width, height = options.pixels
        else:
            limits = {"max_side": 3840, "max_pixels": 3840 * 2160, "min_side": 1024 // 3}
            width, height = pixel_size(options, (1024, 1024), **limits)
        params["size"] = f"{width}x{height}"
    for name in ("quality", "background", "output_format"):
        value = getattr(options, name)
        if value is not None:
            params[name] = value
    return params


def _translate(exc: Exception, model: str, base_url: str) -> BackendError:
    """An ``openai`` SDK exception as a backend error, with the provider's own words."""
    import openai

    if isinstance(exc, openai.APIStatusError):
        code = exc.code or ""
        if any(policy in code for policy in _POLICY_CODES):
            return BackendRejected(
                f"OpenAI refused the request under its usage policy: {exc.message}"
            )
        return http_error(exc.status_code, exc.response.text, provider="OpenAI", model=model)
    if isinstance(exc, openai.APIConnectionError):  # APITimeoutError is a subclass
        return unreachable("OpenAI", base_url, exc)
    return BackendFailed(f"OpenAI answered something unexpected: {shorten(str(exc))}")


def _decode(response: ImagesResponse) -> GeneratedImage:
    """The first image of an images response (``data[0].b64_json``)."""
    encoded = response.data[0].b64_json if response.data else None
    if not encoded:
        raise BackendFailed("OpenAI answered without an image (no data[0].b64_json)")
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BackendFailed("OpenAI answered with an image that is not valid base64") from exc
    return to_generated_image(data, "OpenAI")


class OpenAIBackend(SdkBackend["AsyncOpenAI", "ImagesResponse"]):
    """``images.generate`` (no references) or ``images.edit`` (every reference)."""

    kind = "openai"
    provider = "OpenAI"
    credential_headers = ("authorization",)
    packages = (("openai", "openai"),)
    options: Options

    def _open(self) -> AsyncOpenAI:
        try:
            from openai import AsyncOpenAI
        except ImportError:
            raise missing_sdk("openai") from None
        return AsyncOpenAI(
            api_key=self.api_key(),
            base_url=self.options.base_url,
            timeout=self.options.request_limit_s,
            max_retries=0,
            # httpx's client on the guarded transport: the SDK, built on httpx2, takes an
            # httpx client too (openai._httpx2.is_legacy_httpx_async_client), untyped
            http_client=cast(
                "Any",
                guarded_client(
                    self.transport(), timeout_s=self.options.request_limit_s, follow_redirects=True
                ),
            ),
        )

    async def _request(self, client: AsyncOpenAI, model: str, job: Job) -> ImagesResponse:
        import openai

        params = image_params(model, job.options)
        record_mapping(self.name, job, dict(params))
        images = cast("Any", client.images)  # params are strings; the SDK types Literals
        try:
            if job.images:
                answer = await images.edit(
                    model=model, image=_references(job), prompt=job.prompt, **params
                )
            else:
                answer = await images.generate(model=model, prompt=job.prompt, n=1, **params)
            return cast("ImagesResponse", answer)
        except openai.OpenAIError as exc:
            raise _translate(exc, model, self.options.base_url) from exc

    def _image(self, answer: ImagesResponse, model: str) -> GeneratedImage:
        return _decode(answer)

    async def _close(self, client: AsyncOpenAI) -> None:
        await client.close()


def create(name: str, options: Options, outbound: OutboundPolicy) -> OpenAIBackend:
    return OpenAIBackend(name, options, outbound=outbound)
