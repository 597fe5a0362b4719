"""v3 image options: refused at submit (1004, accepted values listed, nothing charged or
stored) or honoured through a backend; v3's 1,800-character prompt; v2 stays lenient except
for the templates' documented aspect ratios. In process, on both database engines, with the
placeholder backend (it paints the shape asked for); the wire per provider is
``test_options_wire``."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from typing import Any

import pytest
from PIL import Image

from apptools import Api, running_api, settings_for
from easel.domain.catalog import CATALOG, ModelSpec
from easel.domain.errors import InvalidParameter
from easel.domain.options import CHAT_IMAGE_2_5, SEEDREAM, ImageOptions, task_options
from easel.domain.parsing import parse_generate_image


@pytest.fixture
async def api(database_url: str) -> AsyncIterator[Api]:
    async with running_api(settings_for(database_url)) as api:
        yield api


@pytest.fixture
async def idle_api(database_url: str) -> AsyncIterator[Api]:
    async with running_api(settings_for(database_url), run_worker=False) as api:
        yield api


async def output_of(api: Api, task_id: str) -> Image.Image:
    task = await api.wait(task_id)
    assert task["status"] == "success", task
    response = await api.client.get(task["output"]["generated_image"])
    assert response.status_code == 200
    image = Image.open(io.BytesIO(response.content))
    image.load()
    return image


async def v3(api: Api, route: str = "text-to-image", **body: Any) -> Any:
    return await api.client.post(f"/v3/generation/{route}", json={"prompt": "a fox", **body})


@pytest.mark.parametrize(
    ("body", "said", "accepted"),
    [
        ({"model": "banana", "quality": "high"}, "does not take quality", "Leave quality out"),
        ({"model": "chat_image_2", "aspect_ratio": "16:9"}, "does not take aspect_ratio", ""),
        ({"model": "banana", "aspect_ratio": "8:1"}, "aspect_ratio '8:1'", "21:9"),
        ({"model": "banana2", "aspect_ratio": "7:3"}, "aspect_ratio '7:3'", "1:8, 1:4, 4:1, 8:1"),
        ({"model": "chat_image_2", "quality": "max"}, "quality 'max'", "low, medium, high"),
        ({"model": "banana", "size": "2K"}, "size '2K'", "Use one of: 1K;"),
        ({"model": "banana_pro", "size": "1024x1024"}, "size '1024x1024'", "1K, 2K, 4K"),
        ({"model": "gpt_4o", "size": "1000x1000"}, "size '1000x1000'", "1536x1024"),
        ({"model": "chat_image_2", "size": "3840x3840"}, "size '3840x3840'", "multiples of 16"),
        ({"model": "chat_image_2", "background": "transparent"}, "background", "auto, opaque"),
        ({"model": "chat_image_2", "watermark": True}, "take watermark true.", "false"),
        ({"model": "banana", "output_format": "webp"}, "output_format 'webp'", "png, jpeg"),
        ({"model": "banana", "negative_prompt": "fog"}, "does not take negative_prompt", "flux"),
        ({"model": "flux.1_dev", "size": "2000x1000"}, "size", "1440"),
        ({"quality": "high"}, "flux.1_kontext_pro does not take quality", ""),  # the default
        ({"size": 7}, "size must be a non-empty string", ""),
        ({"watermark": "no"}, "watermark must be true or false, not 'no'", ""),
        ({"size": False}, "size must be a non-empty string, not false", ""),
        ({"prompt": "p" * 1801}, "the limit is 1800", ""),
    ],
)
async def test_an_option_the_model_cannot_take_is_1004_before_any_cost(
    idle_api: Api, body: dict[str, Any], said: str, accepted: str
) -> None:
    before = await idle_api.balance()
    response = await v3(idle_api, **body)
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["code"] == 1004
    assert said in error["message"]
    assert accepted in error["suggestion"]
    assert await idle_api.balance() == before
    caller = await idle_api.runtime.store.accounts.authenticate(idle_api.key)
    assert await idle_api.runtime.store.tasks.recent(caller.key_id, 10) == []


async def test_a_v3_16_9_request_paints_a_wide_image_and_encodes_the_format_asked(
    api: Api,
) -> None:
    response = await v3(
        api, model="banana", aspect_ratio="16:9", output_format="jpg", prompt="p" * 1800
    )
    assert response.status_code == 200, response.text
    task_id = response.json()["data"]["task_id"]
    image = await output_of(api, task_id)
    assert image.format == "JPEG"
    assert image.size == (680, 384)  # the placeholder's 512x512 area at 16:9
    task = await api.task(task_id)
    assert task["input"]["aspect_ratio"] == "16:9"
    assert task["input"]["output_format"] == "jpeg"


async def test_v3_size_and_negative_prompt_are_kept_with_the_task(api: Api) -> None:
    response = await v3(api, model="midjourney", size="768x256", negative_prompt="fog")
    assert response.status_code == 200, response.text
    task_id = response.json()["data"]["task_id"]
    assert (await output_of(api, task_id)).size == (768, 256)
    stored = await api.runtime.store.tasks.get(task_id)
    assert stored is not None
    assert (stored.input["size"], stored.input["negative_prompt"]) == ("768x256", "fog")
    assert task_options(stored.input) == ImageOptions(size="768x256")


@pytest.mark.parametrize(
    ("template", "size"),
    [("asset_extraction", (680, 384)), ("t_pose", (512, 512)), ("3d_enhance", (512, 512))],
)
async def test_v2_templates_get_their_documented_aspect_ratio(
    api: Api, template: str, size: tuple[int, int]
) -> None:
    response = await api.submit(prompt="a scene", template=template, model_version="gpt_4o")
    assert response.status_code == 200, response.text
    assert (await output_of(api, response.json()["data"]["task_id"])).size == size


async def test_v2_stays_lenient_about_v3_options_and_keeps_1024_characters(api: Api) -> None:
    response = await api.submit(prompt="a fox", aspect_ratio="16:9", quality="max", size="9K")
    assert response.status_code == 200, response.text
    task_id = response.json()["data"]["task_id"]
    assert (await output_of(api, task_id)).size == (512, 512)
    assert "aspect_ratio" not in (await api.task(task_id))["input"]
    too_long = await api.submit(prompt="p" * 1025)
    assert too_long.status_code == 400 and "the limit is 1024" in too_long.json()["message"]


def test_an_explicit_shape_wins_over_the_template_ratio() -> None:
    stored = {"template": "asset_extraction", "size": "1024x1024"}
    assert task_options(stored) == ImageOptions(size="1024x1024")
    assert task_options({"template": "asset_extraction"}).aspect_ratio == "16:9"
    assert task_options({"template": "asset_extraction", "aspect_ratio": "1:1"}).ratio == 1.0


def test_a_new_model_takes_its_preset_in_one_line() -> None:
    """The 2.5 chat models and Seedream (entries added elsewhere) take their rules from one
    preset: transparent needs PNG, xhigh is theirs, watermark is Seedream's."""
    catalog = CATALOG.with_model(
        ModelSpec("chat_image_2.5_x", 10, "2.5", image_options=CHAT_IMAGE_2_5)
    ).with_model(ModelSpec("seedream_x", 5, "Seedream", image_options=SEEDREAM))

    def parse(**body: Any) -> ImageOptions:
        body = {"type": "generate_image", "prompt": "a cat", **body}
        return parse_generate_image(body, catalog, v3=True).options

    assert parse(model_version="chat_image_2.5_x", quality="xhigh", background="transparent") == (
        ImageOptions(quality="xhigh", background="transparent")
    )
    with pytest.raises(InvalidParameter, match="needs output_format 'png'"):
        parse(model_version="chat_image_2.5_x", background="transparent", output_format="jpeg")
    assert parse(model_version="seedream_x", watermark=True, size="4096x2304").watermark is True
    with pytest.raises(InvalidParameter, match="does not take aspect_ratio"):
        parse(model_version="seedream_x", aspect_ratio="16:9")
