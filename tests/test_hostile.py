"""Hostile inputs against the real app, one case each: every one gets its protocol error in the
envelope, moves no credit and leaves no task, file or webhook behind.

Most run the app in process (``apptools``); the header tests run ``easel serve`` itself. Far
sides (image servers, slow providers) run on loopback; DNS answers come from a resolver stub
at ``socket.getaddrinfo``. Nothing here reaches beyond this machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import logging
import os
import socket
import struct
import threading
import uuid
import zlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from apptools import Api, State, account_state, engine_of, png, running_api, settings_for
from easel.api.app import create_app
from easel.backends import gemini, openai
from easel.backends._remote import RetryPolicy
from easel.backends.base import BackendUnavailable
from easel.config import Settings
from easel.runtime import Runtime
from easel.server import DRAIN_MAX_BYTES
from easel.services.ratelimit import RateLimiter
from easel.storage.sts import AwsCredentials, StsClient, StsError
from easel.store.tables import api_keys, files, metadata
from fakes import Control, job_for
from loopback import serve_app
from processes import create_key, easel_process, free_port, wait_healthy, write_config

TASK = "/v2/openapi/task"
UPLOAD = "/v2/openapi/upload"
WEBHOOKS = "/v2/openapi/webhooks"
MiB = 1024 * 1024


# -- helpers: the state that must not change, loopback servers -------------------------------


async def state(api: Api) -> State:
    caller = await api.runtime.store.accounts.authenticate(api.key)
    return await account_state(api.runtime, caller.account_id)


def assert_error(response: httpx.Response, status: int, code: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["code"] == code, body
    assert body["message"] and body["suggestion"], body
    assert "data" not in body
    return body


async def assert_refused(
    api: Api, before: State, response: httpx.Response, status: int, code: int
) -> dict[str, Any]:
    body = assert_error(response, status, code)
    assert await state(api) == before
    return body


@dataclass
class Canary:
    """A loopback image server that records every request it gets (none, for a refusal)."""

    hits: list[str] = field(default_factory=list)
    port: int = 0

    async def endpoint(self, request: Request) -> Response:
        self.hits.append(request.url.path)
        return Response(png(), media_type="image/png")


@pytest.fixture
def canary() -> Iterator[Canary]:
    found = Canary()
    app = Starlette(routes=[Route("/{path:path}", found.endpoint, methods=["GET", "POST"])])
    with serve_app(app) as base:
        found.port = int(base.rsplit(":", 1)[1])
        yield found


class _Redirector(BaseHTTPRequestHandler):
    """Answers every GET with a 302 to ``server.target``."""

    def do_GET(self) -> None:
        self.send_response(302)
        self.send_header("Location", self.server.target)  # type: ignore[attr-defined]
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


@contextlib.contextmanager
def redirector(host: str, target: str) -> Iterator[str]:
    server = ThreadingHTTPServer((host, 0), _Redirector)
    server.daemon_threads = True
    server.target = target  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_port}/r.png"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
async def idle_api(database_url: str) -> AsyncIterator[Api]:
    """No worker (tasks stay queued), on SQLite and on PostgreSQL."""
    async with running_api(settings_for(database_url), run_worker=False) as api:
        yield api


@pytest.fixture
async def lite_api(tmp_path: Path) -> AsyncIterator[Api]:
    """No worker, SQLite only: for the long lists whose handling does not touch SQL."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'h.db'}"
    async with running_api(settings_for(url), run_worker=False) as api:
        yield api


async def other_key(api: Api) -> dict[str, str]:
    key = await api.runtime.store.accounts.create_key("other", 100)
    return {"Authorization": f"Bearer {key}"}


# -- SSRF through url inputs -------------------------------------------------------------------

# {port} is the canary's: a URL that reached loopback would show up in its hits.
SSRF_URLS = [
    pytest.param("http://127.0.0.1:{port}/a.png", id="loopback"),
    pytest.param("http://127.8.9.10:{port}/a.png", id="loopback-127/8"),
    pytest.param("http://10.0.0.1/a.png", id="private-10"),
    pytest.param("http://172.16.0.1/a.png", id="private-172.16"),
    pytest.param("http://172.31.255.254/a.png", id="private-172.31"),
    pytest.param("http://192.168.1.1/a.png", id="private-192.168"),
    pytest.param("http://169.254.169.254/latest/meta-data/", id="metadata-link-local"),
    pytest.param("http://100.64.0.1/a.png", id="shared-100.64"),
    pytest.param("http://0.0.0.0:{port}/a.png", id="unspecified"),
    pytest.param("http://0:{port}/a.png", id="zero"),
    pytest.param("http://[::1]:{port}/a.png", id="ipv6-loopback"),
    pytest.param("http://[::ffff:127.0.0.1]:{port}/a.png", id="ipv4-mapped-dotted"),
    pytest.param("http://[::ffff:7f00:1]:{port}/a.png", id="ipv4-mapped-hex"),
    pytest.param("http://[0:0:0:0:0:ffff:169.254.169.254]/", id="ipv4-mapped-metadata"),
    pytest.param("http://[fe80::1]/a.png", id="ipv6-link-local"),
    pytest.param("http://[fc00::1]/a.png", id="ipv6-unique-local"),
    pytest.param("http://[fd00:ec2::254]/latest/", id="ipv6-metadata"),
    pytest.param("http://[::]/a.png", id="ipv6-unspecified"),
    pytest.param("http://[64:ff9b::a9fe:a9fe]/", id="nat64-metadata"),
    pytest.param("http://[2002:a00:1::]/a.png", id="6to4-private"),
    pytest.param("http://2130706433:{port}/a.png", id="decimal"),
    pytest.param("http://017700000001:{port}/a.png", id="octal-whole"),
    pytest.param("http://0x7f.0.0.1:{port}/a.png", id="hex-octet"),
    pytest.param("http://0x7f000001:{port}/a.png", id="hex-whole"),
    pytest.param("http://127.1:{port}/a.png", id="short-form"),
    pytest.param("http://0177.0.0.1:{port}/a.png", id="octal-dotted"),
    pytest.param("http://127.000.000.001:{port}/a.png", id="zero-padded"),
    pytest.param("http://127\u30020\u30020\u30021:{port}/a.png", id="ideographic-dots"),
    pytest.param("http://localhost:{port}/a.png", id="localhost"),
    pytest.param("http://LOCALHOST:{port}/a.png", id="localhost-upper"),
    pytest.param("http://user:pw@127.0.0.1:{port}/a.png", id="userinfo"),
    pytest.param("http://8.8.8.8@127.0.0.1:{port}/a.png", id="userinfo-public-decoy"),
    pytest.param("http://127.0.0.1:{port}#@8.8.8.8/a.png", id="fragment-decoy"),
    pytest.param("https://127.0.0.1:{port}/a.png", id="https-loopback"),
    pytest.param("file:///etc/passwd", id="file-scheme"),
    pytest.param("gopher://127.0.0.1:{port}/_", id="gopher-scheme"),
    pytest.param("dict://127.0.0.1:11211/stat", id="dict-scheme"),
]


@pytest.mark.parametrize("url", SSRF_URLS)
async def test_a_url_input_to_an_internal_address_is_refused_at_submit(
    lite_api: Api, canary: Canary, url: str
) -> None:
    before = await state(lite_api)
    response = await lite_api.submit(
        prompt="x", file={"type": "png", "url": url.format(port=canary.port)}
    )
    await assert_refused(lite_api, before, response, 400, 1004)
    assert canary.hits == []


async def test_every_url_of_a_files_list_is_checked(lite_api: Api, canary: Canary) -> None:
    token = await lite_api.upload(png())
    before = await state(lite_api)
    files_ = [
        {"file_token": token},
        {"url": f"http://localhost:{canary.port}/b.png"},
    ]
    response = await lite_api.submit(prompt="x", model_version="gpt_4o", files=files_)
    body = await assert_refused(lite_api, before, response, 400, 1004)
    assert "not a public address" in body["message"]
    assert canary.hits == []


async def test_dns_rebinding_between_submit_and_fetch_is_refused(
    tmp_path: Path, canary: Canary, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The name answers a public address when the API checks it, then loopback when the
    worker fetches: the worker checks again and never connects."""
    real_getaddrinfo = socket.getaddrinfo
    answers = iter(["93.184.216.34", "127.0.0.1", "127.0.0.1"])
    asked: list[str] = []

    def rebinding(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != "rebind.test":
            return real_getaddrinfo(host, port, *args, **kwargs)
        asked.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers), int(port)))]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    async with running_api(settings_for(f"sqlite+aiosqlite:///{tmp_path / 'r.db'}")) as api:
        url = f"http://rebind.test:{canary.port}/a.png"
        response = await api.submit(prompt="x", file={"url": url})
        assert response.status_code == 200, response.text
        task = await api.wait(response.json()["data"]["task_id"])
        assert (task["status"], task["error_code"]) == ("failed", 1004)
        assert "127.0.0.1, which is not a public address" in task["error_msg"]
        assert await api.balance() == {"balance": 100, "frozen": 0}
    assert len(asked) == 2  # the API's check, the worker's check; nothing resolved it again
    assert canary.hits == []


async def test_a_redirect_to_an_internal_address_is_refused(tmp_path: Path, canary: Canary) -> None:
    """127.0.0.2 is allowed by the operator; it redirects to 127.0.0.1, which is not."""
    target = f"http://127.0.0.1:{canary.port}/secret.png"
    settings = settings_for(
        f"sqlite+aiosqlite:///{tmp_path / 'r.db'}", allow_outbound_cidrs=["127.0.0.2/32"]
    )
    with redirector("127.0.0.2", target) as url:
        async with running_api(settings) as api:
            response = await api.submit(prompt="x", file={"url": url})
            assert response.status_code == 200, response.text
            task = await api.wait(response.json()["data"]["task_id"])
            assert (task["status"], task["error_code"]) == ("failed", 1004)
            assert "redirects to" in task["error_msg"]
            assert await api.balance() == {"balance": 100, "frozen": 0}
    assert canary.hits == []


WEBHOOK_TARGETS = [
    pytest.param("http://127.0.0.1:{port}/hook", id="loopback"),
    pytest.param("http://10.1.2.3/hook", id="private-10"),
    pytest.param("http://172.20.0.1/hook", id="private-172.16"),
    pytest.param("http://192.168.0.10/hook", id="private-192.168"),
    pytest.param("http://169.254.169.254/latest/", id="metadata"),
    pytest.param("http://[::1]:{port}/hook", id="ipv6-loopback"),
    pytest.param("http://[::ffff:127.0.0.1]:{port}/hook", id="ipv4-mapped"),
    pytest.param("http://[fe80::1]/hook", id="ipv6-link-local"),
    pytest.param("http://[fc00::1]/hook", id="ipv6-unique-local"),
    pytest.param("http://2130706433:{port}/hook", id="decimal"),
    pytest.param("http://0x7f.0.0.1:{port}/hook", id="hex-octet"),
    pytest.param("http://017700000001:{port}/hook", id="octal-whole"),
    pytest.param("http://localhost:{port}/hook", id="localhost"),
    pytest.param("http://8.8.8.8@127.0.0.1:{port}/hook", id="userinfo-decoy"),
    pytest.param("file:///etc/passwd", id="file-scheme"),
]


@pytest.mark.parametrize("url", WEBHOOK_TARGETS)
async def test_a_webhook_to_an_internal_address_is_refused(
    lite_api: Api, canary: Canary, url: str
) -> None:
    before = await state(lite_api)
    body = {"url": url.format(port=canary.port), "events": ["task.success"]}
    response = await lite_api.client.post(WEBHOOKS, json=body)
    await assert_refused(lite_api, before, response, 400, 1004)
    assert (await lite_api.client.get(WEBHOOKS)).json()["data"] == []
    assert canary.hits == []


# -- uploads: bombs, truncated and disguised images ---------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(side: int) -> bytes:
    """A real PNG of side × side black 1-bit pixels: tens of KB that decode to side² pixels."""
    pack = zlib.compressobj(9)
    row = bytes(1 + (side + 7) // 8)  # filter byte, then the row's bits
    body = b"".join(pack.compress(row) for _ in range(side)) + pack.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", body)
        + _chunk(b"IEND", b"")
    )


def noise(width: int, height: int, fmt: str) -> bytes:
    """An image that does not compress: truncating it cuts into its pixel data."""
    out = io.BytesIO()
    Image.frombytes("RGB", (width, height), os.urandom(width * height * 3)).save(out, format=fmt)
    return out.getvalue()


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


BAD_UPLOADS = [
    pytest.param("bomb.png", bomb_png(20_000), 1004, id="bomb-400-megapixels"),
    pytest.param("bomb.png", bomb_png(10_000), 1004, id="bomb-100-megapixels"),
    pytest.param("wide.png", png(7000, 20), 1004, id="side-over-6000"),
    pytest.param("tiny.png", png(10, 10), 1004, id="side-under-20"),
    pytest.param("cut.png", truncated(noise(256, 256, "PNG")), 1004, id="truncated-png"),
    pytest.param("cut.jpg", truncated(noise(256, 256, "JPEG")), 1004, id="truncated-jpeg"),
    # Pillow does not even open a truncated WebP: "not a known image format"
    pytest.param("cut.webp", truncated(noise(256, 256, "WEBP")), 2004, id="truncated-webp"),
    pytest.param("text.png", b"just some text, not an image\n" * 10, 2004, id="text-as-png"),
    pytest.param("page.png", b"<html><script>alert(1)</script></html>", 2004, id="html-as-png"),
    pytest.param(
        "x.png", b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>', 2004, id="svg"
    ),
    pytest.param("magic.png", b"\x89PNG\r\n\x1a\n" + os.urandom(512), 2004, id="png-magic-only"),
    pytest.param("anim.png", b"GIF89a" + bytes(64), 2004, id="gif-as-png"),
    pytest.param("empty.png", b"", 2003, id="empty"),
]


@pytest.mark.parametrize(("name", "data", "code"), BAD_UPLOADS)
@pytest.mark.parametrize("route", [UPLOAD, "/v3/files"])
async def test_a_hostile_upload_is_refused_and_stores_nothing(
    lite_api: Api, route: str, name: str, data: bytes, code: int
) -> None:
    before = await state(lite_api)
    response = await lite_api.client.post(route, files={"file": (name, data, "image/png")})
    await assert_refused(lite_api, before, response, 400, code)


async def test_jpeg_bytes_named_png_are_stored_as_the_jpeg_they_are(lite_api: Api) -> None:
    token = await lite_api.upload(png(fmt="JPEG"), name="photo.png")
    async with engine_of(lite_api.runtime.store).connect() as conn:
        row = (await conn.execute(select(files).where(files.c.token == token))).one()
    assert (row.format, row.key.rsplit(".", 1)[1]) == ("jpeg", "jpg")


# -- body size ----------------------------------------------------------------------------------


def padded_task(size: int) -> bytes:
    """A valid task body of exactly ``size`` bytes (JSON allows trailing whitespace)."""
    body = b'{"type": "generate_image", "prompt": "padded"}'
    return body + b" " * (size - len(body))


async def chunks(data: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    """``data`` as a chunked body: httpx sends no Content-Length for an async iterator."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


@pytest.mark.parametrize(
    "route",
    [
        TASK,
        WEBHOOKS,
        "/v2/openapi/upload/sts/token",
        "/v3/generation/text-to-image",
        "/v3/tasks/list",
        "/v3/files/presign",
    ],
)
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_json_body_over_1_mib_is_refused_before_it_is_parsed(
    lite_api: Api, route: str, chunked: bool
) -> None:
    data = padded_task(MiB + 1)
    content: Any = chunks(data) if chunked else data
    before = await state(lite_api)
    response = await lite_api.client.post(
        route, content=content, headers={"Content-Type": "application/json"}
    )
    body = await assert_refused(lite_api, before, response, 413, 1004)
    assert str(MiB) in body["message"]
    if route.startswith("/v3/"):  # the v3 envelope names the trace id, as on its other errors
        assert body["request_id"] == response.headers["X-Tripo-Trace-ID"]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_max_request_bytes_is_the_exact_limit(tmp_path: Path, chunked: bool) -> None:
    settings = settings_for(f"sqlite+aiosqlite:///{tmp_path / 'l.db'}", max_request_bytes=4096)
    async with running_api(settings, run_worker=False) as api:
        for size, status in ((4096, 200), (4097, 413)):
            data = padded_task(size)
            content: Any = chunks(data, 1000) if chunked else data
            response = await api.client.post(TASK, content=content)
            assert response.status_code == status, response.text
        assert (await state(api)).tasks == 1


async def test_a_chunked_upload_over_20_mb_is_cut_off_and_stores_nothing(lite_api: Api) -> None:
    boundary = "hostile-boundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        for part in (
            head,
            b"\x89PNG\r\n\x1a\n",
            *([bytes(MiB)] * 100),
            f"\r\n--{boundary}--\r\n".encode(),
        ):
            sent += len(part)
            yield part

    before = await state(lite_api)
    response = await lite_api.client.post(
        UPLOAD,
        content=body(),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    message = (await assert_refused(lite_api, before, response, 413, 1004))["message"]
    assert "20 MB" in message
    # Past the limit the body is only read and discarded (so that a client sending all of
    # it still gets the answer), and only up to the drain bound: the rest is never read.
    assert sent < 24 * MiB + DRAIN_MAX_BYTES < 100 * MiB


async def test_an_upload_between_1_mib_and_20_mb_is_not_held_to_the_json_limit(
    lite_api: Api,
) -> None:
    big = noise(1400, 1400, "PNG")
    assert 5 * MiB < len(big) < 20 * MiB
    response = await lite_api.client.post(UPLOAD, files={"file": ("big.png", big)})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("method", "route", "status", "code"),
    [
        ("POST", UPLOAD, 400, 2004),
        ("POST", "/v2/openapi/upload/sts", 400, 2004),
        ("POST", "/v3/files", 400, 2004),
        ("PUT", "/v3/files/upload/acct/token?expires=1&signature=x", 403, 1005),
    ],
)
async def test_every_upload_route_takes_a_body_over_the_json_limit(
    lite_api: Api, method: str, route: str, status: int, code: int
) -> None:
    """2 MiB that are no image: the route itself refuses them, not the 1 MiB JSON limit (the
    routes declare their own limit, easel.api.facts)."""
    junk = bytes(2 * MiB)
    before = await state(lite_api)
    if method == "PUT":  # the presigned upload takes the image as the whole body
        response = await lite_api.client.put(route, content=junk)
    else:
        response = await lite_api.client.post(route, files={"file": ("junk.png", junk)})
    await assert_refused(lite_api, before, response, status, code)


# -- malformed JSON -----------------------------------------------------------------------------

DEEP = b"[" * 100_000 + b"]" * 100_000
DEEP_IN_OBJECT = b'{"type": "generate_image", "prompt": "x", "file": ' + DEEP + b"}"
BAD_UTF8 = b'{"type": "generate_image", "prompt": "caf\xe9 \xff\xfe"}'
JSON_ROUTES = [
    TASK,
    WEBHOOKS,
    "/v2/openapi/upload/sts/token",
    "/v3/generation/text-to-image",
    "/v3/tasks/list",
]


@pytest.mark.parametrize(
    "raw", [DEEP, DEEP_IN_OBJECT, BAD_UTF8], ids=["deep", "deep-in-object", "bad-utf8"]
)
@pytest.mark.parametrize("route", JSON_ROUTES)
async def test_unparsable_json_gets_1003(lite_api: Api, route: str, raw: bytes) -> None:
    before = await state(lite_api)
    response = await lite_api.client.post(
        route, content=raw, headers={"Content-Type": "application/json"}
    )
    await assert_refused(lite_api, before, response, 400, 1003)


# -- path traversal in object.key ----------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "../../etc/passwd",
        "/etc/passwd",
        "uploads/../../etc/passwd",
        "uploads/%2e%2e/%2e%2e/etc/passwd",
        "..%2f..%2fetc%2fpasswd",
        "..\\..\\windows\\win.ini",
        "file:///etc/passwd",
        "{other}",
        "/{other}",
        "uploads/{mine}/../{other_rest}",
        "./{other}",
        "{other_upper}",
    ],
)
async def test_an_object_key_outside_the_accounts_uploads_is_not_found(
    idle_api: Api, key: str
) -> None:
    auth = await other_key(idle_api)
    response = await idle_api.client.post(UPLOAD, files={"file": ("a.png", png())}, headers=auth)
    token = response.json()["data"]["image_token"]
    async with engine_of(idle_api.runtime.store).connect() as conn:
        other = (await conn.execute(select(files.c.key).where(files.c.token == token))).scalar_one()
    mine = (await idle_api.runtime.store.accounts.authenticate(idle_api.key)).account_id
    named = key.format(
        other=other,
        other_rest=other.removeprefix("uploads/"),
        mine=mine,
        other_upper=other.upper(),
    )
    before = await state(idle_api)
    response = await idle_api.submit(prompt="x", file={"object": {"bucket": "easel", "key": named}})
    await assert_refused(idle_api, before, response, 404, 2019)


async def test_a_traversing_output_link_is_refused(lite_api: Api) -> None:
    path = "/v2/openapi/outputs/%2e%2e/%2e%2e/etc/passwd?expires=9999999999&signature=x"
    assert_error(await lite_api.client.get(path), 403, 1005)


# -- another key's tasks and files ---------------------------------------------------------------


def _same_answer(mine: httpx.Response, missing: httpx.Response, ours: str, fake: str) -> None:
    """Another key's id answers exactly as an id that never existed (the id aside)."""
    assert mine.status_code == missing.status_code

    def text(response: httpx.Response, the_id: str) -> str:
        body = {k: v for k, v in response.json().items() if k != "request_id"}
        return json.dumps(body, sort_keys=True).replace(the_id, "ID")

    assert text(mine, ours) == text(missing, fake)


@pytest.mark.parametrize(
    ("method", "path", "code"),
    [
        ("GET", "/v2/openapi/task/{id}", 2001),
        ("POST", "/v2/openapi/task/{id}/cancel", 2001),
        ("GET", "/v2/openapi/task/{id}/events", 2001),
        ("GET", "/v3/tasks/{id}", 2001),
    ],
)
async def test_another_keys_task_answers_as_one_that_never_existed(
    idle_api: Api, method: str, path: str, code: int
) -> None:
    task_id = (await idle_api.submit(prompt="mine")).json()["data"]["task_id"]
    auth = await other_key(idle_api)
    fake = str(uuid.uuid4())
    theirs = await idle_api.client.request(method, path.format(id=task_id), headers=auth)
    missing = await idle_api.client.request(method, path.format(id=fake), headers=auth)
    assert_error(theirs, 404, code)
    _same_answer(theirs, missing, task_id, fake)
    assert (await idle_api.task(task_id))["status"] == "queued"  # the cancel did nothing


async def test_another_keys_task_is_missed_in_a_v3_list(idle_api: Api) -> None:
    task_id = (await idle_api.submit(prompt="mine")).json()["data"]["task_id"]
    response = await idle_api.client.post(
        "/v3/tasks/list", json={"task_ids": [task_id]}, headers=await other_key(idle_api)
    )
    assert response.json()["data"] == {"tasks": {}, "missed": [task_id]}


async def test_another_accounts_file_token_answers_as_one_that_never_existed(
    idle_api: Api,
) -> None:
    auth = await other_key(idle_api)
    token = (
        await idle_api.client.post(UPLOAD, files={"file": ("a.png", png())}, headers=auth)
    ).json()["data"]["image_token"]
    fake = str(uuid.uuid4())
    before = await state(idle_api)
    theirs = await idle_api.submit(prompt="x", file={"file_token": token})
    missing = await idle_api.submit(prompt="x", file={"file_token": fake})
    await assert_refused(idle_api, before, theirs, 404, 2019)
    _same_answer(theirs, missing, token, fake)


def test_another_keys_task_cannot_be_watched(tmp_path: Path) -> None:
    settings = settings_for(f"sqlite+aiosqlite:///{tmp_path / 'w.db'}")
    with TestClient(create_app(settings, run_worker=False)) as client:
        runtime: Runtime = client.app.state.runtime  # type: ignore[attr-defined]
        assert client.portal is not None
        create_key = runtime.store.accounts.create_key
        mine = {"Authorization": f"Bearer {client.portal.call(create_key, 'a', 50)}"}
        theirs = {"Authorization": f"Bearer {client.portal.call(create_key, 'b', 50)}"}
        task_id = client.post(
            TASK, headers=mine, json={"type": "generate_image", "prompt": "w"}
        ).json()["data"]["task_id"]
        fake = str(uuid.uuid4())
        reasons = []
        for watched in (task_id, fake):
            with (
                pytest.raises(WebSocketDisconnect) as closed,
                client.websocket_connect(f"/v2/openapi/task/watch/{watched}", headers=theirs) as ws,
            ):
                ws.receive_json()
            assert closed.value.code == 1008
            reasons.append(closed.value.reason.replace(watched, "ID"))
        assert reasons[0] == reasons[1]
        assert reasons[0].startswith("2001")


# -- NUL characters and SQL metacharacters -----------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v2/openapi/task/%00"),
        ("POST", "/v2/openapi/task/a%00b/cancel"),
        ("GET", "/v2/openapi/task/%00/events"),
        ("DELETE", "/v2/openapi/webhooks/%00"),
        ("GET", "/v3/tasks/%00"),
    ],
)
async def test_a_nul_in_the_path_is_1004_not_a_server_error(
    idle_api: Api, method: str, path: str
) -> None:
    before = await state(idle_api)
    await assert_refused(idle_api, before, await idle_api.client.request(method, path), 400, 1004)


def test_a_nul_in_a_watched_task_id_closes_the_socket_with_1004(tmp_path: Path) -> None:
    settings = settings_for(f"sqlite+aiosqlite:///{tmp_path / 'n.db'}")
    with TestClient(create_app(settings, run_worker=False)) as client:
        runtime: Runtime = client.app.state.runtime  # type: ignore[attr-defined]
        assert client.portal is not None
        key = client.portal.call(runtime.store.accounts.create_key, "n", 0)
        with (
            pytest.raises(WebSocketDisconnect) as closed,
            client.websocket_connect(
                "/v2/openapi/task/watch/%00", headers={"Authorization": f"Bearer {key}"}
            ) as ws,
        ):
            ws.receive_json()
        assert (closed.value.code, closed.value.reason[:4]) == (1008, "1004")


@pytest.mark.parametrize(
    "file",
    [
        {"file_token": "\u0000"},
        {"file_token": "ce85f375\u0000"},
        {"object": {"bucket": "easel", "key": "uploads/\u0000.png"}},
        {"object": {"bucket": "eas\u0000el", "key": "uploads/a.png"}},
        {"type": "png\u0000", "url": "http://127.0.0.1/a.png"},
    ],
)
async def test_a_nul_in_a_file_reference_is_1004_not_a_server_error(
    idle_api: Api, file: dict[str, Any]
) -> None:
    before = await state(idle_api)
    response = await idle_api.submit(prompt="x", file=file)
    body = await assert_refused(idle_api, before, response, 400, 1004)
    assert "NUL" in body["message"]


async def test_a_nul_in_a_v3_task_list_is_1004(idle_api: Api) -> None:
    """Refused by the JSON decoder, as a NUL anywhere in a body (see test_hostile_text.py)."""
    response = await idle_api.client.post("/v3/tasks/list", json={"task_ids": ["a\u0000"]})
    body = assert_error(response, 400, 1004)
    assert body["message"].startswith("task_ids[0] holds a NUL character"), body


SQL_TEXT = [
    "'; DROP TABLE tasks; --",
    '" OR 1=1 --',
    "Robert'); DELETE FROM accounts; --",
    "%_\\ LIKE '%' ESCAPE '\\'",
    "1 UNION SELECT key_hash FROM api_keys",
    "$1 $$ ::text ; COMMIT;",
]


@pytest.mark.parametrize("text", SQL_TEXT)
async def test_sql_metacharacters_are_stored_and_echoed_verbatim(idle_api: Api, text: str) -> None:
    first = await idle_api.client.post(
        TASK, json={"type": "generate_image", "prompt": text}, headers={"Idempotency-Key": text}
    )
    again = await idle_api.client.post(
        TASK, json={"type": "generate_image", "prompt": text}, headers={"Idempotency-Key": text}
    )
    task_id = first.json()["data"]["task_id"]
    assert again.json()["data"]["task_id"] == task_id  # the key matched itself, nothing else
    assert (await idle_api.task(task_id))["input"]["prompt"] == text
    before = await state(idle_api)
    for missing in (
        await idle_api.client.get(f"{TASK}/{text.replace('/', '')}"),
        await idle_api.submit(prompt="y", file={"file_token": text}),
        await idle_api.submit(prompt="y", file={"object": {"bucket": "easel", "key": text}}),
    ):
        assert missing.status_code == 404, missing.text
    assert await state(idle_api) == before
    listed = await idle_api.client.post("/v3/tasks/list", json={"task_ids": [text]})
    assert listed.json()["data"]["missed"] == [text]
    assert before.tasks == 1 and before.balance == 95


@pytest.mark.parametrize("text", SQL_TEXT)
async def test_sql_metacharacters_in_a_webhook_url_are_stored_verbatim(
    database_url: str, text: str
) -> None:
    settings = settings_for(database_url, allow_outbound_cidrs=["127.0.0.0/8"])
    async with running_api(settings, run_worker=False) as api:
        url = str(httpx.URL("http://127.0.0.1:9/hook", params={"q": text}))
        created = await api.client.post(WEBHOOKS, json={"url": url, "events": ["task.success"]})
        assert created.status_code == 200, created.text
        [listed] = (await api.client.get(WEBHOOKS)).json()["data"]
        assert listed["url"] == url
        missing = await api.client.delete(f"{WEBHOOKS}/{text.replace('/', '')}")
        assert_error(missing, 404, 2001)
        assert len((await api.client.get(WEBHOOKS)).json()["data"]) == 1


# -- API keys: hashed at rest, never logged -------------------------------------------------------


async def test_the_database_holds_a_hash_of_each_key_never_the_key(database_url: str) -> None:
    async with running_api(settings_for(database_url)) as api:
        response = await api.submit(prompt="x", file={"file_token": await api.upload(png())})
        await api.wait(response.json()["data"]["task_id"])
        secret = api.key.removeprefix("tsk_")
        async with engine_of(api.runtime.store).connect() as conn:
            [row] = (await conn.execute(select(api_keys))).all()
            assert row.key_hash == hashlib.sha256(api.key.encode()).hexdigest()
            assert api.key.startswith(row.prefix) and len(row.prefix) < len(api.key) // 3
            for table in metadata.sorted_tables:
                for stored in (await conn.execute(select(table))).all():
                    text = repr(tuple(stored))
                    assert secret not in text and secret[10:30] not in text, table.name


async def test_logs_name_a_key_by_its_prefix_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.INFO, logger="sqlalchemy.engine")  # every statement, its parameters
    settings = settings_for(f"sqlite+aiosqlite:///{tmp_path / 'k.db'}")
    async with running_api(settings, run_worker=False) as api:
        accounts = api.runtime.store.accounts
        key = await accounts.create_key("logged", 10)
        near_miss = key[:-1] + ("A" if key[-1] != "A" else "B")
        auth = {"Authorization": f"Bearer {key}"}
        assert (await api.client.get("/v2/openapi/user/balance", headers=auth)).status_code == 200
        bad = await api.client.get(
            "/v2/openapi/user/balance", headers={"Authorization": f"Bearer {near_miss}"}
        )
        assert_error(bad, 401, 1002)
        await accounts.revoke(key)
        with contextlib.suppress(LookupError):
            await accounts.revoke(key)
        assert_error(await api.client.get("/v2/openapi/user/balance", headers=auth), 401, 1002)
    logged = caplog.text
    assert hashlib.sha256(key.encode()).hexdigest() in logged  # the SQL and its parameters
    for whole in (key, near_miss):
        assert whole not in logged
        assert whole[10:] not in logged


# -- requests per second per key ------------------------------------------------------------------


async def test_a_key_over_its_rate_gets_429_1007_with_retry_after(tmp_path: Path) -> None:
    settings = settings_for(
        f"sqlite+aiosqlite:///{tmp_path / 'rl.db'}", rate_limit_per_s=0.01, rate_limit_burst=3
    )
    async with running_api(settings, run_worker=False) as api:
        for _ in range(3):
            assert (await api.client.get("/v2/openapi/user/balance")).status_code == 200
        before = await state(api)
        limited = await api.submit(prompt="one too many")
        await assert_refused(api, before, limited, 429, 1007)
        assert int(limited.headers["Retry-After"]) >= 1
        assert_error(await api.client.get("/v3/account/balance"), 429, 1007)
        # Another key has its own bucket; requests without a key are not counted (or limited).
        other = await other_key(api)
        assert (await api.client.get("/v2/openapi/user/balance", headers=other)).status_code == 200
        assert (await api.client.get("/healthz")).status_code == 200
        bad = {"Authorization": "Bearer tsk_unknown"}
        assert_error(await api.client.get("/v2/openapi/user/balance", headers=bad), 401, 1002)


async def test_unknown_keys_from_one_address_are_refused_once_over_the_rate(
    tmp_path: Path,
) -> None:
    settings = settings_for(
        f"sqlite+aiosqlite:///{tmp_path / 'guess.db'}", rate_limit_per_s=0.01, rate_limit_burst=2
    )
    async with running_api(settings, run_worker=False) as api:
        balance = "/v2/openapi/user/balance"
        assert (await api.client.get(balance)).status_code == 200  # this key is known here now
        other = await other_key(api)  # a good key this process has not seen yet
        guess = {"Authorization": "Bearer tsk_guess"}
        for _ in range(2):
            assert_error(await api.client.get(balance, headers=guess), 401, 1002)
        refused = await api.client.get(balance, headers=guess)
        assert_error(refused, 429, 1007)
        assert int(refused.headers["Retry-After"]) >= 1
        assert "unknown API keys" in refused.json()["message"]
        # Valid keys are not refused for the unknown ones, seen here before or not.
        assert (await api.client.get(balance)).status_code == 200
        assert (await api.client.get(balance, headers=other)).status_code == 200
        # A malformed header costs no lookup: refused as before, and not counted.
        assert_error(await api.client.get(balance, headers={"Authorization": "Basic x"}), 401, 1002)


def test_a_websocket_watch_counts_against_the_rate(tmp_path: Path) -> None:
    settings = settings_for(
        f"sqlite+aiosqlite:///{tmp_path / 'ws.db'}", rate_limit_per_s=0.01, rate_limit_burst=1
    )
    with TestClient(create_app(settings, run_worker=False)) as client:
        runtime: Runtime = client.app.state.runtime  # type: ignore[attr-defined]
        assert client.portal is not None
        key = client.portal.call(runtime.store.accounts.create_key, "w", 0)
        auth = {"Authorization": f"Bearer {key}"}
        assert client.get("/v2/openapi/user/balance", headers=auth).status_code == 200
        with (
            pytest.raises(WebSocketDisconnect) as closed,
            client.websocket_connect("/v2/openapi/task/watch/all", headers=auth) as ws,
        ):
            ws.receive_json()
        assert (closed.value.code, closed.value.reason[:4]) == (1008, "1007")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_token_bucket_allows_a_burst_then_the_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(rate_per_s=2, burst=3, clock=clock)
    assert [limiter.take("k") for _ in range(4)] == [0, 0, 0, 1]
    assert limiter.take("other") == 0  # every key has its own bucket
    clock.now += 0.5  # one token back
    assert [limiter.take("k"), limiter.take("k")] == [0, 1]
    clock.now += 60  # refilled, but never beyond the burst
    assert [limiter.take("k") for _ in range(4)] == [0, 0, 0, 1]


def test_waiting_looks_at_a_bucket_without_taking_from_it() -> None:
    clock = Clock()
    limiter = RateLimiter(rate_per_s=2, burst=1, clock=clock)
    assert limiter.wait("k") == 0  # no bucket yet: a full one
    assert limiter.take("k") == 0
    assert [limiter.wait("k"), limiter.wait("k")] == [1, 1]
    clock.now += 0.5
    assert [limiter.wait("k"), limiter.take("k")] == [0, 0]


def test_the_retry_after_is_the_whole_seconds_until_the_next_token() -> None:
    clock = Clock()
    limiter = RateLimiter(rate_per_s=0.1, burst=1, clock=clock)
    assert limiter.take("k") == 0
    assert limiter.take("k") == 10
    clock.now += 7.5
    assert limiter.take("k") == 3


def test_a_rate_of_zero_turns_the_limit_off() -> None:
    limiter = RateLimiter(rate_per_s=0, burst=1)
    assert not limiter.enabled
    assert all(limiter.take("k") == 0 for _ in range(1000))


def test_buckets_of_idle_keys_are_dropped() -> None:
    clock = Clock()
    limiter = RateLimiter(rate_per_s=10, burst=10, clock=clock)
    for n in range(10_000):
        limiter.take(f"old-{n}")
    clock.now += 5  # every old bucket is full again: the same as none
    limiter.take("new")
    assert len(limiter._buckets) == 1


def test_the_limits_are_settings_with_safe_defaults() -> None:
    defaults = Settings()
    assert (defaults.max_request_bytes, defaults.rate_limit_per_s, defaults.rate_limit_burst) == (
        MiB,
        20.0,
        40,
    )
    assert defaults.max_header_bytes == 16 * 1024
    with pytest.raises(ValueError, match="rate_limit_per_s"):
        Settings(rate_limit_per_s=-1)


# -- outbound calls never wait for ever ----------------------------------------------------------


async def _drip(request: Request) -> StreamingResponse:
    """An answer that never ends: a byte every 0.1 s, well inside any read timeout."""

    async def forever() -> AsyncIterator[bytes]:
        while True:
            yield b" "
            await asyncio.sleep(0.1)

    return StreamingResponse(forever(), media_type="application/json")


@pytest.fixture
def dripping() -> Iterator[str]:
    app = Starlette(routes=[Route("/{path:path}", _drip, methods=["GET", "POST"])])
    with serve_app(app) as base:
        yield base


@pytest.mark.parametrize("kind", ["openai", "gemini"])
async def test_an_sdk_backend_gives_up_on_an_answer_that_never_ends(
    dripping: str, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EASEL_TEST_DRIP_KEY", "key")
    once = RetryPolicy(attempts=1)
    backend: openai.OpenAIBackend | gemini.GeminiBackend
    if kind == "openai":
        options = openai.Options(
            base_url=f"{dripping}/v1", api_key_env="EASEL_TEST_DRIP_KEY", request_timeout_s=1
        )
        backend, model = openai.OpenAIBackend("drip", options, retry=once), "gpt_image_2"
    else:
        goptions = gemini.Options(
            base_url=dripping, api_key_env="EASEL_TEST_DRIP_KEY", request_timeout_s=1
        )
        backend, model = (
            gemini.GeminiBackend("drip", goptions, retry=once),
            "gemini_2.5_flash_image_preview",
        )
    try:
        async with asyncio.timeout(30):  # a hang fails here instead of hanging the suite
            with pytest.raises(BackendUnavailable, match="no complete answer within 1 s"):
                await backend.generate(job_for(kind, model, "x"), Control())
    finally:
        await backend.close()


async def test_sts_gives_up_on_an_answer_that_never_ends(dripping: str) -> None:
    client = StsClient(dripping, AwsCredentials("AKID", "secret"), "us-east-1", timeout_s=1)
    async with asyncio.timeout(30):
        with pytest.raises(StsError, match="no complete answer within 1 s"):
            await client.assume_role("arn:aws:iam::1:role/r", "easel-s", "{}", 900)


# -- headers, through a real server ---------------------------------------------------------------


def raw_request(port: int, data: bytes) -> bytes:
    """Send ``data`` on a fresh connection; whatever the server answered before it closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        with contextlib.suppress(OSError):  # the server may hang up before it has all of it
            conn.sendall(data)
        answer = b""
        with contextlib.suppress(OSError):
            while chunk := conn.recv(65536):
                answer += chunk
    return answer


def get(path: str, *headers: bytes) -> bytes:
    lines = [f"GET {path} HTTP/1.1".encode(), b"Host: 127.0.0.1", b"Connection: close", *headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


@pytest.mark.e2e
def test_huge_headers_are_refused_and_the_server_keeps_serving(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    key = create_key(config, 10)
    port = free_port()
    log = tmp_path / "serve.log"
    balance = "/v2/openapi/user/balance"
    with easel_process("serve", "--port", str(port), "--config", str(config), log=log) as proc:
        wait_healthy(f"http://127.0.0.1:{port}", proc, log)
        long_key = b"Authorization: Bearer tsk_" + b"a" * 8192
        answers = {
            "8 KB key": raw_request(port, get(balance, long_key)),
            "1 MB header": raw_request(port, get(balance, b"X-Big: " + b"b" * MiB)),
            "100000 headers": raw_request(
                port, get(balance, *(b"X-H%d: v" % n for n in range(100_000)))
            ),
            "key": raw_request(port, get(balance, f"Authorization: Bearer {key}".encode())),
            "near miss": raw_request(port, get(balance, f"Authorization: Bearer {key}x".encode())),
        }
        assert proc.poll() is None
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
        still = httpx.get(
            f"http://127.0.0.1:{port}{balance}", headers={"Authorization": f"Bearer {key}"}
        )
        assert still.json()["data"] == {"balance": 10, "frozen": 0}
    assert answers["8 KB key"].startswith(b"HTTP/1.1 401"), answers["8 KB key"][:200]
    assert b'"code":1002' in answers["8 KB key"]
    assert answers["1 MB header"].startswith(b"HTTP/1.1 400"), answers["1 MB header"][:200]
    assert answers["100000 headers"].startswith(b"HTTP/1.1 400"), answers["100000 headers"][:200]
    assert answers["key"].startswith(b"HTTP/1.1 200")
    assert answers["near miss"].startswith(b"HTTP/1.1 401")
    server_log = log.read_text(errors="replace")
    assert key not in server_log and key[10:] not in server_log
