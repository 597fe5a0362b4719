"""The v2 ``text_to_image`` task type ("Basic text to image"): accepted on the same route,
queue, credits and backends as ``generate_image``, with its own rules (prompt ≤ 1024,
negative_prompt ≤ 255, an optional ``style_image`` File), Tripo's flat 5 credits, the
configured ``text_to_image_model``, ``output.generated_image``, and ``text_to_image`` in v3.

A real app (SQLite and PostgreSQL) with the placeholder backend; the style image by url
comes from a loopback image host.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from apptools import Api, account_state, png, running_api, settings_for
from easel.domain.catalog import CATALOG
from loopback import serve_app

CREDITS = 100
PRICE = 5  # Tripo's text_to_image price, whatever model runs it


async def submit(api: Api, **body: Any) -> httpx.Response:
    return await api.client.post("/v2/openapi/task", json={"type": "text_to_image", **body})


async def submitted(api: Api, **body: Any) -> str:
    response = await submit(api, **body)
    assert response.status_code == 200, response.text
    task_id: str = response.json()["data"]["task_id"]
    return task_id


async def test_a_text_to_image_task_completes_charged_once_on_the_default_model(
    database_url: str,
) -> None:
    async with running_api(settings_for(database_url), credits=CREDITS) as api:
        task_id = await submitted(api, prompt="a lighthouse at dusk", negative_prompt="people")
        task = await api.wait(task_id)
        assert task["status"] == "success", task
        assert task["type"] == "text_to_image"
        assert task["consumed_credit"] == PRICE
        assert task["input"] == {
            "prompt": "a lighthouse at dusk",
            "negative_prompt": "people",
            "model_version": CATALOG.default,
        }
        image = await api.client.get(task["output"]["generated_image"])
        assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
        assert await api.balance() == {"balance": CREDITS - PRICE, "frozen": 0}
        stored = await api.runtime.store.tasks.get(task_id)
        assert stored is not None and stored.prompt == "a lighthouse at dusk"


async def test_it_runs_on_the_configured_model_at_the_flat_price(database_url: str) -> None:
    settings = settings_for(database_url, text_to_image_model="gpt_image_2")  # a 10-credit model
    async with running_api(settings, credits=CREDITS) as api:
        task = await api.wait(await submitted(api, prompt="a cat", model_version="junk"))
        assert task["status"] == "success", task
        assert task["input"]["model_version"] == "gpt_image_2"
        assert task["consumed_credit"] == PRICE
        assert await api.balance() == {"balance": CREDITS - PRICE, "frozen": 0}
        listed = (await api.client.get("/v2/openapi/models")).json()["data"]
        assert listed["text_to_image"] == {"model_version": "gpt_image_2", "credits": PRICE}


def test_an_unknown_text_to_image_model_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="unknown model_version 'nope'"):
        settings_for("sqlite+aiosqlite:///unused.db", text_to_image_model="nope")


REFUSALS = {
    "no prompt": ({}, 1004, "prompt is required"),
    "blank prompt": ({"prompt": "  "}, 1004, "prompt is required"),
    "prompt not a string": ({"prompt": 3}, 1004, "prompt is required"),
    "prompt too long": ({"prompt": "a" * 1025}, 1004, "the limit is 1024"),
    "emoji in prompt": ({"prompt": "a cat 🐱"}, 2009, "prompt contains a character"),
    "negative not a string": ({"prompt": "x", "negative_prompt": 1}, 1004, "must be a string"),
    "negative too long": (
        {"prompt": "x", "negative_prompt": "n" * 256},
        1004,
        "negative_prompt is 256 characters long; the limit is 255",
    ),
    "emoji in negative": (
        {"prompt": "x", "negative_prompt": "🐱"},
        2009,
        "negative_prompt contains a character",
    ),
    "style_image not a File": ({"prompt": "x", "style_image": "a.png"}, 1004, "style_image must"),
    "style_image two sources": (
        {"prompt": "x", "style_image": {"url": "https://a.example/a.png", "file_token": "t"}},
        1004,
        "exactly one of",
    ),
    "style_image unknown token": (
        {"prompt": "x", "style_image": {"type": "png", "file_token": "no-such-token"}},
        2019,
        "",
    ),
}


@pytest.mark.parametrize(("body", "code", "says"), REFUSALS.values(), ids=list(REFUSALS))
async def test_each_bad_text_to_image_body_is_refused_with_its_code_at_no_cost(
    database_url: str, body: dict[str, Any], code: int, says: str
) -> None:
    async with running_api(settings_for(database_url), run_worker=False, credits=CREDITS) as api:
        caller = await api.runtime.store.accounts.authenticate(api.key)
        before = await account_state(api.runtime, caller.account_id)
        response = await submit(api, **body)
        assert 400 <= response.status_code < 500, response.text
        refusal = response.json()
        assert refusal["code"] == code, refusal
        assert says in refusal["message"], refusal
        assert refusal["suggestion"], refusal
        assert await account_state(api.runtime, caller.account_id) == before


async def test_an_unknown_task_type_names_both_types_served(database_url: str) -> None:
    async with running_api(settings_for(database_url), run_worker=False) as api:
        response = await api.client.post("/v2/openapi/task", json={"type": "text_to_model"})
        assert response.status_code == 400
        assert response.json()["code"] == 2002
        assert "text_to_image" in response.json()["suggestion"]


async def test_an_uploaded_style_image_is_resolved_and_used_as_image_1(
    database_url: str,
) -> None:
    async with running_api(settings_for(database_url), credits=CREDITS) as api:
        token = await api.upload(png(color="blue"))
        style = {"type": "png", "file_token": token}
        task_id = await submitted(api, prompt="a fox", style_image=style)
        task = await api.wait(task_id)
        assert task["status"] == "success", task
        assert task["input"]["style_image"] == style
        assert task["consumed_credit"] == PRICE
        stored = await api.runtime.store.tasks.get(task_id)
        assert stored is not None
        assert [ref.source for ref in stored.refs] == ["object"]
        assert stored.prompt == "a fox\n\nRender it in the style of image[1]."

        v3 = await api.client.get(f"/v3/tasks/{task_id}")
        assert v3.status_code == 200, v3.text
        assert v3.json()["data"]["type"] == "text_to_image"  # not image_to_image


def _image_host_app() -> Starlette:
    async def good(request: Request) -> Response:
        return Response(png(color="green"), media_type="image/png")

    return Starlette(routes=[Route("/style.png", good)])


@pytest.fixture(scope="module")
def image_host() -> Iterator[str]:
    with serve_app(_image_host_app()) as base:
        yield base


async def test_a_style_image_url_is_fetched_from_its_host(
    database_url: str, image_host: str
) -> None:
    settings = settings_for(database_url, allow_outbound_cidrs=["127.0.0.0/8"])
    async with running_api(settings, credits=CREDITS) as api:
        url = f"{image_host}/style.png"
        task = await api.wait(await submitted(api, prompt="a fox", style_image={"url": url}))
        assert task["status"] == "success", task
        assert task["input"]["style_image"] == {"url": url}


async def test_a_style_image_on_a_model_that_refuses_images_is_refused(
    database_url: str,
) -> None:
    settings = settings_for(database_url, text_to_image_model="midjourney")
    async with running_api(settings, run_worker=False, credits=CREDITS) as api:
        response = await submit(
            api, prompt="x", style_image={"url": "https://images.example/a.png"}
        )
        assert response.status_code == 400
        assert response.json()["code"] == 1004
        assert "midjourney cannot use image input" in response.json()["message"]
        assert await api.balance() == {"balance": CREDITS, "frozen": 0}
