"""The Tripo v3 image routes (``/v3/…``), in process, on both database engines."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from apptools import Api, png, running_api, settings_for
from easel.domain.tasks import Reference

V3_TASK_FIELDS = {
    "task_id",
    "type",
    "status",
    "progress",
    "input",
    "output",
    "model",
    "credits_consumed",
    "created_at",
    "running_left_time",
    "queuing_num",
}


@pytest.fixture
async def api(database_url: str) -> AsyncIterator[Api]:
    async with running_api(settings_for(database_url)) as api:
        yield api


@pytest.fixture
async def idle_api(database_url: str) -> AsyncIterator[Api]:
    async with running_api(settings_for(database_url), run_worker=False) as api:
        yield api


async def v3_upload(api: Api, data: bytes) -> str:
    response = await api.client.post("/v3/files", files={"file": ("ref.png", data, "image/png")})
    assert response.status_code == 200, response.text
    token: str = response.json()["data"]["file_token"]
    return token


async def v3_task(api: Api, task_id: str) -> dict[str, Any]:
    response = await api.client.get(f"/v3/tasks/{task_id}")
    assert response.status_code == 200, response.text
    assert set(response.json()) == {"code", "status", "data"}
    assert response.json()["code"] == 0 and response.json()["status"] == "success"
    data: dict[str, Any] = response.json()["data"]
    return data


async def v3_submit(api: Api, route: str, **body: Any) -> str:
    response = await api.client.post(f"/v3/generation/{route}", json=body)
    assert response.status_code == 200, response.text
    task_id: str = response.json()["data"]["task_id"]
    return task_id


def v3_error(response: httpx.Response, status: int, code: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"code", "status", "message", "suggestion", "request_id"}
    assert body["code"] == code and body["status"] == "error"
    assert body["request_id"] == response.headers["X-Tripo-Trace-ID"]
    return body


async def test_text_to_image_runs_and_reads_back_in_the_v3_shape(api: Api) -> None:
    task_id = await v3_submit(api, "text-to-image", prompt="a red fox", model="flux.1_dev")
    await api.wait(task_id)
    task = await v3_task(api, task_id)
    assert V3_TASK_FIELDS | {"completed_at", "served_by"} == set(task)
    assert task["served_by"] == "placeholder: a generated test card, no model"
    assert task["type"] == "text_to_image"
    assert task["status"] == "success"
    assert task["progress"] == 100
    assert task["model"] == "flux.1_dev"
    assert task["credits_consumed"] == 5.0
    assert task["input"]["prompt"] == "a red fox"
    assert datetime.fromisoformat(task["created_at"]) <= datetime.fromisoformat(
        task["completed_at"]
    )
    assert task["created_at"].endswith("Z")
    image = await api.client.get(task["output"]["generated_image_url"])
    assert image.status_code == 200
    assert image.content.startswith(b"\x89PNG")


async def test_image_to_image_takes_uploads_urls_and_earlier_tasks(api: Api) -> None:
    first = await v3_submit(api, "text-to-image", prompt="a fox")
    await api.wait(first)
    token = await v3_upload(api, png())
    task_id = await v3_submit(
        api, "image-to-image", inputs=[token, first], prompt="image[1] in the style of image[2]"
    )
    task = await api.wait(task_id)
    assert task["status"] == "success", task
    stored = await api.runtime.store.tasks.get(task_id)
    earlier = await api.runtime.store.tasks.get(first)
    assert stored is not None and earlier is not None and earlier.output_key
    assert stored.refs[1] == Reference("object", earlier.output_key)
    assert stored.refs[0].source == "object" and token in stored.refs[0].value
    assert (await v3_task(api, task_id))["type"] == "image_to_image"


async def test_a_v2_task_reads_through_v3_and_a_v3_task_through_v2(api: Api) -> None:
    token = await api.upload(png())
    v2_id = (await api.submit(prompt="from v2", file={"type": "png", "file_token": token})).json()[
        "data"
    ]["task_id"]
    v3_id = await v3_submit(api, "image-to-image", input=token, prompt="from v3")
    v2_seen = await api.wait(v3_id)
    await api.wait(v2_id)
    v3_seen = await v3_task(api, v2_id)
    assert v2_seen["type"] == "generate_image"
    assert v2_seen["input"]["files"] == [{"file_token": token}]
    assert v3_seen["type"] == "image_to_image"
    assert v3_seen["input"]["files"] == [{"type": "png", "file_token": token}]
    assert urlsplit(v3_seen["output"]["generated_image_url"]).path.startswith(
        "/v2/openapi/outputs/"
    )


async def test_v3_model_names_map_to_the_same_models_and_prices(idle_api: Api) -> None:
    before = await idle_api.balance()
    task_id = await v3_submit(idle_api, "text-to-image", prompt="a cat", model="banana_pro")
    task = await v3_task(idle_api, task_id)
    assert task["model"] == "gemini_3_pro_image_preview"
    after = await idle_api.balance()
    assert after["balance"] == before["balance"] - 10
    assert after["frozen"] == 10


@pytest.mark.parametrize(
    ("route", "body", "status", "code"),
    [
        ("text-to-image", {}, 400, 1004),  # no prompt, no template
        ("text-to-image", {"prompt": "x", "input": "tok"}, 400, 1004),
        ("image-to-image", {"prompt": "x"}, 400, 1004),  # no reference
        ("image-to-image", {"prompt": "x", "input": "a", "inputs": ["b"]}, 400, 1004),
        ("image-to-image", {"prompt": "x", "inputs": []}, 400, 1004),
        ("image-to-image", {"prompt": "x", "input": 7}, 400, 1004),
        ("image-to-image", {"prompt": "x", "input": "no-such-token"}, 400, 1004),  # v2: 2019
        ("text-to-image", {"prompt": "x", "model": "seedream_v3"}, 400, 2017),
        ("text-to-image", {"prompt": "a 🦊"}, 400, 2009),
        ("text-to-image", {"prompt": "x", "model": "midjourney", "template": "t_pose"}, 400, 1004),
    ],
)
async def test_bad_v3_requests_get_the_v2_rule_in_the_v3_envelope_and_cost_nothing(
    idle_api: Api, route: str, body: dict[str, Any], status: int, code: int
) -> None:
    before = await idle_api.balance()
    response = await idle_api.client.post(f"/v3/generation/{route}", json=body)
    v3_error(response, status, code)
    assert await idle_api.balance() == before
    assert await idle_api.runtime.store.tasks.recent((await key_id(idle_api)), 10) == []


async def key_id(api: Api) -> str:
    caller = await api.runtime.store.accounts.authenticate(api.key)
    return caller.key_id


async def test_another_keys_task_is_not_an_input_and_not_visible(database_url: str) -> None:
    async with running_api(settings_for(database_url)) as api:
        other_key = await api.runtime.store.accounts.create_key("other", 100)
        first = await v3_submit(api, "text-to-image", prompt="mine")
        await api.wait(first)
        other = {"Authorization": f"Bearer {other_key}"}
        response = await api.client.get(f"/v3/tasks/{first}", headers=other)
        v3_error(response, 404, 2001)
        response = await api.client.post(
            "/v3/generation/image-to-image", json={"input": first, "prompt": "x"}, headers=other
        )
        v3_error(response, 400, 1004)


async def test_tasks_list_returns_found_and_missed(api: Api) -> None:
    one = await v3_submit(api, "text-to-image", prompt="one")
    two = await v3_submit(api, "text-to-image", prompt="two")
    response = await api.client.post(
        "/v3/tasks/list", json={"task_ids": [one, two, "not-a-task", one]}
    )
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert set(data["tasks"]) == {one, two}
    assert data["tasks"][one]["task_id"] == one
    assert data["missed"] == ["not-a-task"]
    response = await api.client.post("/v3/tasks/list", json={"task_ids": []})
    v3_error(response, 400, 1004)


async def test_balance_and_usage_follow_the_tasks(api: Api) -> None:
    first = await v3_submit(api, "text-to-image", prompt="first")
    second = await v3_submit(api, "text-to-image", prompt="second", model="gpt_image_2")
    await api.wait(first)
    await api.wait(second)
    balance = (await api.client.get("/v3/account/balance")).json()["data"]
    assert balance == {"balance": 85.0, "frozen": 0.0}
    usage = (await api.client.get("/v3/account/usage", params={"limit": 10})).json()["data"]
    assert [item["task_id"] for item in usage["items"]] == [second, first]
    assert [item["credits_consumed"] for item in usage["items"]] == [10.0, 5.0]
    assert {item["status"] for item in usage["items"]} == {"success"}
    page = (await api.client.get("/v3/account/usage", params={"limit": 1, "offset": 1})).json()
    assert [item["task_id"] for item in page["data"]["items"]] == [first]
    v3_error(await api.client.get("/v3/account/usage", params={"limit": 0}), 400, 1004)


async def test_a_presigned_upload_works_once_and_only_with_its_signature(
    idle_api: Api,
) -> None:
    response = await idle_api.client.post("/v3/files/presign", json={"format": "png"})
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert data["expires_in"] == 900
    url = data["presigned_url"]
    bare = httpx.AsyncClient(transport=idle_api.client._transport, base_url="http://testserver")
    async with bare:
        tampered = url.replace("signature=", "signature=0")
        v3_error(await bare.put(tampered, content=png()), 403, 1005)
        put = await bare.put(url, content=png(), headers={"Content-Type": "image/png"})
        assert put.status_code == 200, put.text
        v3_error(await bare.put(url, content=png()), 400, 1004)  # the token holds a file now
        other = await idle_api.client.post("/v3/files/presign", json={"format": "png"})
        v3_error(await bare.put(other.json()["data"]["presigned_url"], content=b"text"), 400, 2004)
    task_id = await v3_submit(idle_api, "image-to-image", input=data["file_token"], prompt="x")
    assert (await v3_task(idle_api, task_id))["status"] == "queued"
    v3_error(await idle_api.client.post("/v3/files/presign", json={"format": "gif"}), 400, 1004)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v3/generation/text-to-model"),
        ("POST", "/v3/generation/image-to-model"),
        ("POST", "/v3/animations/rig"),
        ("POST", "/v3/models/convert"),
        ("POST", "/v3/mesh/segment"),
    ],
)
async def test_routes_this_server_does_not_serve_say_so(
    idle_api: Api, method: str, path: str
) -> None:
    response = await idle_api.client.request(method, path, json={"prompt": "a house"})
    body = v3_error(response, 501, 2002)
    assert "not supported by this server" in body["message"]
    assert "/v3/generation/image-to-image" in body["suggestion"]


async def test_v3_needs_a_key_and_the_v2_envelope_stays_as_it_was(idle_api: Api) -> None:
    response = await idle_api.client.get("/v3/account/balance", headers={"Authorization": ""})
    v3_error(response, 401, 2)  # v3's code for a failed authentication; v2's is 1002
    v2 = await idle_api.client.get("/v2/openapi/task/nope")
    assert set(v2.json()) == {"code", "message", "suggestion"}
