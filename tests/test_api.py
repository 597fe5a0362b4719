"""The v2 API against the real app in process: SQLite, memory object store, placeholder."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import update
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from apptools import Api, engine_of, png, row_counts, running_api, settings_for
from easel.store.tables import idempotency_keys
from loopback import serve_app


# The protocol's behaviour through the app: on every kind of store, the in-memory one included
# (store_url); a test of what SQL does takes database_url instead.
@pytest.fixture
async def api(store_url: str) -> AsyncIterator[Api]:
    async with running_api(settings_for(store_url)) as api:
        yield api


@pytest.fixture
async def idle_api(store_url: str) -> AsyncIterator[Api]:
    """No worker: tasks stay queued."""
    async with running_api(settings_for(store_url), run_worker=False) as api:
        yield api


async def task_count(api: Api) -> int:
    return (await row_counts(api.runtime.store))[0]


def assert_error(response: Any, status: int, code: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["code"] == code
    assert body["message"] and body["suggestion"]
    assert "data" not in body
    return body


# -- envelope and auth ----------------------------------------------------------------------


async def test_every_response_carries_a_trace_id(api: Api) -> None:
    ok = await api.client.get("/v2/openapi/user/balance")
    bad = await api.client.get("/v2/openapi/task/nope")
    assert ok.headers["X-Tripo-Trace-ID"] != bad.headers["X-Tripo-Trace-ID"]
    assert len(ok.headers["X-Tripo-Trace-ID"]) == 36


@pytest.mark.parametrize(
    "header",
    [None, "tsk_unknown", "Bearer", "Bearer tcli_client_id", "Bearer tsk_not_a_real_key"],
)
async def test_a_missing_malformed_or_unknown_key_gets_401_1002(
    api: Api, header: str | None
) -> None:
    headers = {} if header is None else {"Authorization": header}
    response = await api.client.get(
        "/v2/openapi/user/balance", headers={"Authorization": ""} | headers
    )
    assert_error(response, 401, 1002)


async def test_a_revoked_key_is_refused(api: Api) -> None:
    await api.runtime.store.accounts.revoke(api.key)
    assert_error(await api.client.get("/v2/openapi/user/balance"), 401, 1002)


async def test_an_unknown_route_answers_in_the_error_envelope(api: Api) -> None:
    assert_error(await api.client.get("/v2/openapi/nothing-here"), 403, 1005)


# -- refusals cost nothing and change nothing -----------------------------------------------

REFUSALS: list[tuple[str, dict[str, Any], int, int]] = [
    ("wrong task type", {"type": "text_to_model", "prompt": "x"}, 400, 2002),
    ("unknown model", {"prompt": "x", "model_version": "flux.2"}, 400, 2017),
    ("prompt too long", {"prompt": "a" * 1025}, 400, 1004),
    ("emoji in prompt", {"prompt": "a cat 🐱"}, 400, 2009),
    ("no prompt, no template", {}, 400, 1004),
    (
        "unserved model",
        {"prompt": "x", "model_version": "gemini_3.1_flash_image_preview"},
        400,
        1004,
    ),
    ("unknown template", {"prompt": "x", "template": "cartoon"}, 400, 1004),
    (
        "image[2] of one image",
        {"prompt": "image[2]", "file": {"url": "http://127.0.0.1/a.png"}},
        400,
        1004,
    ),
    (
        "midjourney with images",
        {"prompt": "x", "model_version": "midjourney", "file": {"url": "http://127.0.0.1/a.png"}},
        400,
        1004,
    ),
    (
        "two sources in a File",
        {"prompt": "x", "file": {"file_token": "t", "url": "http://a/b"}},
        400,
        1004,
    ),
    ("unknown file_token", {"prompt": "x", "file": {"file_token": "0000"}}, 404, 2019),
    (
        "object outside uploads",
        {"prompt": "x", "file": {"object": {"bucket": "easel", "key": "x.png"}}},
        404,
        2019,
    ),
    ("url to loopback", {"prompt": "x", "file": {"url": "http://127.0.0.1:9/a.png"}}, 400, 1004),
    (
        "url to metadata",
        {"prompt": "x", "file": {"url": "http://169.254.169.254/latest"}},
        400,
        1004,
    ),
    ("t_pose not a bool", {"prompt": "x", "t_pose": "yes"}, 400, 1004),
]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [pytest.param(body, status, code, id=name) for name, body, status, code in REFUSALS],
)
async def test_a_refused_task_gets_its_code_and_moves_no_credit(
    idle_api: Api, body: dict[str, Any], status: int, code: int
) -> None:
    response = await idle_api.client.post(
        "/v2/openapi/task", json={"type": "generate_image"} | body
    )
    assert_error(response, status, code)
    assert await idle_api.balance() == {"balance": 100, "frozen": 0}
    assert await task_count(idle_api) == 0


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b'"text"', b"\xff\xfe"])
async def test_a_body_that_is_not_a_json_object_gets_1003(idle_api: Api, raw: bytes) -> None:
    response = await idle_api.client.post("/v2/openapi/task", content=raw)
    assert_error(response, 400, 1003)
    assert await task_count(idle_api) == 0


async def test_webp_is_refused_for_flux_kontext_pro_but_taken_by_gpt_4o(idle_api: Api) -> None:
    token = await idle_api.upload(png(fmt="WEBP"), name="looks-like.png")
    refused = await idle_api.submit(prompt="x", file={"type": "png", "file_token": token})
    body = assert_error(refused, 400, 2004)
    assert "WebP" in body["message"]
    accepted = await idle_api.submit(
        prompt="x", model_version="gpt_4o", file={"type": "png", "file_token": token}
    )
    assert accepted.status_code == 200


async def test_another_accounts_upload_is_not_found(idle_api: Api) -> None:
    other_key = await idle_api.runtime.store.accounts.create_key("other", 50)
    response = await idle_api.client.post(
        "/v2/openapi/upload",
        files={"file": ("a.png", png(), "image/png")},
        headers={"Authorization": f"Bearer {other_key}"},
    )
    token = response.json()["data"]["image_token"]
    assert_error(await idle_api.submit(prompt="x", file={"file_token": token}), 404, 2019)


async def test_not_enough_credit_gets_403_2010_and_nothing_changes(database_url: str) -> None:
    async with running_api(settings_for(database_url), run_worker=False, credits=7) as api:
        assert (await api.submit(prompt="x")).status_code == 200  # 5 credits
        assert_error(await api.submit(prompt="y"), 403, 2010)
        assert await api.balance() == {"balance": 2, "frozen": 5}
        assert await task_count(api) == 1


async def test_the_eleventh_unfinished_task_gets_429_2000_with_retry_after(idle_api: Api) -> None:
    await idle_api.runtime.store.accounts.grant(idle_api.key, 1000)
    for _ in range(10):
        assert (await idle_api.submit(prompt="queued")).status_code == 200
    response = await idle_api.submit(prompt="one too many")
    assert_error(response, 429, 2000)
    assert int(response.headers["Retry-After"]) >= 1
    assert await task_count(idle_api) == 10


# -- uploads --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("files", "code"),
    [
        ({"file": ("a.png", b"", "image/png")}, 2003),
        ({"file": ("a.gif", b"GIF89a" + b"\0" * 40, "image/gif")}, 2004),
        ({"other": ("a.png", b"x", "image/png")}, 1004),
    ],
    ids=["empty", "gif", "missing-field"],
)
async def test_bad_uploads_are_refused(api: Api, files: dict[str, Any], code: int) -> None:
    for route in ("/v2/openapi/upload", "/v2/openapi/upload/sts"):
        response = await api.client.post(route, files=files)
        assert_error(response, 400, code)


# -- the task lifecycle ---------------------------------------------------------------------


async def test_a_task_succeeds_settles_its_credits_and_serves_its_image(api: Api) -> None:
    token = await api.upload(png())
    response = await api.submit(prompt="a red cube like image[1]", file={"file_token": token})
    task_id = response.json()["data"]["task_id"]
    task = await api.wait(task_id)
    assert task["status"] == "success"
    assert task["progress"] == 100
    assert task["consumed_credit"] == 5
    assert task["queuing_num"] == -1 and task["running_left_time"] == -1
    assert task["input"]["model_version"] == "flux.1_kontext_pro"
    assert "error_code" not in task
    assert await api.balance() == {"balance": 95, "frozen": 0}
    url = task["output"]["generated_image"]
    for headers in ({}, {"Authorization": f"Bearer {api.key}"}, {"Authorization": "Bearer x"}):
        image = await api.client.get(url, headers=headers)
        assert image.status_code == 200
        assert image.headers["content-type"] == "image/png"
        assert image.content.startswith(b"\x89PNG")


async def test_a_tampered_or_expired_output_link_is_refused(api: Api) -> None:
    task = await api.wait((await api.submit(prompt="x")).json()["data"]["task_id"])
    parts = urlsplit(task["output"]["generated_image"])
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    tampered = await api.client.get(parts.path, params=query | {"signature": "0" * 64})
    assert_error(tampered, 403, 1005)
    key = parts.path.removeprefix("/v2/openapi/outputs/")
    expired_at = int(time.time()) - 1
    expired_sig = api.runtime.signer._signature(key, expired_at)
    expired = await api.client.get(
        parts.path, params={"expires": expired_at, "signature": expired_sig}
    )
    assert_error(expired, 403, 1005)


async def test_a_task_is_visible_only_to_its_key(api: Api) -> None:
    task_id = (await api.submit(prompt="mine")).json()["data"]["task_id"]
    other = await api.runtime.store.accounts.create_key("other", 0)
    response = await api.client.get(
        f"/v2/openapi/task/{task_id}", headers={"Authorization": f"Bearer {other}"}
    )
    assert_error(response, 404, 2001)


async def test_flux_1_dev_with_an_image_runs_as_flux_1_kontext_pro(api: Api) -> None:
    token = await api.upload(png())
    response = await api.submit(prompt="x", model_version="flux.1_dev", file={"file_token": token})
    task = await api.wait(response.json()["data"]["task_id"])
    assert task["input"]["model_version"] == "flux.1_kontext_pro"
    assert task["consumed_credit"] == 5


async def test_ten_credit_models_cost_ten(api: Api) -> None:
    task = await api.wait(
        (await api.submit(prompt="x", model_version="gpt_image_2")).json()["data"]["task_id"]
    )
    assert task["consumed_credit"] == 10
    assert await api.balance() == {"balance": 90, "frozen": 0}


async def test_the_template_prompt_and_instructions_reach_the_backend_in_order(api: Api) -> None:
    token = await api.upload(png())
    response = await api.submit(
        prompt="my hero image[1], pose from image[2]",
        template="t-pose",
        t_pose=True,
        sketch_to_render=True,
        file={"file_token": token},
    )
    task_id = response.json()["data"]["task_id"]
    stored = await api.runtime.store.tasks.get(task_id)
    assert stored is not None
    prompt = stored.prompt
    assert (
        prompt.index("T-pose reference")
        < prompt.index("my hero")
        < prompt.index("arms stretched")
        < prompt.index("finished, fully rendered")
    )
    assert [ref.source for ref in stored.refs] == ["object", "template"]
    assert (await api.wait(task_id))["status"] == "success"


async def test_queued_tasks_report_their_real_position_and_no_estimate_before_any_run(
    idle_api: Api,
) -> None:
    ids = [(await idle_api.submit(prompt=f"n{i}")).json()["data"]["task_id"] for i in range(3)]
    tasks_ = [await idle_api.task(task_id) for task_id in ids]
    assert [t["queuing_num"] for t in tasks_] == [0, 1, 2]
    assert all(t["status"] == "queued" and t["running_left_time"] == -1 for t in tasks_)
    assert all(t["running_left_basis"] == "none" for t in tasks_)  # see test_eta


async def test_a_failing_backend_ends_the_task_failed_with_a_refund(database_url: str) -> None:
    settings = settings_for(database_url, placeholder={"fail_rate": 1.0})
    async with running_api(settings) as api:
        task = await api.wait((await api.submit(prompt="x")).json()["data"]["task_id"])
        assert task["status"] == "failed"
        assert task["error_code"] == 1001
        assert "fail_rate" in task["error_msg"]
        assert task["consumed_credit"] == 0
        assert await api.balance() == {"balance": 100, "frozen": 0}


# -- url inputs -----------------------------------------------------------------------------


@pytest.fixture
def image_host() -> Iterator[str]:
    async def image(request: Request) -> Response:
        return Response(png(40, 30, "blue"), media_type="image/png")

    async def gif(request: Request) -> Response:
        return Response(b"GIF89a" + b"\0" * 40, media_type="image/gif")

    app = Starlette(routes=[Route("/a.png", image), Route("/b.gif", gif)])
    with serve_app(app) as base:
        yield base


async def test_a_url_input_on_an_allowed_network_is_fetched(
    database_url: str, image_host: str
) -> None:
    settings = settings_for(database_url, allow_outbound_cidrs=["127.0.0.0/8"])
    async with running_api(settings) as api:
        ok = await api.wait(
            (await api.submit(prompt="x", file={"url": f"{image_host}/a.png"})).json()["data"][
                "task_id"
            ]
        )
        assert ok["status"] == "success"
        bad = await api.wait(
            (await api.submit(prompt="x", file={"url": f"{image_host}/b.gif"})).json()["data"][
                "task_id"
            ]
        )
        assert bad["status"] == "failed"
        assert bad["error_code"] == 2004
        assert await api.balance() == {"balance": 95, "frozen": 0}


# -- crashes and leases ---------------------------------------------------------------------


async def ledger_kinds(api: Api, task_id: str) -> list[str]:
    """The kinds of the task's ledger rows, oldest first (of the key's latest ten)."""
    _, rows = await api.runtime.store.accounts.balance_of_key(api.key)
    return [row.kind for row in reversed(rows) if row.task_id == task_id]


async def test_a_task_of_a_dead_worker_is_requeued_and_charged_once(database_url: str) -> None:
    settings = settings_for(database_url, lease_s=0.3)
    async with running_api(settings, run_worker=False) as api:
        task_id = (await api.submit(prompt="x")).json()["data"]["task_id"]
        claimed = await api.runtime.store.queue.claim("dead-worker", ["flux.1_kontext_pro"], 0.3)
        assert claimed is not None and claimed.id == task_id  # …and it never heartbeats
        await asyncio.sleep(0.4)
        stop = asyncio.Event()
        worker = asyncio.create_task(api.runtime.new_worker().run(stop))
        task = await api.wait(task_id)
        stop.set()
        await worker
        assert task["status"] == "success"
        # The dead worker comes back and tries to finish: its claim is fenced off.
        assert not await api.runtime.store.queue.complete(claimed, "outputs/late.png", "dry")
        assert await ledger_kinds(api, task_id) == ["hold", "settle"]
        assert await api.balance() == {"balance": 95, "frozen": 0}
        stored = await api.runtime.store.tasks.get(task_id)
        assert stored is not None and stored.attempts == 2


async def test_a_task_that_keeps_losing_its_worker_fails_with_a_refund(database_url: str) -> None:
    settings = settings_for(database_url, lease_s=0.1, max_attempts=2)
    async with running_api(settings, run_worker=False) as api:
        task_id = (await api.submit(prompt="x")).json()["data"]["task_id"]
        store = api.runtime.store.queue
        for _ in range(2):
            assert await store.claim("dying-worker", ["flux.1_kontext_pro"], 0.1) is not None
            await asyncio.sleep(0.15)
            await store.reclaim_lapsed(max_attempts=2)
        task = await api.task(task_id)
        assert task["status"] == "failed"
        assert task["error_code"] == 1001
        assert "stopped responding" in task["error_msg"]
        assert await ledger_kinds(api, task_id) == ["hold", "refund"]
        assert await api.balance() == {"balance": 100, "frozen": 0}


async def test_ledger_sums_equal_balances_after_mixed_outcomes(database_url: str) -> None:
    settings = settings_for(database_url, placeholder={"fail_rate": 0.5})
    async with running_api(settings, credits=1000) as api:
        ids = [(await api.submit(prompt=f"t{i}")).json()["data"]["task_id"] for i in range(10)]
        finals = [await api.wait(task_id) for task_id in ids]
        settled = sum(t["consumed_credit"] for t in finals)
        caller = await api.runtime.store.accounts.authenticate(api.key)
        balance = await api.runtime.store.accounts.balance(caller.account_id)
        assert balance == await api.runtime.store.accounts.ledger_sums(caller.account_id)
        assert balance.frozen == 0
        assert balance.balance + settled == 1000


async def test_an_upload_over_20_mb_is_refused_by_its_length(api: Api) -> None:
    big = b"\x89PNG" + b"\0" * (21 * 1024 * 1024)
    response = await api.client.post("/v2/openapi/upload", files={"file": ("a.png", big)})
    body = assert_error(response, 413, 1004)  # refused unread, by easel.api.limits
    assert "20 MB" in body["message"]


async def test_models_lists_the_catalog_with_prices_and_serving_backends(api: Api) -> None:
    response = await api.client.get("/v2/openapi/models")
    data = response.json()["data"]
    assert data["default"] == "flux.1_kontext_pro"
    # text_to_image runs on the default model here (none configured), at its flat price
    assert data["text_to_image"] == {"model_version": "flux.1_kontext_pro", "credits": 5}
    rows = {row["model_version"]: row for row in data["models"]}
    assert len(rows) == 14
    assert data["aliases"] == {}
    assert rows["gpt_image_2"]["credits"] == 10
    assert rows["gpt_image_2"]["v3_names"] == ["chat_image_2"]
    assert (rows["seedream_v5"]["credits"], rows["seedream_v5"]["max_files"]) == (5, 4)
    assert rows["flux.1_dev"]["images"] == "upgrade"
    assert rows["midjourney"]["images"] == "refuses"
    assert rows["flux.1_kontext_pro"]["served"] is True
    assert rows["flux.1_kontext_pro"]["reason"] is None
    assert rows["flux.1_kontext_pro"]["backends"] == [
        {
            "name": "dry",
            "kind": "placeholder",
            "ready": True,
            "reason": None,
            "load_state": "nothing to load",
            "served_by": "placeholder: a generated test card, no model",
        }
    ]
    assert rows["gemini_3.1_flash_image_preview"]["served"] is False
    assert rows["gemini_3.1_flash_image_preview"]["reason"] == "no backend is configured for it"
    assert rows["gemini_3.1_flash_image_preview"]["backends"] == []


async def test_a_model_taken_by_a_live_worker_elsewhere_is_served(idle_api: Api) -> None:
    model = "gemini_3.1_flash_image_preview"  # no backend in this process
    assert_error(await idle_api.submit(prompt="x", model_version=model), 400, 1004)
    await idle_api.runtime.store.queue.register_worker("gpu-box-1", [model], slots=1)
    assert (await idle_api.submit(prompt="x", model_version=model)).status_code == 200
    rows = (await idle_api.client.get("/v2/openapi/models")).json()["data"]["models"]
    assert {row["model_version"]: row["served"] for row in rows}[model] is True
    assert {row["model_version"]: row["reason"] for row in rows}[model] is None


def keyless_settings(database_url: str, *models: str) -> Any:
    """``models`` on an OpenAI backend whose key is not set; flux.1_kontext_pro on ``dry``
    when listed."""
    chains = {m: {"backends": ["dry" if m == "flux.1_kontext_pro" else "oa"]} for m in models}
    return settings_for(
        database_url,
        backends={"dry": {"kind": "placeholder"}, "oa": {"kind": "openai"}},
        models=chains,
    )


async def test_readyz_names_the_models_nothing_serves_and_why(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Still ready while some model is served (the others are named, with why); not ready
    once no configured model can run at all."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    settings = keyless_settings(database_url, "flux.1_kontext_pro", "gpt_image_2")
    async with running_api(settings, run_worker=False) as api:
        ready = await api.client.get("/readyz")
        refused = await api.submit(prompt="x", model_version="gpt_image_2")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {
        "database": "ok",
        "object_store": "ok",
        "models": "not served: gpt_image_2 (backend 'oa': no API key: set OPENAI_API_KEY)",
    }
    body = assert_error(refused, 400, 1004)
    assert "not served by this server (backend 'oa': no API key" in body["message"]
    async with running_api(keyless_settings(database_url, "gpt_image_2"), run_worker=False) as api:
        ready = await api.client.get("/readyz")
    assert ready.status_code == 503, ready.text
    assert ready.json()["status"] == "unavailable"
    assert "gpt_image_2" in ready.json()["checks"]["models"]


# -- cancel ---------------------------------------------------------------------------------


async def cancel(api: Api, task_id: str) -> dict[str, Any]:
    response = await api.client.post(f"/v2/openapi/task/{task_id}/cancel")
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


async def test_cancelling_a_queued_task_ends_it_at_once_with_a_refund(idle_api: Api) -> None:
    task_id = (await idle_api.submit(prompt="x")).json()["data"]["task_id"]
    first = await cancel(idle_api, task_id)
    again = await cancel(idle_api, task_id)
    assert first["status"] == again["status"] == "cancelled"
    assert first["consumed_credit"] == 0
    assert await idle_api.balance() == {"balance": 100, "frozen": 0}
    assert await ledger_kinds(idle_api, task_id) == ["hold", "refund"]


async def test_cancelling_a_running_task_stops_it_at_the_next_step(database_url: str) -> None:
    settings = settings_for(database_url, lease_s=3, placeholder={"delay_s": 30})
    async with running_api(settings) as api:
        task_id = (await api.submit(prompt="x")).json()["data"]["task_id"]
        await api.wait(task_id, until={"running"})
        assert (await cancel(api, task_id))["status"] == "running"
        started = time.monotonic()
        task = await api.wait(task_id, timeout_s=10)
        assert time.monotonic() - started < 5  # not the 30 s the backend would take
        assert task["status"] == "cancelled"
        assert task["attempts"][-1]["outcome"] == "cancelled"
        assert await api.balance() == {"balance": 100, "frozen": 0}
        assert await ledger_kinds(api, task_id) == ["hold", "refund"]


async def test_cancelling_a_final_task_leaves_it_unchanged(api: Api) -> None:
    task_id = (await api.submit(prompt="x")).json()["data"]["task_id"]
    done = await api.wait(task_id)
    after = await cancel(api, task_id)
    assert after["status"] == done["status"] == "success"
    assert after["consumed_credit"] == 5


async def test_cancelling_another_keys_task_is_not_found(idle_api: Api) -> None:
    task_id = (await idle_api.submit(prompt="x")).json()["data"]["task_id"]
    other = await idle_api.runtime.store.accounts.create_key("other", 0)
    response = await idle_api.client.post(
        f"/v2/openapi/task/{task_id}/cancel", headers={"Authorization": f"Bearer {other}"}
    )
    assert_error(response, 404, 2001)
    assert (await idle_api.task(task_id))["status"] == "queued"


# -- idempotency ----------------------------------------------------------------------------


async def submit_with_key(api: Api, key: str, **body: Any) -> Any:
    return await api.client.post(
        "/v2/openapi/task",
        json={"type": "generate_image", **body},
        headers={"Idempotency-Key": key},
    )


async def test_a_repeated_idempotency_key_replays_the_first_task(idle_api: Api) -> None:
    first = await submit_with_key(idle_api, "order-1", prompt="a fox")
    again = await submit_with_key(idle_api, "order-1", prompt="a fox")
    assert first.status_code == again.status_code == 200
    assert first.json()["data"]["task_id"] == again.json()["data"]["task_id"]
    assert await task_count(idle_api) == 1
    assert await idle_api.balance() == {"balance": 95, "frozen": 5}
    other = await submit_with_key(idle_api, "order-2", prompt="a fox")
    assert other.json()["data"]["task_id"] != first.json()["data"]["task_id"]


async def test_an_idempotency_key_with_another_body_gets_409(idle_api: Api) -> None:
    await submit_with_key(idle_api, "order-1", prompt="a fox")
    response = await submit_with_key(idle_api, "order-1", prompt="a wolf")
    assert_error(response, 409, 1004)
    assert await task_count(idle_api) == 1


async def test_concurrent_duplicates_with_one_idempotency_key_make_one_task(
    idle_api: Api,
) -> None:
    answers = await asyncio.gather(
        *(submit_with_key(idle_api, "burst", prompt="same") for _ in range(8))
    )
    assert {a.json()["data"]["task_id"] for a in answers} == {answers[0].json()["data"]["task_id"]}
    assert await task_count(idle_api) == 1
    assert await idle_api.balance() == {"balance": 95, "frozen": 5}


async def test_an_idempotency_key_is_forgotten_after_24_hours(database_url: str) -> None:
    async with running_api(settings_for(database_url), run_worker=False) as idle_api:
        await _forgotten_after_24_hours(idle_api)


async def _forgotten_after_24_hours(idle_api: Api) -> None:
    first = (await submit_with_key(idle_api, "old", prompt="x")).json()["data"]["task_id"]
    async with engine_of(idle_api.runtime.store).begin() as conn:
        await conn.execute(update(idempotency_keys).values(created_at=time.time() - 86_401))
    second = (await submit_with_key(idle_api, "old", prompt="x")).json()["data"]["task_id"]
    assert second != first
    assert await task_count(idle_api) == 2


async def test_idempotency_keys_are_per_api_key(idle_api: Api) -> None:
    other = await idle_api.runtime.store.accounts.create_key("other", 50)
    mine = await submit_with_key(idle_api, "shared", prompt="x")
    theirs = await idle_api.client.post(
        "/v2/openapi/task",
        json={"type": "generate_image", "prompt": "x"},
        headers={"Idempotency-Key": "shared", "Authorization": f"Bearer {other}"},
    )
    assert theirs.json()["data"]["task_id"] != mine.json()["data"]["task_id"]


async def test_objects_made_at_startup_are_kept_out_of_garbage_collection(tmp_path: Any) -> None:
    """Full collections would walk everything made at startup, stalling every request."""
    gc.unfreeze()
    async with running_api(settings_for(f"sqlite+aiosqlite:///{tmp_path / 'g.db'}")):
        frozen = gc.get_freeze_count()
    gc.unfreeze()
    assert frozen > 50_000  # the app's modules, routes, schemas and statements
