"""Loopback stand-ins for the four hosted providers, speaking each one's documented wire format.

Each fake is a dataclass whose ``app()`` runs under :func:`loopback.serve_app`. It checks what
the provider's reference requires of a request (the key header, the body's shape), records what
it was sent, and plays scripted answers shaped as the reference gives them, errors,
moderation and slow polling included. The records live in the test process, so a test can
check them even when the backend runs in an ``easel`` child process.

- :class:`FakeOpenAI`: ``POST /v1/images/generations`` (JSON) and ``POST /v1/images/edits``
  (multipart, repeated ``image[]`` parts); ``Authorization: Bearer``; base64 answers.
- :class:`FakeGemini`: ``POST /v1beta/models/{model}:generateContent``; ``x-goog-api-key``;
  ``inlineData`` parts in and out, ``promptFeedback.blockReason`` / ``finishReason`` refusals.
- :class:`FakeBfl`: ``POST /v1/{endpoint}`` → ``{id, polling_url}``; ``GET /v1/get_result``
  ``Pending`` … ``Ready`` with a ``result.sample`` delivery URL; ``x-key``.
- :class:`FakeMidjourneyProxy`: novicezk/midjourney-proxy's ``POST /mj/submit/imagine`` →
  ``{code, description, result}``, ``GET /mj/task/{id}/fetch``, the grid image; optional
  ``mj-api-secret``.
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from fakes import image_bytes

Answer = tuple[int, dict[str, Any]]  # HTTP status, JSON body


async def stall(request: Request, seconds: float) -> None:
    """Wait ``seconds`` before answering, or until the client hangs up: an answer the client
    gave up on (its request timed out) must not hold the server's shutdown."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if await request.is_disconnected():
            return
        await asyncio.sleep(min(left, 0.05))


# --- OpenAI Images API -------------------------------------------------------------------------

OPENAI_KEY = "sk-test-123"
OPENAI_IMAGE = image_bytes("PNG", (1, 2, 3))


def openai_image(data: bytes = OPENAI_IMAGE) -> Answer:
    """A successful images answer (GPT image models always answer base64)."""
    return 200, {
        "created": 1713833628,
        "data": [{"b64_json": base64.b64encode(data).decode()}],
        "output_format": "png",
        "size": "1024x1024",
    }


def openai_error(status: int, message: str, code: str | None = None) -> Answer:
    kind = (
        "image_generation_user_error" if code == "moderation_blocked" else "invalid_request_error"
    )
    return status, {"error": {"message": message, "type": kind, "param": None, "code": code}}


@dataclass
class OpenAIRequest:
    path: str
    headers: dict[str, str]
    json: dict[str, Any] | None = None
    fields: dict[str, str] = field(default_factory=dict)
    files: list[tuple[str, str, bytes]] = field(default_factory=list)  # image[] parts


@dataclass
class FakeOpenAI:
    """Answers the ``script`` in order, then ``otherwise`` for every further request. Each
    answer waits the next of ``stalls`` (seconds), then ``delay_s`` once they are used up."""

    key: str = OPENAI_KEY
    script: list[Answer] = field(default_factory=list)
    otherwise: Answer = field(default_factory=openai_image)
    seen: list[OpenAIRequest] = field(default_factory=list)
    delay_s: float = 0.0
    stalls: list[float] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0

    async def _record(self, request: Request) -> OpenAIRequest:
        seen = OpenAIRequest(request.url.path, dict(request.headers))
        if request.url.path.endswith("/generations"):
            seen.json = await request.json()
            return seen
        async with request.form() as form:
            for name, value in form.multi_items():
                if isinstance(value, str):
                    seen.fields[name] = value
                elif name == "image[]":
                    seen.files.append(
                        (value.filename or "", value.content_type or "", await value.read())
                    )
        return seen

    async def images(self, request: Request) -> JSONResponse:
        seen = await self._record(request)
        self.seen.append(seen)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await stall(request, self.stalls.pop(0) if self.stalls else self.delay_s)
        finally:
            self.in_flight -= 1
        if seen.headers.get("authorization") != f"Bearer {self.key}":
            status, body = openai_error(401, "Incorrect API key provided.", "invalid_api_key")
        else:
            status, body = self.script.pop(0) if self.script else self.otherwise
        return JSONResponse(body, status_code=status)

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/images/generations", self.images, methods=["POST"]),
                Route("/v1/images/edits", self.images, methods=["POST"]),
            ]
        )


# --- Gemini API --------------------------------------------------------------------------------

GEMINI_KEY = "AIza-test-key"
GEMINI_IMAGE = image_bytes("PNG", (4, 5, 6))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes:
    """Standard or URL-safe base64, padded or not (the SDK may send either)."""
    text = text.replace("-", "+").replace("_", "/")
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def gemini_answer(*parts: dict[str, Any], finish: str = "STOP") -> Answer:
    """A ``GenerateContentResponse`` with one candidate made of ``parts``."""
    candidate = {"content": {"role": "model", "parts": list(parts)}, "finishReason": finish}
    return 200, {
        "candidates": [candidate],
        "modelVersion": "gemini-x",
        "responseId": "r1",
        "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 1290},
    }


def gemini_image_part(
    data: bytes = GEMINI_IMAGE, mime: str = "image/png", **extra: Any
) -> dict[str, Any]:
    return {"inlineData": {"mimeType": mime, "data": b64(data)}, **extra}


def gemini_blocked(reason: str = "SAFETY") -> Answer:
    """The prompt refused before generation: no candidates, ``promptFeedback.blockReason``."""
    return 200, {"promptFeedback": {"blockReason": reason}, "modelVersion": "gemini-x"}


def gemini_error(code: int, status: str, message: str) -> Answer:
    return code, {"error": {"code": code, "message": message, "status": status}}


@dataclass
class GeminiRequest:
    model: str
    method: str
    key: str | None
    body: dict[str, Any]

    def parts(self) -> list[dict[str, Any]]:
        [content] = self.body["contents"]
        assert content.get("role", "user") == "user"
        parts: list[dict[str, Any]] = content["parts"]
        return parts

    def inline_images(self) -> list[tuple[str, bytes]]:
        found = []
        for part in self.parts():
            inline = part.get("inlineData") or part.get("inline_data")
            if inline:
                mime = inline.get("mimeType") or inline.get("mime_type")
                found.append((mime, unb64(inline["data"])))
        return found

    def modalities(self) -> list[str]:
        config = self.body.get("generationConfig") or self.body["generation_config"]
        modalities: list[str] = config.get("responseModalities") or config["response_modalities"]
        return modalities


@dataclass
class FakeGemini:
    """Answers the ``script`` in order, then ``otherwise`` for every further request."""

    key: str = GEMINI_KEY
    script: list[Answer] = field(default_factory=list)
    otherwise: Answer = field(default_factory=lambda: gemini_answer(gemini_image_part()))
    seen: list[GeminiRequest] = field(default_factory=list)

    async def generate_content(self, request: Request) -> JSONResponse:
        model, _, method = request.path_params["model_method"].partition(":")
        key = request.headers.get("x-goog-api-key")
        self.seen.append(GeminiRequest(model, method, key, await request.json()))
        if key != self.key:
            message = "API key not valid. Please pass a valid API key."
            status, body = gemini_error(400, "INVALID_ARGUMENT", message)
        else:
            status, body = self.script.pop(0) if self.script else self.otherwise
        return JSONResponse(body, status_code=status)

    def app(self) -> Starlette:
        route = Route("/v1beta/models/{model_method}", self.generate_content, methods=["POST"])
        return Starlette(routes=[route])


# --- Black Forest Labs -------------------------------------------------------------------------

BFL_KEY = "bfl-test-key"
BFL_IMAGE = image_bytes("PNG", (200, 30, 30))
BFL_PENDING: dict[str, Any] = {"status": "Pending"}
BFL_READY: dict[str, Any] = {"status": "Ready"}


@dataclass
class FakeBfl:
    """HTTP errors to answer first, then each task's polling statuses in order (the last one
    repeats)."""

    key: str = BFL_KEY
    submit_errors: list[Answer] = field(default_factory=list)
    poll_errors: list[Answer] = field(default_factory=list)
    statuses: list[dict[str, Any]] = field(default_factory=lambda: [BFL_PENDING, BFL_READY])
    sample: bytes = BFL_IMAGE
    polling_base: str | None = None  # another server's URL: polling_url on a regional host
    on_poll: Callable[[int], None] | None = None
    submits: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # endpoint, body
    submit_attempts: int = 0
    polls: list[int] = field(default_factory=list)  # the port each poll arrived on
    download_headers: list[dict[str, str]] = field(default_factory=list)
    stream_sample: bool = False  # send the sample chunked, without a Content-Length
    _polls_of: Counter[str] = field(default_factory=Counter, init=False, repr=False)

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/get_result", self.get_result),
                Route("/v1/{endpoint}", self.submit, methods=["POST"]),
                Route("/delivery/sample", self.download),
            ]
        )

    def _refused(self, request: Request) -> Response | None:
        if request.headers.get("x-key") != self.key:
            return JSONResponse({"detail": "Invalid API key"}, status_code=401)
        return None

    async def submit(self, request: Request) -> Response:
        self.submit_attempts += 1
        if refused := self._refused(request):
            return refused
        if self.submit_errors:
            status, body = self.submit_errors.pop(0)
            return JSONResponse(body, status_code=status)
        payload = await request.json()
        if not isinstance(payload.get("prompt"), str):
            missing = {"loc": ["body", "prompt"], "msg": "Field required", "type": "missing"}
            return JSONResponse({"detail": [missing]}, status_code=422)
        self.submits.append((request.path_params["endpoint"], payload))
        base = self.polling_base or str(request.base_url).rstrip("/")
        task = str(uuid.uuid4())
        return JSONResponse({"id": task, "polling_url": f"{base}/v1/get_result?id={task}"})

    async def get_result(self, request: Request) -> Response:
        if refused := self._refused(request):
            return refused
        if self.poll_errors:
            status, body = self.poll_errors.pop(0)
            return JSONResponse(body, status_code=status)
        task = request.query_params["id"]
        self.polls.append(request.url.port or 0)
        self._polls_of[task] += 1
        if self.on_poll is not None:
            self.on_poll(len(self.polls))
        answer = dict(self.statuses[min(self._polls_of[task], len(self.statuses)) - 1])
        answer["id"] = task
        if answer["status"] == "Ready":
            sample = f"{request.base_url}delivery/sample?se=2026-01-01&sig=abc"
            answer["result"] = {"sample": sample, "prompt": "p", "seed": 1}
        return JSONResponse(answer)

    async def download(self, request: Request) -> Response:
        self.download_headers.append(dict(request.headers))
        if self.stream_sample:
            chunk = 1024 * 1024
            parts = (self.sample[i : i + chunk] for i in range(0, len(self.sample), chunk))
            return StreamingResponse(iter(parts), media_type="image/png")
        return Response(self.sample, media_type="image/png")


# --- midjourney-proxy --------------------------------------------------------------------------

MJ_SECRET = "mj-test-secret"
MJ_TASK_ID = "1712205491372282"
MJ_IMAGE = image_bytes("PNG", (10, 120, 200), size=16)
MJ_SUBMITTED: dict[str, Any] = {"code": 1, "description": "Submit success", "result": MJ_TASK_ID}


def mj_task(status: str, progress: str = "", **extra: Any) -> dict[str, Any]:
    """A task as ``/mj/task/{id}/fetch`` answers it."""
    return {
        "id": MJ_TASK_ID,
        "action": "IMAGINE",
        "status": status,
        "prompt": "a lighthouse at dusk",
        "description": "/imagine a lighthouse at dusk",
        "progress": progress,
        "imageUrl": None,
        "failReason": None,
        "properties": {},
        **extra,
    }


@dataclass
class FakeMidjourneyProxy:
    """The submit answer (after HTTP errors), then the fetch answers in order (the last one
    repeats; None: the empty body of a task the proxy does not know)."""

    secret: str | None = MJ_SECRET  # the proxy's mj.api-secret; None: no auth
    submit_errors: list[int] = field(default_factory=list)
    submit_answer: dict[str, Any] = field(default_factory=lambda: dict(MJ_SUBMITTED))
    tasks: list[dict[str, Any] | None] = field(
        default_factory=lambda: [mj_task("SUBMITTED", "0%"), mj_task("SUCCESS", "100%")]
    )
    image: bytes = MJ_IMAGE
    image_path: str = "/attachments/grid_0.png"
    on_fetch: Callable[[int], None] | None = None
    submits: list[tuple[dict[str, str], dict[str, Any]]] = field(default_factory=list)
    submit_attempts: int = 0
    fetches: int = 0

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/mj/submit/imagine", self.imagine, methods=["POST"]),
                Route("/mj/task/{id}/fetch", self.fetch),
                Route(self.image_path, self.grid),
            ]
        )

    def _refused(self, request: Request) -> Response | None:
        if self.secret is not None and request.headers.get("mj-api-secret") != self.secret:
            return JSONResponse({"error": "Unauthorized"}, status_code=401)
        return None

    async def imagine(self, request: Request) -> Response:
        self.submit_attempts += 1
        if refused := self._refused(request):
            return refused
        if self.submit_errors:
            return JSONResponse({"error": "busy"}, status_code=self.submit_errors.pop(0))
        self.submits.append((dict(request.headers), await request.json()))
        return JSONResponse(self.submit_answer)

    async def fetch(self, request: Request) -> Response:
        if refused := self._refused(request):
            return refused
        assert request.path_params["id"] == MJ_TASK_ID
        self.fetches += 1
        if self.on_fetch is not None:
            self.on_fetch(self.fetches)
        answer = self.tasks[min(self.fetches, len(self.tasks)) - 1]
        if answer is None:
            return Response(b"", media_type="application/json")
        if answer["status"] == "SUCCESS" and answer["imageUrl"] is None:
            answer = {**answer, "imageUrl": f"{str(request.base_url).rstrip('/')}{self.image_path}"}
        return JSONResponse(answer)

    async def grid(self, request: Request) -> Response:
        assert "mj-api-secret" not in request.headers
        return Response(self.image, media_type="image/png")
