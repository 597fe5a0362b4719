"""Bad images are user errors, not outages: an image whose header is valid but whose pixels do
not decode is refused where it enters (every upload route, an STS upload on first use, a
``url`` input), and one that cannot be read when its task runs fails the task at once, with
a clear code and a refund, never through the retry path kept for database outages.

On SQLite and PostgreSQL, with the placeholder backend (it decodes every reference, as a real
model does).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from obstore.store import MemoryStore
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from apptools import Api, State, account_state, engine_of, png, running_api, settings_for
from badimages import UNDECODABLE, garbage_idat_png
from easel.domain.errors import InvalidParameter
from easel.services.upload_tokens import inspect_arrived
from easel.storage.objects import ObjectStore
from easel.store.records import StoredFile
from easel.store.tables import files, ledger
from loopback import serve_app

CREDITS = 100
PRICE = 5  # flux.1_kontext_pro, the default model
# Short leases: were a bad input taken for an outage, its task would be re-queued and fail
# only after max_attempts lapsed leases ("the worker stopped responding").
PATIENT = {"lease_s": 1.0, "max_attempts": 3}
BAD = list(UNDECODABLE.items())
IDS = list(UNDECODABLE)


async def state(api: Api) -> State:
    caller = await api.runtime.store.accounts.authenticate(api.key)
    return await account_state(api.runtime, caller.account_id)


def assert_corrupt(response: httpx.Response, fmt: str) -> None:
    """400 / 1004 naming the image as corrupt, in the envelope of its API version."""
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["code"] == 1004, body
    assert f"is a truncated or corrupt {fmt} image" in body["message"]
    assert "cannot be decoded" in body["message"]
    assert "re-export" in body["suggestion"]


async def moves_of(api: Api, task_id: str) -> list[str]:
    async with engine_of(api.runtime.store).connect() as conn:
        rows = await conn.execute(
            select(ledger.c.kind).where(ledger.c.task_id == task_id).order_by(ledger.c.id)
        )
        return [kind for (kind,) in rows]


async def assert_failed_at_once(api: Api, task: dict[str, Any], code: int, says: str) -> None:
    """Failed on the first claim, with the input's error and a refund; no backend ran."""
    assert task["status"] == "failed", task
    assert (task["error_code"], task["consumed_credit"]) == (code, 0), task
    assert says in task["error_msg"], task
    assert "stopped responding" not in task["error_msg"]
    assert task["attempts"] == []  # refused before any backend was tried
    assert await moves_of(api, task["task_id"]) == ["hold", "refund"]
    assert await api.balance() == {"balance": CREDITS, "frozen": 0}


@pytest.fixture
async def idle_api(database_url: str) -> AsyncIterator[Api]:
    async with running_api(settings_for(database_url), run_worker=False, credits=CREDITS) as api:
        yield api


# -- at upload -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "bad"), BAD, ids=IDS)
@pytest.mark.parametrize("route", ["/v2/openapi/upload", "/v2/openapi/upload/sts", "/v3/files"])
async def test_an_undecodable_upload_is_refused_and_stores_nothing(
    idle_api: Api, route: str, name: str, bad: tuple[bytes, str]
) -> None:
    data, fmt = bad
    before = await state(idle_api)
    response = await idle_api.client.post(route, files={"file": (name, data, "image/png")})
    assert_corrupt(response, fmt)
    assert await state(idle_api) == before


@pytest.mark.parametrize(("name", "bad"), BAD, ids=IDS)
async def test_an_undecodable_presigned_upload_is_refused_and_its_token_stays_usable(
    idle_api: Api, name: str, bad: tuple[bytes, str]
) -> None:
    data, fmt = bad
    presigned = await idle_api.client.post("/v3/files/presign", json={"format": fmt.lower()})
    url = presigned.json()["data"]["presigned_url"]
    before = await state(idle_api)
    bare = httpx.AsyncClient(transport=idle_api.client._transport, base_url="http://testserver")
    async with bare:
        assert_corrupt(await bare.put(url, content=data), fmt)
        assert await state(idle_api) == before
        fixed = await bare.put(url, content=png(fmt=fmt))  # the same token, a good image
        assert fixed.status_code == 200, fixed.text


async def test_an_sts_upload_that_does_not_decode_is_refused_on_first_use() -> None:
    """The server reads an STS upload when a task first names it: a corrupt one is 1004."""
    objects = ObjectStore(MemoryStore(), "bucket", "prefix", scheme="s3")
    token = str(uuid.uuid4())
    pending = StoredFile(token, "account", f"uploads/account/{token}.png", "png", 0, 0, 0)
    await objects.put(pending.key, garbage_idat_png())
    with pytest.raises(InvalidParameter, match="image\\[1\\] is a truncated or corrupt PNG"):
        await inspect_arrived(objects, pending, "image[1]")


# -- when the task runs ----------------------------------------------------------------------------


@pytest.fixture
def image_host() -> Iterator[str]:
    """A loopback server of images: ``/good.png`` and ``/corrupt.png`` (a valid header over
    a garbage payload, served as image/png)."""

    async def good(request: Request) -> Response:
        return Response(png(40, 30, "blue"), media_type="image/png")

    async def corrupt(request: Request) -> Response:
        return Response(garbage_idat_png(), media_type="image/png")

    app = Starlette(routes=[Route("/good.png", good), Route("/corrupt.png", corrupt)])
    with serve_app(app) as base:
        yield base


async def test_a_url_input_that_does_not_decode_fails_the_task_at_once_with_a_refund(
    database_url: str, image_host: str
) -> None:
    settings = settings_for(database_url, allow_outbound_cidrs=["127.0.0.0/8"], **PATIENT)
    async with running_api(settings, credits=CREDITS) as api:
        response = await api.submit(prompt="x", file={"url": f"{image_host}/corrupt.png"})
        task = await api.wait(response.json()["data"]["task_id"], timeout_s=10)
        await assert_failed_at_once(api, task, 1004, "is a truncated or corrupt PNG image")
        good = await api.submit(prompt="x", file={"url": f"{image_host}/good.png"})
        assert (await api.wait(good.json()["data"]["task_id"]))["status"] == "success"


async def test_a_stored_input_that_no_longer_decodes_fails_the_task_at_once_with_a_refund(
    database_url: str,
) -> None:
    """An upload accepted before full decoding existed (or damaged in storage since): the
    worker decodes every input before a backend runs, and fails the task with 1004."""
    async with running_api(settings_for(database_url, **PATIENT), credits=CREDITS) as api:
        token = await api.upload(png())
        async with engine_of(api.runtime.store).connect() as conn:
            key = await conn.scalar(select(files.c.key).where(files.c.token == token))
        assert isinstance(key, str)
        await api.runtime.objects.put(key, garbage_idat_png())
        response = await api.submit(prompt="x", file={"type": "png", "file_token": token})
        task = await api.wait(response.json()["data"]["task_id"], timeout_s=10)
        await assert_failed_at_once(api, task, 1004, "image[1] is a truncated or corrupt PNG")
