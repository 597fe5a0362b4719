"""PostgreSQL LISTEN/NOTIFY: an idle worker wakes at once when a task is queued anywhere."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from apptools import Api, running_api, settings_for
from conftest import reset_schema


@pytest.fixture
async def postgres_url(postgres_database: str) -> str:
    await reset_schema(postgres_database)
    return postgres_database


@pytest.fixture
async def slow_polling_api(postgres_url: str) -> AsyncIterator[Api]:
    """A worker that would poll only every 30 s."""
    async with running_api(settings_for(postgres_url, poll_interval_s=30)) as api:
        yield api


async def test_a_task_queued_by_another_replica_wakes_an_idle_worker(
    slow_polling_api: Api, postgres_url: str
) -> None:
    await asyncio.sleep(1.5)  # the worker has started listening and is idle
    # Another API replica: its own app, no worker, the same database.
    async with running_api(settings_for(postgres_url), run_worker=False) as replica:
        started = time.monotonic()
        task_id = (await replica.submit(prompt="wake up")).json()["data"]["task_id"]
        task = await replica.wait(task_id, timeout_s=10)
        assert task["status"] == "success"
        assert time.monotonic() - started < 5  # far below the 30 s poll
