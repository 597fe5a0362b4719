"""The janitor: expiry of tasks that wait too long, deletion of outputs past their retention,
and forgetting old webhook delivery logs, old task events and STS uploads that never arrived."""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlalchemy import insert, select, update

from apptools import engine_of, png, running_api, settings_for
from easel.services.janitor import ABANDONED_AFTER_S
from easel.storage.objects import ObjectNotFound
from easel.store.records import StoredFile
from easel.store.tables import events as events_table
from easel.store.tables import files as files_table
from easel.store.tables import webhook_attempts, webhook_deliveries
from easel.store.webhooks import WebhookStore


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


async def test_delivery_logs_past_retention_are_forgotten_and_pending_ones_kept(
    database_url: str,
) -> None:
    settings = settings_for(database_url, delivery_log_retention_s=3600)
    async with running_api(settings, run_worker=False) as api:
        caller = await api.runtime.store.accounts.authenticate(api.key)
        hook = await WebhookStore(engine_of(api.runtime.store)).create(
            caller,
            url="https://hooks.example/x",
            event_types=["task.success"],
            secret="whsec_x",
            base_url="http://testserver/",
        )
        now = time.time()
        rows = {  # id: (status, age in seconds)
            "msg_old_delivered": ("delivered", 7200),
            "msg_old_dead": ("dead", 7200),
            "msg_old_pending": ("pending", 7200),  # still owed: never forgotten
            "msg_new_delivered": ("delivered", 60),
        }
        async with engine_of(api.runtime.store).begin() as conn:
            for number, (delivery_id, (status, age)) in enumerate(rows.items()):
                await conn.execute(
                    insert(webhook_deliveries).values(
                        id=delivery_id,
                        webhook_id=hook.id,
                        task_id=f"task-{number}",
                        event_type="task.success",
                        progress=100,
                        status=status,
                        attempts=1,
                        window_attempts=1,
                        next_attempt_at=now + 3600 if status == "pending" else None,
                        created_at=now - age,
                    )
                )
                await conn.execute(
                    insert(webhook_attempts).values(
                        delivery_id=delivery_id,
                        number=1,
                        status_code=200,
                        latency_ms=5.0,
                        created_at=now - age,
                    )
                )
        janitor = api.runtime.janitor()
        await janitor.prune()  # (the app's own janitor may get there first: check the state)
        assert await janitor.prune() == (0, 0, 0)
        async with engine_of(api.runtime.store).connect() as conn:
            left = set(await conn.scalars(select(webhook_deliveries.c.id)))
            logged = set(await conn.scalars(select(webhook_attempts.c.delivery_id)))
        assert left == logged == {"msg_old_pending", "msg_new_delivered"}


async def test_sts_uploads_that_never_arrived_are_forgotten(database_url: str) -> None:
    settings = settings_for(database_url, sts_duration_s=900)
    async with running_api(settings, run_worker=False) as api:
        caller = await api.runtime.store.accounts.authenticate(api.key)
        files = api.runtime.store.files

        async def announce(token: str, age_s: float) -> StoredFile:
            stored = StoredFile(token, caller.account_id, f"uploads/x/{token}.png", "png", 0, 0, 0)
            await files.add(stored)
            async with engine_of(api.runtime.store).begin() as conn:
                await conn.execute(
                    update(files_table)
                    .where(files_table.c.token == token)
                    .values(created_at=time.time() - age_s)
                )
            return stored

        await announce("abandoned", 900 + ABANDONED_AFTER_S + 60)
        arrived = await announce("arrived-late", 900 + ABANDONED_AFTER_S + 60)
        await api.runtime.objects.put(arrived.key, png())
        await announce("in-flight", 300)  # its credentials may still be used
        janitor = api.runtime.janitor()
        await janitor.prune()  # (the app's own janitor may get there first: check the state)
        assert await files.find(caller.account_id, token="abandoned") is None
        assert await files.find(caller.account_id, token="arrived-late") is not None
        assert await files.find(caller.account_id, token="in-flight") is not None
        assert await janitor.prune() == (0, 0, 0)


async def test_events_past_retention_are_forgotten_and_numbering_goes_on(
    database_url: str,
) -> None:
    settings = settings_for(database_url, event_log_retention_s=3600)
    async with running_api(settings) as api:
        caller = await api.runtime.store.accounts.authenticate(api.key)
        first = await api.wait((await api.submit(prompt="old")).json()["data"]["task_id"])
        old = await api.runtime.store.events.after(caller.account_id, caller.key_id, 0)
        async with engine_of(api.runtime.store).begin() as conn:  # make them look 2 h old
            await conn.execute(
                update(events_table)
                .where(events_table.c.task_id == first["task_id"])
                .values(created_at=time.time() - 7200)
            )
        second = await api.wait((await api.submit(prompt="new")).json()["data"]["task_id"])
        janitor = api.runtime.janitor()
        await janitor.prune()  # (the app's own janitor may get there first: check the state)
        left = await api.runtime.store.events.after(caller.account_id, caller.key_id, 0)
        assert {e.task_id for e in left} == {second["task_id"]}
        assert min(e.seq for e in left) == max(e.seq for e in old) + 1  # no renumbering
        assert await janitor.prune() == (0, 0, 0)
