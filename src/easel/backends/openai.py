"""Backend kind ``openai``: GPT image models through the official ``openai`` SDK.

A job without images goes to ``POST {base_url}/images/generations`` (JSON body: model,
prompt, n=1); a job with images goes to ``POST {base_url}/images/edits`` (multipart, every
reference as an ``image[]`` part, in image[N] order). GPT image models always answer with
base64 (``data[0].b64_json``). The SDK's own retries are off (``max_retries=0``): the bounded
policy of :mod:`easel.backends._remote` decides, and SDK exceptions are translated here.
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
)
from easel.domain.images import MIME_TYPES
from easel.outbound import OutboundPolicy, guarded_client

if TYPE_CHECKING:
    from openai import AsyncOpenAI
    from openai.types import ImagesResponse

_POLICY_CODES = ("moderation_blocked", "content_policy_violation")
_EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}


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

        try:
            if job.images:
                return await client.images.edit(
                    model=model, image=_references(job), prompt=job.prompt
                )
            return await client.images.generate(model=model, prompt=job.prompt, n=1)
        except openai.OpenAIError as exc:
            raise _translate(exc, model, self.options.base_url) from exc

    def _image(self, answer: ImagesResponse, model: str) -> GeneratedImage:
        return _decode(answer)

    async def _close(self, client: AsyncOpenAI) -> None:
        await client.close()


def create(name: str, options: Options, outbound: OutboundPolicy) -> OpenAIBackend:
    return OpenAIBackend(name, options, outbound=outbound)
