"""What Tripo's official v3 Go and JS SDKs send, and how they read the answers.

Neither SDK is on a registry reachable here, so these classes reproduce their calls from their
source (VAST-AI-Research/tripo-go-sdk: client.go, http.go, generation.go, types.go,
constants.go, errors.go, examples/text-to-image/main.go and examples/image-to-image/main.go;
VAST-AI-Research/tripo-js-sdk: src/client.js, src/http.js, src/utils.js, src/constants.js,
types/index.d.ts, examples/text-to-image.js and examples/image-to-image.js), without their
code. Each request goes out as the SDK writes it (path under the ``/v3`` base URL, method,
headers in its order, body bytes: Go's ``json.Marshal`` of a map sorts keys and escapes
``<>&``, ``JSON.stringify`` keeps insertion order; each multipart body as Go's
``mime/multipart`` and Node's fetch ``FormData`` lay it out), and each answer is read as the
SDK reads it: :mod:`sdk_decoders` holds the structs and types they decode into. Downloading an
image is what their examples do (no SDK method downloads one): collect every ``http`` URL of
``output`` and GET it without a key.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import httpx

from sdk_decoders import (
    GO_STATUSES_TERMINAL,
    GoBalance,
    GoCreated,
    GoEnvelope,
    GoStrict,
    GoTask,
    GoTaskList,
    GoUploaded,
    JsBalance,
    JsCreated,
    JsTask,
    JsTaskList,
    JsUploaded,
    js_decode,
)

# Statuses after which the SDKs do not parse the envelope of a non-idempotent call (http.go,
# http.js): "the server may already have accepted this request".
INDETERMINATE = {408, 425, 500, 502, 504}


class ApiError(Exception):
    """Go's ``*APIError`` / JS's ``TripoAPIError``: an envelope with a non-zero ``code``."""

    def __init__(self, code: Any, message: Any, suggestion: Any, status: int) -> None:
        super().__init__(f"API error {code} (HTTP {status}): {message}")
        self.code, self.message, self.suggestion, self.status = code, message, suggestion, status


class RequestError(Exception):
    """Go's ``*RequestError`` / JS's ``TripoRequestError``: no usable answer."""


class TaskError(Exception):
    """``WaitForTask`` / ``waitForTask``: the task ended other than ``success``."""


def go_json(value: Any) -> bytes:
    """``json.Marshal`` of a ``map[string]interface{}``: compact, keys sorted, HTML escaped."""
    text = json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(char, escaped)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029").encode()


def js_json(value: Any) -> bytes:
    """``JSON.stringify``: compact, keys in insertion order, non-ASCII as is."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def multipart(boundary: str, filename: str, content_type: str, data: bytes) -> bytes:
    """One part named ``file``, as both Go's multipart.Writer and undici's FormData write it."""
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"'
    head += f"\r\nContent-Type: {content_type}" if content_type else ""
    return head.encode() + b"\r\n\r\n" + data + f"\r\n--{boundary}--\r\n".encode()


def raw_member(body: str, key: str, value: Any) -> str:
    """The JSON text of ``key``'s ``value`` as the server wrote it (Go's ``json.RawMessage``)."""
    decoder = json.JSONDecoder()
    for match in re.finditer(rf'"{re.escape(key)}"\s*:\s*', body):
        found, end = decoder.raw_decode(body, match.end())
        if found == value:
            return body[match.end() : end]
    raise AssertionError(f"{key} not in {body}")


@dataclass
class Client:
    """The transport both SDKs share: one request, as built, on an httpx connection pool."""

    http: httpx.Client
    base_url: str  # the SDK's baseUrl / BaseURL: the server's /v3
    api_key: str

    def send(
        self, method: str, url: str, headers: list[tuple[str, str]], body: bytes | None
    ) -> httpx.Response:
        """Exactly these headers (httpx adds only Host and Content-Length) and bytes."""
        return self.http.send(httpx.Request(method, url, headers=headers, content=body))

    def _create(self, path: str, params: dict[str, Any]) -> str:
        raise NotImplementedError

    # The generation calls, the same four routes in both SDKs. Go (generation.go) marshals
    # each Params struct (omitempty) and merges its Extra map in, so a field the struct does
    # not declare (negative_prompt; watermark on image-to-image) goes as Extra; JS
    # (client.js) sends the params object as given (compact() drops undefined), `input` first.
    def text_to_image(self, **params: Any) -> str:
        return self._create("/generation/text-to-image", params)

    def image_to_image(self, **params: Any) -> str:
        return self._create("/generation/image-to-image", params)

    def image_to_multiview(self, input: str) -> str:  # the SDKs' field name
        return self._create("/generation/image-to-multiview", {"input": input})

    def edit_multiview(self, input: str, prompts: list[dict[str, str]]) -> str:
        return self._create("/generation/edit-multiview", {"input": input, "prompts": prompts})

    def wait(self, get: Callable[[str], Any], task_id: str, timeout_s: float = 60) -> Any:
        """``WaitForTask`` / ``waitForTask`` with a 0.1 s poll and failure as an error."""
        deadline = time.monotonic() + timeout_s
        while True:
            task = get(task_id)
            status = task.status if isinstance(task, GoTask) else task["status"]
            if status in GO_STATUSES_TERMINAL:
                if status != "success":
                    raise TaskError(task)
                return task
            assert time.monotonic() < deadline, f"task {task_id} still {status}"
            time.sleep(0.1)


class GoSdk(Client):
    name = "go"
    user_agent = "tripo3d-sdk-go/0.1.0"  # client.go: "tripo3d-sdk-go/" + SDKVersion

    def _execute(self, method: str, path: str, body: bytes | None, content_type: str) -> Any:
        headers = [("User-Agent", self.user_agent), ("Authorization", f"Bearer {self.api_key}")]
        if content_type:
            headers.append(("Content-Type", content_type))
        headers.append(("Accept-Encoding", "gzip"))  # net/http's Transport adds it
        response = self.send(method, self.base_url + path, headers, body)
        if method != "GET" and response.status_code in INDETERMINATE:
            raise RequestError(f"HTTP {response.status_code}, indeterminate")
        return response

    def _do(self, method: str, path: str, out: type[GoStrict] | None, **kw: Any) -> Any:
        """``parseEnvelope``: the envelope strictly, then ``data`` into ``out``."""
        json_body = kw.get("json")
        body = go_json(json_body) if json_body is not None else kw.get("content")
        content_type = "application/json" if json_body is not None else kw.get("type", "")
        response = self._execute(method, path, body, content_type)
        if not response.content:
            raise RequestError("empty response body")
        envelope = GoEnvelope.model_validate_json(response.content)
        if envelope.code:
            raise ApiError(
                envelope.code, envelope.message, envelope.suggestion, response.status_code
            )
        if out is None:
            return None
        if "data" not in json.loads(response.content):
            raise RequestError("response envelope had code=0 but no `data` field")
        data = json.loads(response.content)["data"]
        decoded = out.model_validate(data)
        decoded._raw = raw_member(response.text, "data", data)
        return decoded

    def _create(self, path: str, params: dict[str, Any]) -> str:
        created: GoCreated = self._do("POST", path, GoCreated, json=params)
        return created.task_id or ""

    def get_balance(self) -> GoBalance:
        balance: GoBalance = self._do("GET", "/account/balance", GoBalance)
        return balance

    def upload_file(self, data: bytes, filename: str = "", content_type: str = "") -> str:
        boundary = secrets.token_hex(30)  # multipart.Writer's randomBoundary
        body = multipart(boundary, filename or "upload.bin", content_type, data)
        form = f"multipart/form-data; boundary={boundary}"
        uploaded: GoUploaded = self._do("POST", "/files", GoUploaded, content=body, type=form)
        return uploaded.file_token or ""

    def get_task(self, task_id: str) -> GoTask:
        task: GoTask = self._do("GET", f"/tasks/{task_id}", GoTask)
        return task

    def list_tasks(self, task_ids: list[str]) -> list[GoTask]:
        body = {"task_ids": task_ids}
        listed: GoTaskList = self._do("POST", "/tasks/list", GoTaskList, json=body)
        return listed.tasks or []

    def wait_for_task(self, task_id: str) -> GoTask:
        task: GoTask = self.wait(self.get_task, task_id)
        return task

    def download_outputs(self, task: GoTask) -> dict[str, bytes]:
        """The examples: every ``"http…"`` in ``task.Output.Raw`` once, by ``http.Get``."""
        raw = raw_member(task._raw, "output", json.loads(task._raw)["output"])
        urls = dict.fromkeys(re.findall(r'"(https?://[^"]+)"', raw))
        headers = [("User-Agent", "Go-http-client/1.1"), ("Accept-Encoding", "gzip")]
        return {url: self.send("GET", url, headers, None).content for url in urls}


class JsSdk(Client):
    name = "js"
    user_agent = "@vastai/tripo-sdk/0.2.0"  # http.js: the default userAgent
    FETCH: ClassVar = [  # what Node's fetch (undici) adds after the SDK's own headers
        ("accept", "*/*"),
        ("accept-language", "*"),
        ("sec-fetch-mode", "cors"),
        ("accept-encoding", "gzip, deflate"),
    ]

    def request(self, path: str, method: str = "GET", **kw: Any) -> Any:
        """``HttpClient.request``: the parsed ``data`` (or the payload without one)."""
        headers = [("User-Agent", self.user_agent), ("Authorization", f"Bearer {self.api_key}")]
        body = kw.get("body")
        if body is None and "json" in kw:
            body = js_json(kw["json"])
            headers.append(("Content-Type", "application/json"))
        if "type" in kw:  # FormData: fetch writes the multipart Content-Type
            headers.append(("content-type", kw["type"]))
        response = self.send(method, self.base_url + path, headers + self.FETCH, body)
        parsed = _js_read(response)
        if not response.is_success:
            if method != "GET" and response.status_code in INDETERMINATE:
                raise RequestError(f"HTTP {response.status_code}, indeterminate")
            if isinstance(parsed, dict) and "code" in parsed:
                raise ApiError(
                    parsed["code"], parsed.get("message"), parsed.get("suggestion"),
                    response.status_code,
                )  # fmt: skip
            raise RequestError(f"HTTP {response.status_code}")
        if not isinstance(parsed, dict | list):
            raise RequestError("Malformed response: expected JSON object.")
        if isinstance(parsed, dict) and "code" in parsed and not _js_zero(parsed["code"]):
            raise ApiError(
                parsed["code"], parsed.get("message"), parsed.get("suggestion"),
                response.status_code,
            )  # fmt: skip
        return parsed["data"] if isinstance(parsed, dict) and "data" in parsed else parsed

    def _create(self, path: str, params: dict[str, Any]) -> str:
        created = js_decode(JsCreated, self.request(path, "POST", json=params))
        return str(created["task_id"])

    def get_balance(self) -> JsBalance:
        return js_decode(JsBalance, self.request("/account/balance"))

    def upload_file(self, data: bytes, filename: str = "", content_type: str = "") -> str:
        boundary = "----formdata-undici-0" + "".join(str(secrets.randbelow(10)) for _ in range(11))
        body = multipart(
            boundary, filename or "upload.bin", content_type or "application/octet-stream", data
        )
        answer = self.request(
            "/files", "POST", body=body, type=f"multipart/form-data; boundary={boundary}"
        )
        return js_decode(JsUploaded, answer)["file_token"]

    def get_task(self, task_id: str) -> JsTask:
        return js_decode(JsTask, self.request(f"/tasks/{task_id}"))

    def list_tasks(self, task_ids: list[str]) -> list[JsTask]:
        listed = self.request("/tasks/list", "POST", json={"task_ids": task_ids})
        return js_decode(JsTaskList, listed)["tasks"]

    def wait_for_task(self, task_id: str) -> JsTask:
        task: JsTask = self.wait(self.get_task, task_id)
        return task

    def download_outputs(self, task: JsTask) -> dict[str, bytes]:
        """The examples: ``collectUrls(task.output)`` (nested objects too), ``fetch`` each."""
        headers = [*self.FETCH[:3], ("user-agent", "node"), self.FETCH[3]]
        return {
            url: self.send("GET", url, headers, None).content
            for url in _collect_urls(dict(task.get("output") or {}))
        }


def _js_read(response: httpx.Response) -> Any:
    """``safeReadJson``: null for an empty body, the text when it is not JSON."""
    if not response.text:
        return None
    try:
        return json.loads(response.text)
    except ValueError:
        return response.text


def _js_zero(code: Any) -> bool:
    """``code !== 0`` is false: a number equal to 0 (JSON has no separate integer type)."""
    return not isinstance(code, bool) and isinstance(code, int | float) and code == 0


def _collect_urls(value: dict[str, Any]) -> list[str]:
    found: list[str] = []
    for item in value.values():
        if isinstance(item, str) and item.startswith("http"):
            found.append(item)
        elif isinstance(item, list):
            found.extend(v for v in item if isinstance(v, str) and v.startswith("http"))
        elif isinstance(item, dict):
            found.extend(_collect_urls(item))
    return found
