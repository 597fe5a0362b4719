"""``POST /v3/generation/text-to-image`` makes a ``text_to_image`` task: v2's type, read as
``text_to_image`` through both versions, with v3's ``model`` (which then sets the price),
``template`` (which makes ``prompt`` optional) and ``negative_prompt``."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from apptools import Api, running_api, settings_for
from easel.domain import templates
from easel.domain.catalog import CATALOG, TEXT_TO_IMAGE_CREDITS
from test_v3 import key_id, v3_error, v3_submit, v3_task

CREDITS = 100


@pytest.fixture
async def idle_api(database_url: str) -> AsyncIterator[Api]:
    # a 10-credit model that takes a negative prompt: the flat price is not its price
    settings = settings_for(database_url, text_to_image_model="midjourney")
    async with running_api(settings, run_worker=False, credits=CREDITS) as api:
        yield api


async def test_without_a_model_it_is_v2s_text_to_image(idle_api: Api) -> None:
    task_id = await v3_submit(
        idle_api, "text-to-image", prompt="a lighthouse at dusk", negative_prompt="people"
    )
    v2 = await idle_api.task(task_id)
    assert v2["type"] == "text_to_image"
    assert v2["input"] == {
        "prompt": "a lighthouse at dusk",
        "negative_prompt": "people",  # what the worker hands the backend
        "model_version": "midjourney",  # the server's text_to_image_model
    }
    assert (await v3_task(idle_api, task_id))["type"] == "text_to_image"
    assert await idle_api.balance() == {
        "balance": CREDITS - TEXT_TO_IMAGE_CREDITS,
        "frozen": TEXT_TO_IMAGE_CREDITS,
    }


@pytest.mark.parametrize("model", ["banana_pro", "gemini_3_pro_image_preview", "chat_image_2"])
async def test_a_model_given_runs_it_at_its_price(idle_api: Api, model: str) -> None:
    task_id = await v3_submit(idle_api, "text-to-image", prompt="a cat", model=model)
    spec = CATALOG.named(model)
    assert spec is not None and spec.credits != TEXT_TO_IMAGE_CREDITS
    task = await v3_task(idle_api, task_id)
    assert (task["type"], task["model"]) == ("text_to_image", spec.version)
    stored = await idle_api.runtime.store.tasks.get(task_id)
    assert stored is not None and stored.type == "text_to_image"
    assert stored.model_version == spec.version
    assert await idle_api.balance() == {"balance": CREDITS - spec.credits, "frozen": spec.credits}


async def test_a_template_makes_the_prompt_optional(idle_api: Api) -> None:
    task_id = await v3_submit(idle_api, "text-to-image", template="asset_extraction")
    stored = await idle_api.runtime.store.tasks.get(task_id)
    assert stored is not None and stored.type == "text_to_image"
    assert stored.prompt == templates.lookup("asset_extraction").prompt
    assert stored.input["template"] == "asset_extraction"
    with_prompt = await v3_submit(
        idle_api, "text-to-image", template="figure", prompt="a knight", t_pose=True
    )
    stored = await idle_api.runtime.store.tasks.get(with_prompt)
    assert stored is not None
    assert stored.prompt.startswith(templates.lookup("figure").prompt)
    assert "a knight" in stored.prompt and "T-pose" in stored.prompt
    assert stored.input["t_pose"] is True


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"prompt": "x", "negative_prompt": "n" * 256}, 1004),
        ({"prompt": "x", "negative_prompt": 7}, 1004),
        ({"negative_prompt": "people"}, 1004),  # no prompt and no template
        ({"prompt": "x", "model": "no_such_model"}, 2017),
        ({"prompt": "x", "negative_prompt": "people", "model": "chat_image_2"}, 1004),
    ],
)
async def test_bad_text_to_image_requests_cost_nothing(
    idle_api: Api, body: dict[str, object], code: int
) -> None:
    response = await idle_api.client.post("/v3/generation/text-to-image", json=body)
    v3_error(response, 400, code)
    assert await idle_api.balance() == {"balance": CREDITS, "frozen": 0}
    assert await idle_api.runtime.store.tasks.recent(await key_id(idle_api), 10) == []


async def test_it_runs_and_its_image_feeds_an_image_to_image_task(database_url: str) -> None:
    async with running_api(settings_for(database_url)) as api:
        task_id = await v3_submit(api, "text-to-image", prompt="a red fox", negative_prompt="snow")
        task = await api.wait(task_id)
        assert (task["status"], task["type"]) == ("success", "text_to_image")
        seen = await v3_task(api, task_id)
        assert seen["output"]["generated_image_url"].startswith("http")
        assert seen["credits_consumed"] == float(TEXT_TO_IMAGE_CREDITS)
        edit = await v3_submit(api, "image-to-image", prompt="paint it", input=task_id)
        assert (await api.wait(edit))["type"] == "generate_image"
        assert (await v3_task(api, edit))["type"] == "image_to_image"
