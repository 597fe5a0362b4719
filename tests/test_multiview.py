"""Multiview image tasks: v2 ``generate_multiview_image`` / ``edit_multiview_image`` and v3
``/generation/image-to-multiview`` / ``/generation/edit-multiview``.

A real app (SQLite and PostgreSQL): the placeholder backend shows the protocol's shapes (four
signed view URLs, prices, types, v3 output), the ``openai`` backend over a loopback server
speaking the OpenAI Images API shows one edit request per view with its view prompt and the
one reference. Cancelling between views and a view that fails both end the task with a full
refund and no stored view; every bad request is refused with its code at no cost.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from apptools import Api, account_state, png, running_api, settings_for
from easel.domain.catalog import CATALOG
from easel.domain.multiview import edit_prompt, view_prompt, view_seed
from easel.services.janitor import Janitor
from fake_providers import (
    BFL_KEY,
    BFL_READY,
    OPENAI_KEY,
    FakeBfl,
    FakeOpenAI,
    openai_error,
    openai_image,
)
from fakes import image_bytes
from loopback import serve_app

CREDITS = 100
GENERATE_PRICE, EDIT_PRICE = 10, 5  # Tripo's: 10 per multiview task, 5 per edited view
VIEWS = ("front", "left", "back", "right")
KEY_ENV = "EASEL_TEST_MULTIVIEW_OPENAI_KEY"


async def submit(api: Api, task_type: str, **body: Any) -> httpx.Response:
    return await api.client.post("/v2/openapi/task", json={"type": task_type, **body})


async def submitted(api: Api, task_type: str, **body: Any) -> str:
    response = await submit(api, task_type, **body)
    assert response.status_code == 200, response.text
    task_id: str = response.json()["data"]["task_id"]
    return task_id


async def generate(api: Api, color: str = "blue", **body: Any) -> str:
    token = await api.upload(png(color=color))
    return await submitted(
        api, "generate_multiview_image", file={"type": "png", "file_token": token}, **body
    )


async def view_bytes(api: Api, task: dict[str, Any]) -> dict[str, bytes]:
    urls = task["output"]["generate_multiview_image"]
    assert set(urls) == {f"{view}_view_url" for view in VIEWS}, urls
    out = {}
    for view in VIEWS:
        response = await api.client.get(urls[f"{view}_view_url"])
        assert response.status_code == 200, response.text
        out[view] = response.content
    return out


async def test_generate_makes_four_signed_views_for_ten_credits(database_url: str) -> None:
    async with running_api(settings_for(database_url), credits=CREDITS) as api:
        task_id = await generate(api, prompt="a toy robot")
        task = await api.wait(task_id)
        assert task["status"] == "success", task
        assert task["type"] == "generate_multiview_image"
        assert task["consumed_credit"] == GENERATE_PRICE
        assert task["input"]["prompt"] == "a toy robot"
        assert task["input"]["model_version"] == CATALOG.default
        assert [a["outcome"] for a in task["attempts"]] == ["success"] * 4
        views = await view_bytes(api, task)
        assert all(data.startswith(b"\x89PNG") for data in views.values())
        assert len(set(views.values())) == 4  # each view had its own prompt
        for view in VIEWS:
            url = task["output"]["generate_multiview_image"][f"{view}_view_url"]
            assert f"/outputs/{task_id}/{view}.png?" in url and "signature=" in url
        assert await api.balance() == {"balance": CREDITS - GENERATE_PRICE, "frozen": 0}

        v3 = (await api.client.get(f"/v3/tasks/{task_id}")).json()["data"]
        assert v3["type"] == "generate_multiview_image"
        assert v3["credits_consumed"] == float(GENERATE_PRICE)
        nested = v3["output"]["generate_multiview_image"]
        assert set(nested) == {f"{view}_view_url" for view in VIEWS}
        assert {k: v3["output"][k] for k in nested} == nested  # flat too (the Rust SDK's)


async def test_edit_regenerates_the_named_views_and_copies_the_others(database_url: str) -> None:
    async with running_api(settings_for(database_url), credits=CREDITS) as api:
        original = await api.wait(await generate(api))
        before = await view_bytes(api, original)
        prompts = [
            {"view": "back", "prompt": "add a small backpack"},
            {"view": "left", "prompt": "paint the arm red"},
        ]
        edit_id = await submitted(
            api, "edit_multiview_image", original_task_id=original["task_id"], prompts=prompts
        )
        edited = await api.wait(edit_id)
        assert edited["status"] == "success", edited
        assert edited["type"] == "edit_multiview_image"
        assert edited["consumed_credit"] == 2 * EDIT_PRICE
        assert edited["input"]["prompts"] == prompts
        assert edited["input"]["original_task_id"] == original["task_id"]
        assert len(edited["attempts"]) == 2  # the copied views run nothing
        after = await view_bytes(api, edited)
        assert after["front"] == before["front"] and after["right"] == before["right"]
        assert after["back"] != before["back"] and after["left"] != before["left"]
        spent = GENERATE_PRICE + 2 * EDIT_PRICE
        assert await api.balance() == {"balance": CREDITS - spent, "frozen": 0}

        # An edit of an edit works too (the SDKs allow either as the original).
        again = await submitted(
            api,
            "edit_multiview_image",
            original_task_id=edit_id,
            prompts=[{"view": "front", "prompt": "add a hat"}],
        )
        assert (await api.wait(again))["status"] == "success"


async def test_v3_routes_submit_the_same_tasks(database_url: str) -> None:
    async with running_api(settings_for(database_url), credits=CREDITS) as api:
        upload = await api.client.post(
            "/v3/files", files={"file": ("a.png", png(color="green"), "image/png")}
        )
        token = upload.json()["data"]["file_token"]
        created = await api.client.post("/v3/generation/image-to-multiview", json={"input": token})
        assert created.status_code == 200, created.text
        task_id = created.json()["data"]["task_id"]
        assert (await api.wait(task_id))["status"] == "success"

        edit = await api.client.post(
            "/v3/generation/edit-multiview",
            json={"input": task_id, "prompts": [{"prompt": "make it gold", "view": "right"}]},
        )
        assert edit.status_code == 200, edit.text
        edit_id = edit.json()["data"]["task_id"]
        assert (await api.wait(edit_id))["status"] == "success"
        v3 = (await api.client.get(f"/v3/tasks/{edit_id}")).json()["data"]
        assert v3["type"] == "edit_multiview_image"
        assert v3["status"] == "success" and v3["credits_consumed"] == float(EDIT_PRICE)
        assert (
            v3["output"]["right_view_url"]
            == v3["output"]["generate_multiview_image"]["right_view_url"]
        )


def _refusals() -> dict[str, tuple[str, dict[str, Any], int, str]]:
    file = {"type": "png", "url": "https://images.example/a.png"}
    one = [{"view": "left", "prompt": "x"}]
    gen, edit = "generate_multiview_image", "edit_multiview_image"
    return {
        "no image": (gen, {}, 1004, "needs the image of the subject"),
        "two images": (gen, {"files": [file, file]}, 1004, "exactly one image; this request has 2"),
        "file and files": (gen, {"file": file, "files": [file]}, 1004, "has 2"),
        "file not a File": (gen, {"file": "a.png"}, 1004, "file must be an object"),
        "prompt not a string": (gen, {"file": file, "prompt": 3}, 1004, "prompt must be"),
        "unknown token": (gen, {"file": {"file_token": "nope"}}, 2019, "does not name a file"),
        "no original": (edit, {"prompts": one}, 1004, "original_task_id is required"),
        "no prompts": (edit, {"original_task_id": "t"}, 1004, "1 to 4 view prompts"),
        "empty prompts": (edit, {"original_task_id": "t", "prompts": []}, 1004, "got 0 prompts"),
        "five prompts": (
            edit,
            {"original_task_id": "t", "prompts": one * 5},
            1004,
            "got 5 prompts",
        ),
        "bad view": (
            edit,
            {"original_task_id": "t", "prompts": [{"view": "top", "prompt": "x"}]},
            1004,
            "view must be one of front, left, back, right",
        ),
        "view twice": (edit, {"original_task_id": "t", "prompts": one * 2}, 1004, "named twice"),
        "blank prompt": (
            edit,
            {"original_task_id": "t", "prompts": [{"view": "left", "prompt": " "}]},
            1004,
            "prompt must be a non-empty string",
        ),
        "prompt too long": (
            edit,
            {"original_task_id": "t", "prompts": [{"view": "left", "prompt": "a" * 1025}]},
            1004,
            "the limit is 1024",
        ),
        "unknown original": (edit, {"original_task_id": "t", "prompts": one}, 2001, "no task"),
    }


REFUSALS = _refusals()


async def _refused(api: Api, send: Any, code: int, says: str) -> None:
    caller = await api.runtime.store.accounts.authenticate(api.key)
    before = await account_state(api.runtime, caller.account_id)
    response = await send()
    assert 400 <= response.status_code < 500, response.text
    refusal = response.json()
    assert (refusal["code"], says in refusal["message"]) == (code, True), refusal
    assert refusal["suggestion"], refusal
    assert await account_state(api.runtime, caller.account_id) == before


@pytest.mark.parametrize(("kind", "body", "code", "says"), REFUSALS.values(), ids=list(REFUSALS))
async def test_each_bad_multiview_body_is_refused_with_its_code_at_no_cost(
    database_url: str, kind: str, body: dict[str, Any], code: int, says: str
) -> None:
    async with running_api(settings_for(database_url), run_worker=False, credits=CREDITS) as api:
        await _refused(api, lambda: submit(api, kind, **body), code, says)


async def test_an_edit_needs_a_finished_multiview_task_of_the_same_key(database_url: str) -> None:
    async with running_api(settings_for(database_url), credits=CREDITS) as api:
        one = [{"view": "back", "prompt": "x"}]
        image = await api.submit(prompt="a fox")
        image_id = image.json()["data"]["task_id"]
        await api.wait(image_id)
        mine = await api.wait(await generate(api))
        other_key = await api.runtime.store.accounts.create_key("other", CREDITS)

        async def edit_of(task_id: str, key: str = api.key) -> httpx.Response:
            return await api.client.post(
                "/v2/openapi/task",
                json={"type": "edit_multiview_image", "original_task_id": task_id, "prompts": one},
                headers={"Authorization": f"Bearer {key}"},
            )

        await _refused(api, lambda: edit_of(image_id), 1004, "is a generate_image task")
        # Another key's (even the same account's) task is not found, as on Tripo.
        api_other = Api(api.client, api.runtime, other_key)
        await _refused(api_other, lambda: edit_of(mine["task_id"], other_key), 2001, "no task")

    slow = settings_for(database_url, placeholder={"delay_s": 5})
    async with running_api(slow, credits=CREDITS) as api:
        running = await generate(api)
        await api.wait(running, until=("running",))
        await _refused(
            api,
            lambda: submit(api, "edit_multiview_image", original_task_id=running, prompts=one),
            1004,
            "is running, not success",
        )
        await api.client.post(f"/v2/openapi/task/{running}/cancel")


async def test_v3_edit_takes_only_a_task_id(database_url: str) -> None:
    async with running_api(settings_for(database_url), run_worker=False, credits=CREDITS) as api:
        prompts = [{"view": "back", "prompt": "x"}]
        for bad in ({"file_token": "abc"}, {"url": "https://a.example/a.png"}, None):
            body = {"input": bad, "prompts": prompts}
            await _refused(
                api,
                lambda body=body: api.client.post("/v3/generation/edit-multiview", json=body),
                1004,
                "task_id of a finished multiview task",
            )
        await _refused(
            api,
            lambda: api.client.post("/v3/generation/image-to-multiview", json={"inputs": ["a"]}),
            1004,
            "exactly one image",
        )


async def test_cancelling_between_views_refunds_in_full_and_keeps_no_view(
    database_url: str,
) -> None:
    # Each view takes 1 s; the heartbeat (every 0.3 s) stores progress and sees the cancel.
    settings = settings_for(database_url, lease_s=0.9, placeholder={"delay_s": 1.0})
    async with running_api(settings, credits=CREDITS) as api:
        task_id = await generate(api)
        for _ in range(400):  # until the front view is done (20 s at most)
            if (await api.task(task_id))["progress"] >= 25:
                break
            await asyncio.sleep(0.05)
        await api.client.post(f"/v2/openapi/task/{task_id}/cancel")
        task = await api.wait(task_id)
        assert task["status"] == "cancelled", task
        assert task["output"] == {} and task["consumed_credit"] == 0
        outcomes = [a["outcome"] for a in task["attempts"]]
        assert outcomes[0] == "success" and outcomes[-1] in ("cancelled", "success"), outcomes
        assert len(outcomes) < 4, outcomes
        assert await api.balance() == {"balance": CREDITS, "frozen": 0}
        for view in VIEWS:
            assert not await api.runtime.objects.exists(f"outputs/{task_id}/{view}.png")


# --- the openai backend over its loopback server ----------------------------------------------


@pytest.fixture
def fake() -> FakeOpenAI:
    return FakeOpenAI()


@pytest.fixture
def openai_url(fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv(KEY_ENV, OPENAI_KEY)
    with serve_app(fake.app()) as url:
        yield url + "/v1"


def openai_settings(database_url: str, openai_url: str) -> Any:
    """Multiview on gpt_image_2, served by one ``openai`` backend at the loopback server."""
    backend = {"kind": "openai", "base_url": openai_url, "api_key_env": KEY_ENV}
    return settings_for(
        database_url,
        backends={"oa": backend},
        models={"gpt_image_2": {"backends": ["oa"]}},
        multiview_model="gpt_image_2",
    )


async def test_each_view_is_one_openai_edit_of_the_reference_with_its_view_prompt(
    database_url: str, openai_url: str, fake: FakeOpenAI
) -> None:
    reference = png(color="purple")
    fake.script = [openai_image(image_bytes("PNG", (i, i, i))) for i in range(4)]
    async with running_api(openai_settings(database_url, openai_url), credits=CREDITS) as api:
        token = await api.upload(reference)
        task_id = await submitted(
            api, "generate_multiview_image", file={"file_token": token}, prompt="a teapot"
        )
        task = await api.wait(task_id)
        assert task["status"] == "success", task
        assert task["consumed_credit"] == GENERATE_PRICE  # Tripo's price, not the model's
        assert [seen.path for seen in fake.seen] == ["/v1/images/edits"] * 4
        assert [seen.fields["prompt"] for seen in fake.seen] == [
            view_prompt(view, "a teapot") for view in VIEWS
        ]
        assert all(seen.fields["model"] == "gpt-image-2" for seen in fake.seen)
        assert [[data for _, _, data in seen.files] for seen in fake.seen] == [[reference]] * 4
        views = await view_bytes(api, task)
        assert [views[view] for view in VIEWS] == [image_bytes("PNG", (i, i, i)) for i in range(4)]

        fake.seen.clear()
        edit_id = await submitted(
            api,
            "edit_multiview_image",
            original_task_id=task_id,
            prompts=[{"view": "right", "prompt": "a chipped spout"}],
        )
        assert (await api.wait(edit_id))["status"] == "success"
        [seen] = fake.seen
        assert seen.fields["prompt"] == edit_prompt("right", "a chipped spout")
        assert [data for _, _, data in seen.files] == [views["right"]]


async def test_a_view_that_fails_fails_the_task_with_a_full_refund_and_no_view_kept(
    database_url: str, openai_url: str, fake: FakeOpenAI
) -> None:
    refused = openai_error(400, "Invalid image size.", "invalid_value")
    fake.script = [openai_image(), openai_image(), refused]
    async with running_api(openai_settings(database_url, openai_url), credits=CREDITS) as api:
        task_id = await generate(api)
        task = await api.wait(task_id)
        assert task["status"] == "failed", task
        assert task["error_code"] == 1001
        assert "the back view (view 3 of 4) failed" in task["error_msg"], task
        assert "Invalid image size." in task["error_msg"]
        assert task["output"] == {} and task["consumed_credit"] == 0
        assert [a["outcome"] for a in task["attempts"]] == ["success", "success", "failed"]
        assert len(fake.seen) == 3  # the fourth view never ran
        assert await api.balance() == {"balance": CREDITS, "frozen": 0}
        for view in VIEWS:
            assert not await api.runtime.objects.exists(f"outputs/{task_id}/{view}.png")


async def test_every_view_of_a_task_is_sent_with_the_same_seed_to_a_kind_that_takes_one(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BFL's Kontext endpoint takes ``seed``: the four views carry the task's one seed."""
    monkeypatch.setenv(KEY_ENV, BFL_KEY)
    fake = FakeBfl(statuses=[BFL_READY])
    with serve_app(fake.app()) as url:
        backend = {"kind": "bfl", "base_url": url, "api_key_env": KEY_ENV}
        settings = settings_for(
            database_url, backends={"bfl": backend}, models={CATALOG.default: {"backends": ["bfl"]}}
        )
        async with running_api(settings, credits=CREDITS) as api:
            task_id = await generate(api)
            assert (await api.wait(task_id, timeout_s=30))["status"] == "success"
    assert [endpoint for endpoint, _ in fake.submits] == ["flux-kontext-pro"] * 4
    assert [body["seed"] for _, body in fake.submits] == [view_seed(task_id)] * 4
    assert 0 <= view_seed(task_id) < 2**31
    assert [body["prompt"] for _, body in fake.submits] == [view_prompt(v) for v in VIEWS]


async def test_the_janitor_deletes_all_four_views_and_an_edit_then_says_so(
    database_url: str,
) -> None:
    async with running_api(settings_for(database_url), credits=CREDITS) as api:
        task = await api.wait(await generate(api))
        keys = [f"outputs/{task['task_id']}/{view}.png" for view in VIEWS]
        assert all([await api.runtime.objects.exists(key) for key in keys])
        janitor_settings = api.runtime.settings.model_copy(update={"output_retention_s": 0})
        janitor = Janitor(api.runtime.store, api.runtime.objects, janitor_settings)
        assert (await janitor.sweep())[1] == 1
        assert not any([await api.runtime.objects.exists(key) for key in keys])
        after = await api.task(task["task_id"])
        assert after["output"] == {} and "output_deleted_at" in after
        one = [{"view": "back", "prompt": "x"}]
        await _refused(
            api,
            lambda: submit(
                api, "edit_multiview_image", original_task_id=task["task_id"], prompts=one
            ),
            2019,
            "passed their retention time",
        )
