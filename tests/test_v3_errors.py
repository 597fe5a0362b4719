"""Where v3 answers differently from v2: error codes, envelopes, ``request_id``, the five task
statuses. The v3 routes follow v3; the same refusal on a v2 route stays v2's."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from apptools import Api, png, running_api, settings_for
from easel.api.envelope import refuse
from easel.domain.errors import RateLimited, ServiceUnavailable
from easel.domain.tasks import Status
from test_v3 import key_id, v3_error, v3_submit, v3_task


@pytest.fixture
async def idle_api(database_url: str) -> AsyncIterator[Api]:
    async with running_api(settings_for(database_url), run_worker=False) as api:
        yield api


async def nothing_changed(api: Api, before: dict[str, int]) -> None:
    assert await api.balance() == before
    assert await api.runtime.store.tasks.recent(await key_id(api), 10) == []


@pytest.mark.parametrize(
    "authorization",
    ["", "Bearer tsk_unknown", "Basic dXNlcjpwYXNz"],
    ids=["none", "unknown", "basic"],
)
async def test_a_failed_authentication_is_401_code_2_on_v3_and_1002_on_v2(
    idle_api: Api, authorization: str
) -> None:
    headers = {"Authorization": authorization}
    for method, path in (
        ("GET", "/v3/account/balance"),
        ("POST", "/v3/generation/text-to-image"),
        ("GET", f"/v3/tasks/{uuid.uuid4()}"),
    ):
        response = await idle_api.client.request(
            method, path, headers=headers, json={"prompt": "x"}
        )
        body = v3_error(response, 401, 2)
        assert body["message"].startswith("Authentication failed")
    v2 = await idle_api.client.get("/v2/openapi/user/balance", headers=headers)
    assert v2.status_code == 401
    assert v2.json()["code"] == 1002
    assert set(v2.json()) == {"code", "message", "suggestion"}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v3/something/else"),
        ("POST", "/v3/task"),  # v2's route name under v3
        ("GET", "/v3"),
        ("DELETE", "/v3/nothing/here"),
    ],
)
async def test_an_unknown_v3_route_is_404_code_4001(idle_api: Api, method: str, path: str) -> None:
    body = v3_error(await idle_api.client.request(method, path), 404, 4001)
    assert path in body["message"]
    v2 = await idle_api.client.request(method, "/v2/openapi/something/else")
    assert (v2.status_code, v2.json()["code"]) == (403, 1005)  # as v2 always answered
    assert set(v2.json()) == {"code", "message", "suggestion"}


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/v3/generation/text-to-image", "POST"),
        ("PUT", "/v3/generation/image-to-image", "POST"),
        ("GET", "/v3/files/presign", "POST"),
        ("DELETE", "/v3/account/balance", "GET"),
        ("GET", "/v3/generation/text-to-model", "POST"),  # a route of Tripo's this server lacks
    ],
)
async def test_a_wrong_method_is_405_code_1003(
    idle_api: Api, method: str, path: str, allowed: str
) -> None:
    response = await idle_api.client.request(method, path)
    v3_error(response, 405, 1003)
    assert response.headers["Allow"] == allowed
    v2 = await idle_api.client.get("/v2/openapi/task")
    assert (v2.status_code, v2.json()["code"]) == (403, 1005)


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/v3/generation/text-to-image", "text/plain"),
        ("/v3/generation/image-to-image", "application/x-www-form-urlencoded"),
        ("/v3/tasks/list", "multipart/form-data; boundary=x"),
        ("/v3/files/presign", "application/xml"),
    ],
)
async def test_a_json_route_refuses_another_content_type_with_1003(
    idle_api: Api, path: str, content_type: str
) -> None:
    before = await idle_api.balance()
    body = b'{"prompt": "a fox", "task_ids": ["x"], "format": "png", "input": "x"}'
    response = await idle_api.client.post(
        path, content=body, headers={"Content-Type": content_type}
    )
    answer = v3_error(response, 415, 1003)
    assert content_type.split(";")[0] in answer["message"]
    await nothing_changed(idle_api, before)


async def test_json_is_read_with_a_json_media_type_or_none(idle_api: Api) -> None:
    body = b'{"prompt": "a fox"}'
    for content_type in ("application/json; charset=utf-8", "application/vnd.api+json", None):
        headers = {"Content-Type": content_type} if content_type else {}
        response = await idle_api.client.post(
            "/v3/generation/text-to-image", content=body, headers=headers
        )
        assert response.status_code == 200, (content_type, response.text)
        assert response.json()["status"] == "success"


async def test_an_upload_must_be_multipart(idle_api: Api) -> None:
    response = await idle_api.client.post("/v3/files", json={"file": "abc"})
    v3_error(response, 415, 1003)
    ok = await idle_api.client.post("/v3/files", files={"file": ("a.png", png(), "image/png")})
    assert ok.status_code == 200 and ok.json()["status"] == "success", ok.text


async def test_a_file_token_that_names_nothing_is_1004_on_v3_and_2019_on_v2(idle_api: Api) -> None:
    before = await idle_api.balance()
    missing = str(uuid.uuid4())
    response = await idle_api.client.post(
        "/v3/generation/image-to-image", json={"prompt": "x", "input": missing}
    )
    body = v3_error(response, 400, 1004)
    assert missing in body["message"]
    v2 = await idle_api.submit(prompt="x", file={"type": "png", "file_token": missing})
    assert (v2.status_code, v2.json()["code"]) == (404, 2019)
    await nothing_changed(idle_api, before)


async def test_request_id_echoes_the_clients_x_request_id(idle_api: Api) -> None:
    chosen = "req_01J9ZC4X8K3M7T2Q-5b.e:f"
    response = await idle_api.client.get("/v3/tasks/nope", headers={"X-Request-ID": chosen})
    body = v3_error(response, 404, 2001)
    assert body["request_id"] == chosen == response.headers["X-Tripo-Trace-ID"]
    for odd in ("has spaces in it", "x" * 129, "naïve"):
        response = await idle_api.client.get(
            "/v3/tasks/nope", headers={b"X-Request-ID": odd.encode()}
        )
        body = v3_error(response, 404, 2001)  # request_id is the trace id made for it
        assert str(uuid.UUID(body["request_id"])) == body["request_id"]
    v2 = await idle_api.client.get("/v2/openapi/task/nope", headers={"X-Request-ID": chosen})
    assert v2.headers["X-Tripo-Trace-ID"] != chosen  # v2 stays v2: its own trace id
    assert "request_id" not in v2.json()


async def test_every_v3_success_has_status_success_and_v2_has_none(idle_api: Api) -> None:
    task_id = await v3_submit(idle_api, "text-to-image", prompt="a fox")
    for method, path, body in (
        ("GET", "/v3/account/balance", None),
        ("GET", "/v3/account/usage", None),
        ("GET", f"/v3/tasks/{task_id}", None),
        ("POST", "/v3/tasks/list", {"task_ids": [task_id]}),
        ("POST", "/v3/files/presign", {"format": "png"}),
    ):
        response = await idle_api.client.request(method, path, json=body)
        assert response.status_code == 200, (path, response.text)
        assert set(response.json()) == {"code", "status", "data"}
        assert response.json()["status"] == "success"
    v2 = await idle_api.client.get(f"/v2/openapi/task/{task_id}")
    assert set(v2.json()) == {"code", "data"}


async def test_banned_and_expired_read_as_failed_with_their_code_on_v3(idle_api: Api) -> None:
    store = idle_api.runtime.store
    expired = await v3_submit(idle_api, "text-to-image", prompt="waits too long")
    assert await store.queue.expire_queued(0) == 1
    banned = await v3_submit(idle_api, "text-to-image", prompt="refused", model="gpt_image_2")
    claimed = await store.queue.claim("w", ["gpt_image_2"], 30)
    assert claimed is not None and claimed.id == banned
    refusal = "OpenAI refused the request under its usage policy."
    assert await store.queue.fail(claimed, Status.BANNED, 2008, refusal)
    cancelled = await v3_submit(idle_api, "text-to-image", prompt="never mind")
    assert (await idle_api.client.post(f"/v2/openapi/task/{cancelled}/cancel")).status_code == 200

    seen = {
        name: await v3_task(idle_api, task_id)
        for name, task_id in (("expired", expired), ("banned", banned), ("cancelled", cancelled))
    }
    assert seen["expired"]["status"] == seen["banned"]["status"] == "failed"
    assert seen["expired"]["error_code"] == 2018
    assert "expired" in seen["expired"]["error_message"]
    assert seen["banned"]["error_code"] == 2008
    assert seen["banned"]["error_message"] == refusal
    assert seen["cancelled"]["status"] == "cancelled" and "error_code" not in seen["cancelled"]
    for task in seen.values():
        assert task["credits_consumed"] == 0.0 and isinstance(task["credits_consumed"], float)
        assert task["completed_at"].endswith("Z") and task["created_at"].endswith("Z")
    usage = (await idle_api.client.get("/v3/account/usage")).json()["data"]["items"]
    assert {item["status"] for item in usage} == {"failed", "cancelled"}
    listed = await idle_api.client.post("/v3/tasks/list", json={"task_ids": [expired, banned]})
    assert {t["status"] for t in listed.json()["data"]["tasks"].values()} == {"failed"}
    # v2 keeps its eight statuses and codes
    assert (await idle_api.task(expired))["status"] == "expired"
    v2_banned = await idle_api.task(banned)
    assert (v2_banned["status"], v2_banned["error_code"]) == ("banned", 2008)


def _refusing_app(error: Exception) -> Any:
    """An ASGI app that refuses every request with ``error`` from middleware, as the door does."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        scope.setdefault("state", {})["trace_id"] = "t-1"
        assert isinstance(error, (RateLimited, ServiceUnavailable))
        await refuse(error, scope, receive, send)

    return app


@pytest.mark.parametrize("path", ["/v3/account/balance", "/v2/openapi/user/balance"])
@pytest.mark.parametrize(
    "error", [RateLimited("slow down", retry_after_s=7), ServiceUnavailable("away")]
)
async def test_a_refusal_from_middleware_keeps_retry_after_on_v2_and_v3(
    path: str, error: RateLimited | ServiceUnavailable
) -> None:
    transport = httpx.ASGITransport(app=_refusing_app(error))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        response = await client.get(path)
    assert response.status_code == error.status
    assert response.headers["Retry-After"] == str(error.retry_after_s)
    body: dict[str, Any] = response.json()
    assert body["code"] == error.code
    if path.startswith("/v3/"):
        assert (body["status"], body["request_id"]) == ("error", "t-1")
    else:
        assert set(body) == {"code", "message", "suggestion"}
