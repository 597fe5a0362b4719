"""What :class:`~easel.client.Client` and :class:`~easel.client.AsyncClient` share (no I/O).

The twins differ only in how they send a request and sleep. Everything else lives here:
configuration from arguments and the environment, one :class:`Call` per route (method, URL,
body, and how to read the answer), the translation of error envelopes into the exception
tree, how image inputs become File objects or uploads, and the polling policy of ``wait``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Generic, TypeAlias, TypeVar
from urllib.parse import urlsplit

import httpx

from easel.client.errors import (
    AuthenticationError,
    ConnectionFailed,
    EaselClientError,
    ServerError,
    TaskFailed,
    WaitTimeout,
    error_for,
)
from easel.client.models import Balance, ModelInfo, Task

T = TypeVar("T")

API_PREFIX = "/v2/openapi"
DEFAULT_SERVER = "http://127.0.0.1:8000"
SERVER_ENV = "EASEL_SERVER"
KEY_ENVS = ("EASEL_API_KEY", "TRIPO_API_KEY")
DEFAULT_TIMEOUT_S = 30.0
MIN_POLL_S, MAX_POLL_S = 0.5, 5.0
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")

ImageInput: TypeAlias = "str | os.PathLike[str] | bytes | Mapping[str, Any]"
"""A reference image: a local path (uploaded first), raw bytes (uploaded first), an http(s)
URL, an upload's image_token, or a ready File object such as ``{"object": {…}}``."""
TimeoutTypes: TypeAlias = "float | httpx.Timeout | None"


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One request and how to read its answer."""

    method: str
    url: str
    parse: Callable[[httpx.Response], T]
    json: dict[str, Any] | None = None
    files: dict[str, tuple[str, bytes, str]] | None = None
    authorized: bool = True


@dataclass(frozen=True, slots=True)
class Upload:
    """A local image to upload before the task is submitted: from ``path`` or ``data``."""

    name: str
    path: Path | None = None
    data: bytes | None = None


# -- answers -------------------------------------------------------------------------------


def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def api_error(response: httpx.Response) -> EaselClientError:
    """The exception for an error answer: from its envelope, or from the bare HTTP status."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("code"), int):
        code: int | None = body["code"]
        message = str(body.get("message") or f"error {code}")
        suggestion = body.get("suggestion") if isinstance(body.get("suggestion"), str) else None
    else:
        code, suggestion = None, None
        message = f"HTTP {response.status_code} from {response.url}: {response.text[:200]}"
    return error_for(
        response.status_code,
        code,
        message,
        suggestion,
        trace_id=response.headers.get("X-Tripo-Trace-ID"),
        retry_after=_retry_after(response.headers.get("Retry-After")),
    )


def envelope_data(response: httpx.Response) -> Any:
    """The ``data`` of a success envelope; raise the mapped exception for anything else."""
    if not response.is_success:
        raise api_error(response)
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("code") == 0 and "data" in body:
        return body["data"]
    if isinstance(body, dict) and isinstance(body.get("code"), int):
        raise api_error(response)  # an error inside a 200, as some Tripo servers send
    raise ServerError(
        f"{response.url} did not answer a protocol envelope: {response.text[:200]}",
        status=response.status_code,
        suggestion="Check that the server URL points at an Easel (or Tripo v2) server.",
    )


def _data(read: Callable[[Any], T]) -> Callable[[httpx.Response], T]:
    return lambda response: read(envelope_data(response))


def _image_bytes(response: httpx.Response) -> bytes:
    if not response.is_success:
        raise api_error(response)
    return response.content


# -- images and polling --------------------------------------------------------------------


def as_upload(image: str | os.PathLike[str] | bytes) -> Upload:
    """A local image (a path or its bytes) to upload."""
    if isinstance(image, bytes):
        return Upload("image.png", data=image)
    path = Path(image).expanduser()
    return Upload(path.name, path=path)


def plan_images(images: Iterable[ImageInput]) -> list[dict[str, Any] | Upload]:
    """File objects for the references, with :class:`Upload` where a local image comes first.

    A string is a URL when it starts with http(s)://, a path when it has a directory
    separator or an image suffix, and otherwise an upload's image_token.
    """
    planned: list[dict[str, Any] | Upload] = []
    for image in images:
        if isinstance(image, Mapping):
            planned.append(dict(image))
        elif isinstance(image, (bytes, os.PathLike)):
            planned.append(as_upload(image))
        elif image.startswith(("http://", "https://")):
            planned.append({"url": image})
        elif "/" in image or os.sep in image or image.lower().endswith(_IMAGE_SUFFIXES):
            planned.append(as_upload(image))
        else:
            planned.append({"file_token": image})
    return planned


def poll_delay(task: Task) -> float:
    """Seconds to wait before asking again: half the estimate, within 0.5–5 s."""
    left = task.running_left_time
    return MIN_POLL_S if left <= 0 else min(max(MIN_POLL_S, left * 0.5), MAX_POLL_S)


def settle(task: Task) -> Task | None:
    """``task`` once it succeeded, None while it runs; raise TaskFailed if it ended without."""
    if not task.is_final:
        return None
    if task.succeeded:
        return task
    raise TaskFailed(task)


class Deadline:
    """When ``wait`` gives up: ``sleep_for`` is the next pause, or raises WaitTimeout."""

    def __init__(self, timeout: float | None, clock: Callable[[], float] = time.monotonic):
        self.timeout, self.clock = timeout, clock
        self.end = None if timeout is None else clock() + timeout

    def sleep_for(self, task: Task) -> float:
        delay = poll_delay(task)
        if self.end is None or self.timeout is None:
            return delay
        left = self.end - self.clock()
        if left <= 0:
            raise WaitTimeout(task, self.timeout)
        return min(delay, left)


def output_path(task: Task, path: str | os.PathLike[str] | None, is_dir: bool) -> Path:
    """Where ``download`` writes: ``path``, or ``<task_id>.<ext>`` inside a directory."""
    suffix = PurePosixPath(urlsplit(task.image_url or "").path).suffix or ".png"
    if path is None:
        return Path(f"{task.task_id}{suffix}")
    return Path(path) / f"{task.task_id}{suffix}" if is_dir else Path(path)


# -- the shared client ---------------------------------------------------------------------


def resolve_api_key(api_key: str | None, env: Mapping[str, str]) -> str:
    key = api_key or next((env[name] for name in KEY_ENVS if env.get(name)), None)
    if not key:
        raise AuthenticationError(
            "no API key was given.",
            code=1002,
            suggestion="Pass api_key='tsk_…' or set EASEL_API_KEY (a key from 'easel keys "
            "create').",
        )
    return key


def resolve_base_url(base_url: str | None, env: Mapping[str, str]) -> str:
    url = (base_url or env.get(SERVER_ENV) or DEFAULT_SERVER).rstrip("/")
    return url.removesuffix(API_PREFIX)


class BaseClient:
    """Configuration and the calls of the protocol; subclasses send them."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: TimeoutTypes = DEFAULT_TIMEOUT_S,
        *,
        env: Mapping[str, str] | None = None,
    ) -> None:
        env = os.environ if env is None else env
        self.base_url = resolve_base_url(base_url, env)
        self.timeout = timeout
        self._api_key = resolve_api_key(api_key, env)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r})"

    def _request_args(self, call: Call[Any]) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self._api_key}"} if call.authorized else {}
        args = {"method": call.method, "url": call.url, "json": call.json, "files": call.files}
        return {**args, "headers": headers}

    def _unreachable(self, exc: httpx.TransportError) -> ConnectionFailed:
        return ConnectionFailed(f"could not reach {self.base_url}: {exc!r}")

    def _url(self, path: str) -> str:
        return f"{self.base_url}{API_PREFIX}{path}"

    def _submit_call(self, body: dict[str, Any]) -> Call[str]:
        return Call("POST", self._url("/task"), _data(lambda d: str(d["task_id"])), json=body)

    def _task_call(self, task_id: str) -> Call[Task]:
        return Call("GET", self._url(f"/task/{task_id}"), _data(Task.from_json))

    def _cancel_call(self, task_id: str) -> Call[Task]:
        return Call("POST", self._url(f"/task/{task_id}/cancel"), _data(Task.from_json))

    def _upload_call(self, name: str, data: bytes) -> Call[str]:
        files = {"file": (name, data, "application/octet-stream")}
        parse = _data(lambda d: str(d["image_token"]))
        return Call("POST", self._url("/upload"), parse, files=files)

    def _balance_call(self) -> Call[Balance]:
        return Call("GET", self._url("/user/balance"), _data(Balance.from_json))

    def _models_call(self) -> Call[list[ModelInfo]]:
        def read(data: dict[str, Any]) -> list[ModelInfo]:
            default = data.get("default")
            return [ModelInfo.from_json(row, default) for row in data.get("models", [])]

        return Call("GET", self._url("/models"), _data(read))

    def _download_call(self, task: Task) -> Call[bytes]:
        if not task.image_url:
            raise EaselClientError(
                f"task {task.task_id} has no image (it is {task.status.value}).",
                suggestion="Wait for the task to succeed first: wait(task_id).",
            )
        return Call("GET", task.image_url, _image_bytes, authorized=False)

    @staticmethod
    def _text_to_image_body(
        prompt: str, negative_prompt: str | None, style_image: dict[str, Any] | None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"type": "text_to_image", "prompt": prompt}
        if negative_prompt is not None:
            body["negative_prompt"] = negative_prompt
        if style_image is not None:
            body["style_image"] = style_image
        return body

    @staticmethod
    def _task_body(
        prompt: str | None,
        model: str | None,
        files: list[dict[str, Any]],
        template: str | None,
        t_pose: bool,
        sketch_to_render: bool,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"type": "generate_image"}
        optional = {"prompt": prompt, "model_version": model, "template": template}
        body.update({name: value for name, value in optional.items() if value is not None})
        if files:
            body["files"] = files
        body["t_pose"], body["sketch_to_render"] = t_pose, sketch_to_render
        return body
