"""Expiry of tasks that wait too long, and deletion of outputs past their retention."""

from __future__ import annotations

import asyncio

import pytest

from apptools import running_api, settings_for
from easel.storage import ObjectNotFound


async def test_a_task_queued_too_long_expires_with_a_refund(database_url: str) -> None:
    settings = settings_for(database_url, queue_timeout_s=0.2)
    async with running_api(settings, run_worker=False) as api:
        task_id = (await api.submit(prompt="x")).json()["data"]["task_id"]
        janitor = api.runtime.janitor()
        assert await janitor.sweep() == (0, 0)  # not yet
        await asyncio.sleep(0.3)
        assert await janitor.sweep() == (1, 0)
        task = await api.task(task_id)
        assert task["status"] == "expired"
        assert task["error_code"] == 1001
        assert "waited more than" in task["error_msg"]
        assert task["consumed_credit"] == 0
        assert await api.balance() == {"balance": 100, "frozen": 0}
        assert await janitor.sweep() == (0, 0)  # once only


async def test_an_output_past_retention_is_deleted_and_the_task_says_so(
    database_url: str,
) -> None:
    settings = settings_for(database_url, output_retention_s=0.2)
    async with running_api(settings) as api:
        task = await api.wait((await api.submit(prompt="x")).json()["data"]["task_id"])
        link = task["output"]["generated_image"]
        assert (await api.client.get(link)).status_code == 200
        stored = await api.runtime.store.tasks.get(task["task_id"])
        assert stored is not None
        assert stored.output_key is not None
        await asyncio.sleep(0.3)
        assert await api.runtime.janitor().sweep() == (0, 1)
        after = await api.task(task["task_id"])
        assert after["status"] == "success"
        assert after["output"] == {}
        assert after["output_deleted_at"] >= int(task["create_time"])
        assert "retention" in after["output_note"]
        with pytest.raises(ObjectNotFound):
            await api.runtime.objects.get(stored.output_key)
        gone = await api.client.get(link)
        assert gone.status_code == 403
        assert gone.json()["code"] == 1005
