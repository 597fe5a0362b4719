"""A loopback stand-in for BytePlus ModelArk's image generation API (Seedream), from its reference.

``POST /api/v3/images/generations`` with ``Authorization: Bearer <ARK key>`` and a JSON body
(``model``, ``prompt``, ``image`` as one string or a list of URLs or base64 data URIs, ``size``,
``response_format`` ``url`` or ``b64_json``, ``watermark``, ``sequential_image_generation``)
answers ``{model, created, data: [{url | b64_json, size}], usage}``, or an image's own
``data[i].error``. Errors are ``{"error": {"code", "message", "param", "type"}}`` with the
reference's codes. A ``url`` answer points at ``/tos/…`` here (or at ``result_base``, another
server), a signed object-store link like the provider's.
"""

from __future__ import annotations

import base64
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fakes import image_bytes

ARK_KEY = "ark-test-5f0c"
ARK_IMAGE = image_bytes("JPEG", (30, 60, 90), size=20)  # Seedream answers JPEG
_DATA_URI = re.compile(r"data:image/(png|jpeg|webp|bmp|tiff|gif);base64,([A-Za-z0-9+/=]+)")

Answer = tuple[int, dict[str, Any]]


def ark_error(status: int, code: str, message: str, kind: str = "BadRequest") -> Answer:
    """An error answer as the reference shapes it."""
    request_id = uuid.uuid4().hex
    error = {
        "code": code,
        "message": f"{message} Request ID: {request_id}",
        "param": "",
        "type": kind,
    }
    return status, {"error": error}


SENSITIVE_PROMPT = ark_error(
    400,
    "InputTextSensitiveContentDetected",
    "The request failed because the input text may contain sensitive information.",
)
RATE_LIMITED = ark_error(
    429, "RateLimitExceeded.EndpointRPMExceeded", "Too many requests.", "TooManyRequests"
)
SERVER_ERROR = ark_error(
    500, "InternalServiceError", "The service encountered an unexpected internal error.",
    "InternalServerError",
)  # fmt: skip


def decode_reference(value: str) -> tuple[str, bytes]:
    """A data-URI reference as (mime subtype, bytes); AssertionError for anything else."""
    match = _DATA_URI.fullmatch(value)
    assert match, f"not a base64 data URI: {value[:60]!r}"
    return match.group(1), base64.b64decode(match.group(2))


@dataclass
class FakeModelArk:
    """Scripted HTTP errors first, then generations; what it was sent is recorded."""

    key: str = ARK_KEY
    errors: list[Answer] = field(default_factory=list)
    image_error: dict[str, str] | None = None  # a data[0].error instead of the image
    image: bytes = ARK_IMAGE
    result_base: str | None = None  # another server's URL: the signed link's host
    bodies: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    attempts: int = 0
    download_headers: list[dict[str, str]] = field(default_factory=list)

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/api/v3/images/generations", self.generations, methods=["POST"]),
                Route("/tos/{name}", self.download),
            ]
        )

    async def generations(self, request: Request) -> Response:
        self.attempts += 1
        if request.headers.get("authorization") != f"Bearer {self.key}":
            status, body = ark_error(
                401,
                "AuthenticationError",
                "The API key or AK/SK in the request is missing or invalid.",
                "Unauthorized",
            )
            return JSONResponse(body, status_code=status)
        if self.errors:
            status, body = self.errors.pop(0)
            return JSONResponse(body, status_code=status)
        payload = await request.json()
        problem = self._invalid(payload)
        if problem:
            status, body = ark_error(400, "InvalidParameter", problem)
            return JSONResponse(body, status_code=status)
        self.bodies.append(payload)
        self.headers.append(dict(request.headers))
        return JSONResponse(self._answer(payload, str(request.base_url).rstrip("/")))

    @staticmethod
    def _invalid(payload: dict[str, Any]) -> str | None:
        if not isinstance(payload.get("model"), str) or not isinstance(payload.get("prompt"), str):
            return "The parameter `model` and `prompt` specified in the request are not valid."
        if payload.get("response_format", "url") not in ("url", "b64_json"):
            return "The parameter `response_format` specified in the request is not valid."
        image = payload.get("image")
        images = [image] if isinstance(image, str) else image or []
        if not isinstance(images, list) or len(images) > 14:
            return "The parameter `image` specified in the request is not valid."
        for item in images:
            if not isinstance(item, str) or not (
                item.startswith(("http://", "https://")) or _DATA_URI.fullmatch(item)
            ):
                return "The parameter `image` specified in the request is not valid."
        return None

    def _answer(self, payload: dict[str, Any], base: str) -> dict[str, Any]:
        item: dict[str, Any]
        if self.image_error is not None:
            item = {"error": dict(self.image_error)}
        elif payload.get("response_format", "url") == "b64_json":
            item = {"b64_json": base64.b64encode(self.image).decode("ascii"), "size": "2048x2048"}
        else:
            name = f"{uuid.uuid4().hex}.jpeg"
            link = f"{self.result_base or base}/tos/{name}?X-Tos-Expires=86400&X-Tos-Signature=ab"
            item = {"url": link, "size": "2048x2048"}
        return {
            "model": payload["model"],
            "created": 1757321139,
            "data": [item],
            "usage": {"generated_images": 0 if "error" in item else 1, "output_tokens": 16384},
        }

    async def download(self, request: Request) -> Response:
        self.download_headers.append(dict(request.headers))
        return Response(self.image, media_type="image/jpeg")
