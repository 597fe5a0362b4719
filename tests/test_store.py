"""The SQL store's own: migrations match the models, a poll is one statement. What every
store does alike is the store contract (tests/test_store_contract*.py)."""

from __future__ import annotations

import uuid

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, event

from easel.domain.tasks import AttemptOutcome
from easel.store import open_store
from easel.store.records import NewTask
from easel.store.tables import metadata


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


async def test_a_finished_tasks_view_is_remembered_until_its_output_is_deleted(
    database_url: str,
) -> None:
    """Polls of a finished task after the first ask the database nothing; an unfinished
    task is read every time; another key is still told there is no such task; deleting the
    output at retention shows at once in this process."""
    store = await open_store(database_url)
    try:
        caller = await store.accounts.authenticate(await store.accounts.create_key("p", 50))
        task_id = await store.tasks.submit(caller, new_task(), max_unfinished=5, retry_after_s=1)
        statements: list[str] = []

        def count(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
            statements.append(statement)

        event.listen(store.engine.sync_engine, "before_cursor_execute", count)
        try:
            for _ in range(2):
                queued = await store.tasks.view(task_id, caller.key_id)
                assert queued is not None and queued[0].status.value == "queued"
            read_while_queued = len(statements)
            assert read_while_queued >= 2

            task = await store.queue.claim("w", ["flux.1_kontext_pro"], 30)
            assert task is not None
            assert await store.queue.complete(task, "outputs/x.png", "fast")
            statements.clear()
            first = await store.tasks.view(task_id, caller.key_id)
            assert first is not None and first[0].output_key == "outputs/x.png"
            read_once = len(statements)
            assert read_once >= 1
            for _ in range(3):
                again = await store.tasks.view(task_id, caller.key_id)
                assert again is not None and again[0].output_key == "outputs/x.png"
                assert await store.tasks.view(task_id) is not None  # the janitor's, no key
            assert len(statements) == read_once
            assert await store.tasks.view(task_id, "another key") is None
            assert len(statements) > read_once  # asked the database, which said no

            await store.tasks.mark_output_deleted(task_id)
            deleted = await store.tasks.view(task_id, caller.key_id)
            assert deleted is not None
            assert deleted[0].output_key is None and deleted[0].output_deleted_at is not None
        finally:
            event.remove(store.engine.sync_engine, "before_cursor_execute", count)
    finally:
        await store.close()
