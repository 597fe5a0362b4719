"""The store: migrations match the models, credits hold under concurrency."""

from __future__ import annotations

import asyncio
import uuid

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, event, func, select

from easel.domain.errors import NotEnoughCredit, TooManyUnfinishedTasks
from easel.domain.tasks import AttemptOutcome
from easel.store import open_store
from easel.store.records import NewTask
from easel.store.tables import metadata, tasks


async def test_migrations_create_exactly_the_schema_of_the_models(database_url: str) -> None:
    store = await open_store(database_url)

    def diff(connection: Connection) -> list[object]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))

    try:
        async with store.engine.connect() as conn:
            assert await conn.run_sync(diff) == []
    finally:
        await store.close()


async def test_migrating_twice_is_harmless(database_url: str) -> None:
    for _ in range(2):
        store = await open_store(database_url)
        await store.close()


def new_task(price: int = 5) -> NewTask:
    return NewTask(
        str(uuid.uuid4()), "generate_image", "flux.1_kontext_pro", {"prompt": "x"}, "x", (), price
    )


async def test_concurrent_submits_never_overdraw_or_exceed_the_limit(database_url: str) -> None:
    store = await open_store(database_url)
    try:
        key = await store.accounts.create_key("racer", 37)  # room for 7 tasks of 5
        caller = await store.accounts.authenticate(key)

        async def submit() -> str:
            try:
                await store.tasks.submit(caller, new_task(), max_unfinished=10, retry_after_s=1)
            except NotEnoughCredit:
                return "poor"
            except TooManyUnfinishedTasks:
                return "limited"
            return "ok"

        outcomes = await asyncio.gather(*(submit() for _ in range(20)))
        assert outcomes.count("ok") == 7
        assert outcomes.count("poor") == 13
        balance = await store.accounts.balance(caller.account_id)
        assert (balance.balance, balance.frozen) == (2, 35)
        assert await store.accounts.ledger_sums(caller.account_id) == balance
        async with store.engine.connect() as conn:
            assert await conn.scalar(select(func.count()).select_from(tasks)) == 7
    finally:
        await store.close()


async def test_two_workers_never_claim_the_same_task(database_url: str) -> None:
    store = await open_store(database_url)
    try:
        caller = await store.accounts.authenticate(await store.accounts.create_key("c", 500))
        for _ in range(30):
            await store.tasks.submit(caller, new_task(), max_unfinished=100, retry_after_s=1)
        claims = await asyncio.gather(
            *(store.queue.claim(f"w{i}", ["flux.1_kontext_pro"], 30) for i in range(40))
        )
        ids = [task.id for task in claims if task is not None]
        assert len(ids) == 30
        assert len(set(ids)) == 30
    finally:
        await store.close()


async def test_concurrent_submits_respect_the_unfinished_task_limit(database_url: str) -> None:
    store = await open_store(database_url)
    try:
        caller = await store.accounts.authenticate(await store.accounts.create_key("r", 10_000))

        async def submit() -> bool:
            try:
                await store.tasks.submit(caller, new_task(), max_unfinished=5, retry_after_s=1)
            except TooManyUnfinishedTasks:
                return False
            return True

        outcomes = await asyncio.gather(*(submit() for _ in range(25)))
        assert outcomes.count(True) == 5
        balance = await store.accounts.balance(caller.account_id)
        assert (balance.balance, balance.frozen) == (10_000 - 25, 25)
    finally:
        await store.close()


async def test_a_key_with_fewer_running_tasks_goes_first(database_url: str) -> None:
    store = await open_store(database_url)
    try:
        busy = await store.accounts.authenticate(await store.accounts.create_key("busy", 500))
        calm = await store.accounts.authenticate(await store.accounts.create_key("calm", 500))
        busy_ids = [
            await store.tasks.submit(busy, new_task(), max_unfinished=10, retry_after_s=1)
            for _ in range(3)
        ]
        models = ["flux.1_kontext_pro"]
        first = await store.queue.claim("w", models, 30)
        assert first is not None
        assert first.id == busy_ids[0]
        calm_id = await store.tasks.submit(calm, new_task(), max_unfinished=10, retry_after_s=1)
        positions = {}
        for task_id in [*busy_ids[1:], calm_id]:
            task = await store.tasks.get(task_id)
            assert task is not None
            positions[task_id] = await store.tasks.position(task)
        assert positions == {calm_id: 0, busy_ids[1]: 1, busy_ids[2]: 2}
        claimed = [await store.queue.claim("w", models, 30) for _ in range(3)]
        assert [t.id for t in claimed if t is not None] == [calm_id, busy_ids[1], busy_ids[2]]
    finally:
        await store.close()


async def test_a_poll_is_one_statement_with_the_attempts_in_order(database_url: str) -> None:
    """Polling is the hot path: the task and its attempts come back in one statement, with
    no transaction around it (on SQLite a BEGIN would show here as a statement too)."""
    store = await open_store(database_url)
    try:
        caller = await store.accounts.authenticate(await store.accounts.create_key("p", 50))
        task_id = await store.tasks.submit(caller, new_task(), max_unfinished=5, retry_after_s=1)
        task = await store.queue.claim("w", ["flux.1_kontext_pro"], 30)
        assert task is not None
        first = await store.queue.start_attempt(task, "fast")
        await store.queue.end_attempt(first, AttemptOutcome.RETRYABLE, "busy")
        second = await store.queue.start_attempt(task, "slow")
        await store.queue.end_attempt(second, AttemptOutcome.SUCCESS)
        assert await store.queue.complete(task, "outputs/x.png", "slow")

        statements: list[str] = []

        def count(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
            statements.append(statement)

        event.listen(store.engine.sync_engine, "before_cursor_execute", count)
        try:
            found = await store.tasks.view(task_id, caller.key_id)
            missing = await store.tasks.view(task_id, "another key")
        finally:
            event.remove(store.engine.sync_engine, "before_cursor_execute", count)
        assert found is not None and missing is None
        viewed, outlook = found
        assert viewed.output_key == "outputs/x.png"
        assert [(a.backend, a.outcome, a.error) for a in outlook.attempts] == [
            ("fast", "retryable", "busy"),
            ("slow", "success", None),
        ]
        assert len(statements) == 2, statements  # one per view
    finally:
        await store.close()


async def test_a_poll_of_a_task_without_attempts_shows_none(database_url: str) -> None:
    store = await open_store(database_url)
    try:
        caller = await store.accounts.authenticate(await store.accounts.create_key("q", 50))
        task_id = await store.tasks.submit(caller, new_task(), max_unfinished=5, retry_after_s=1)
        found = await store.tasks.view(task_id, caller.key_id)
        assert found is not None
        task, outlook = found
        assert (task.status.value, outlook.attempts, outlook.position) == ("queued", [], 0)
    finally:
        await store.close()
