"""Backend kind ``gemini``: Gemini native image models through the official ``google-genai`` SDK.

Every job is one ``POST {base_url}/v1beta/models/{model}:generateContent`` (key in the
``x-goog-api-key`` header): a user turn of the prompt text followed by each reference as an
``inlineData`` part, with ``responseModalities`` TEXT and IMAGE. The first non-thought image
part of the answer is the result. The job's size and aspect ratio go in
``generationConfig.imageConfig`` (:func:`image_config`). A prompt or answer blocked for safety
is a policy refusal (the task ends ``banned``); a text-only answer is a failure that quotes the
model's text.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from easel.backends._flows import SdkBackend
from easel.backends._remote import (
    RemoteOptions,
    http_error,
    missing_sdk,
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
from easel.domain.options import (
    ASPECT_RATIOS,
    EXTRA_RATIOS,
    TIERS,
    ImageOptions,
    nearest_ratio,
)
from easel.outbound import OutboundPolicy

if TYPE_CHECKING:
    from google.genai import Client
    from google.genai.types import Content, GenerateContentResponse

# promptFeedback.blockReason / finishReason values that mean "refused under policy".
POLICY_REASONS = frozenset(
    {
        "SAFETY",
        "PROHIBITED_CONTENT",
        "BLOCKLIST",
        "SPII",
        "JAILBREAK",
        "MODEL_ARMOR",
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
    }
)
_API_VERSION = "v1beta"
_QUOTE_CHARS = 200


class Options(RemoteOptions):
    base_url: str = "https://generativelanguage.googleapis.com"
    api_key_env: str = "GEMINI_API_KEY"
    trusted_hosts: tuple[str, ...] = ("generativelanguage.googleapis.com",)


def image_config(model: str, options: ImageOptions) -> dict[str, str]:
    """``imageConfig`` for ``options`` on ``model`` (snake_case, as the SDK's ``ImageConfig``
    takes it): ``aspect_ratio`` (a ``WxH`` size's nearest ratio the model draws; the four
    extreme ones only on 3.1 Flash) and ``image_size`` (the tier, or the tier a ``WxH``
    size's long side needs; never on 2.5 Flash, which draws about 1K only)."""
    config: dict[str, str] = {}
    ratios = ASPECT_RATIOS + EXTRA_RATIOS if model.startswith("gemini-3.1") else ASPECT_RATIOS
    if options.aspect_ratio is not None:
        config["aspect_ratio"] = options.aspect_ratio
    elif options.ratio is not None:
        config["aspect_ratio"] = nearest_ratio(options.ratio, ratios)
    tier = options.tier
    if tier is None and options.pixels is not None:
        long_side = max(options.pixels)
        tier = next((t for t, side in TIERS.items() if long_side <= side), "4K")
    if tier is not None and not model.startswith("gemini-2.5"):
        config["image_size"] = tier
    return config


def _reason(value: object) -> str:
    """An SDK enum (or a plain string for values the SDK does not know) as its name."""
    return str(getattr(value, "value", value) or "")


def _user_turn(job: Job) -> Content:
    """The prompt text, then every reference as an inline image part, in image[N] order."""
    from google.genai import types

    images = [
        types.Part.from_bytes(data=image.data, mime_type=MIME_TYPES[image.format])
        for image in job.images
    ]
    return types.Content(role="user", parts=[types.Part.from_text(text=job.prompt), *images])


def _image_from(response: GenerateContentResponse, model: str) -> GeneratedImage:
    """The first non-thought inline image of the answer, or the error that explains its absence."""
    feedback = response.prompt_feedback
    blocked = _reason(feedback.block_reason) if feedback else ""
    if blocked:
        raise BackendRejected(f"Gemini blocked the prompt under its usage policy ({blocked})")
    texts: list[str] = []
    finish = ""
    for candidate in response.candidates or []:
        finish = finish or _reason(candidate.finish_reason)
        for part in (candidate.content.parts if candidate.content else None) or []:
            inline = part.inline_data
            if inline and inline.data and (inline.mime_type or "").startswith("image/"):
                if not part.thought:
                    return to_generated_image(inline.data, "Gemini")
            elif part.text and not part.thought:
                texts.append(part.text)
    if finish in POLICY_REASONS:
        raise BackendRejected(f"Gemini refused to draw this under its usage policy ({finish})")
    said = " ".join(" ".join(texts).split())
    said = said if len(said) <= _QUOTE_CHARS else said[: _QUOTE_CHARS - 1] + "…"
    raise BackendFailed(
        f"{model} answered without an image"
        + (f" (finishReason {finish})" if finish and finish != "STOP" else "")
        + (f'; it said: "{said}"' if said else "")
    )


def _translate(exc: Exception, model: str, base_url: str) -> BackendError:
    """A ``google.genai.errors.APIError`` or transport error as a backend error."""
    from google.genai import errors

    if isinstance(exc, errors.APIError):
        body = json.dumps(exc.details) if exc.details is not None else (exc.message or "")
        return http_error(exc.code, body, provider="Gemini", model=model)
    return unreachable("Gemini", base_url, exc)


def _transport_errors() -> tuple[type[Exception], ...]:
    """The HTTP client errors the SDK lets through (it runs on httpx2 where installed, or httpx)."""
    import httpx

    try:
        import httpx2
    except ImportError:  # pragma: no cover - google-genai 3.x depends on httpx2
        return (httpx.TransportError,)
    return (httpx2.TransportError, httpx.TransportError)


class GeminiBackend(SdkBackend["Client", "GenerateContentResponse"]):
    """One ``models/{model}:generateContent`` call with the prompt and inline references."""

    kind = "gemini"
    provider = "Gemini"
    credential_headers = ("x-goog-api-key",)
    packages = (("google.genai", "google-genai"),)
    options: Options

    def _open(self) -> Client:
        try:
            from google import genai
            from google.genai import types
        except ImportError:
            raise missing_sdk("google-genai") from None
        return genai.Client(
            vertexai=False,  # the Gemini API, even where GOOGLE_GENAI_USE_VERTEXAI is set
            api_key=self.api_key(),
            http_options=types.HttpOptions(
                base_url=self.options.base_url,
                api_version=_API_VERSION,
                timeout=int(self.options.request_limit_s * 1000),  # milliseconds
                # the guarded transport; with it the SDK also uses httpx, never aiohttp
                async_client_args={"transport": self.transport()},
            ),
        )

    async def _request(self, client: Client, model: str, job: Job) -> GenerateContentResponse:
        from google.genai import errors, types

        wanted = image_config(model, job.options)
        record_mapping(self.name, job, {"imageConfig": wanted})
        config = types.GenerateContentConfig(
            response_modalities=["TEXT", "IMAGE"],
            image_config=types.ImageConfig(**wanted) if wanted else None,
            seed=job.seed,
        )
        caught: tuple[type[Exception], ...] = (errors.APIError, *_transport_errors())
        try:
            return await client.aio.models.generate_content(
                model=model, contents=_user_turn(job), config=config
            )
        except caught as exc:
            raise _translate(exc, model, self.options.base_url) from exc

    def _image(self, answer: GenerateContentResponse, model: str) -> GeneratedImage:
        return _image_from(answer, model)

    async def _close(self, client: Client) -> None:
        await client.aio.aclose()
        client.close()


def create(name: str, options: Options, outbound: OutboundPolicy) -> GeminiBackend:
    return GeminiBackend(name, options, outbound=outbound)
