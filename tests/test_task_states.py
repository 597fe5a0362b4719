"""The task state machine: the one table of moves (domain.tasks.TRANSITIONS), and the SQL
store's statements, built from it, refusing a move it does not hold."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from easel.domain.tasks import FINAL, TRANSITIONS, Status, Task, can_move, sources
from easel.store import SqlStore, open_store
from easel.store.db import transaction
from easel.store.lifecycle import end_with_refund, queued
from easel.store.records import NewTask

MODEL = "flux.1_kontext_pro"

# Every move a task may make, written out: the table the code must match.
ALLOWED = {
    (Status.QUEUED, Status.RUNNING),
    (Status.QUEUED, Status.EXPIRED),
    (Status.QUEUED, Status.CANCELLED),
    (Status.QUEUED, Status.FAILED),
    (Status.RUNNING, Status.QUEUED),
    (Status.RUNNING, Status.SUCCESS),
    (Status.RUNNING, Status.FAILED),
    (Status.RUNNING, Status.BANNED),
    (Status.RUNNING, Status.CANCELLED),
}


@pytest.mark.parametrize("current", list(Status))
@pytest.mark.parametrize("target", list(Status))
def test_the_table_of_moves(current: Status, target: Status) -> None:
    assert can_move(current, target) is ((current, target) in ALLOWED)


def test_final_states_are_final_and_sources_invert_the_table() -> None:
    assert all(not TRANSITIONS.get(status) for status in FINAL)
    for target in Status:
        assert sources(target) == {c for c, t in ALLOWED if t == target}
    assert sources(Status.UNKNOWN) == frozenset()  # nothing ever moves a task there


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[SqlStore]:
    store = await open_store(database_url)
    try:
        yield store
    finally:
        await store.close()


async def submitted(store: SqlStore) -> tuple[str, str]:
    """A key with 100 credits and one task of 5 it submitted: (key, task id)."""
    key = await store.accounts.create_key("s", 100)
    caller = await store.accounts.authenticate(key)
    task_id = str(uuid.uuid4())
    new = NewTask(task_id, "generate_image", MODEL, {"prompt": "x"}, "x", (), 5)
    await store.tasks.submit(caller, new, max_unfinished=10, retry_after_s=1)
    return key, task_id


async def current(store: SqlStore, task_id: str) -> Task:
    task = await store.tasks.get(task_id)
    assert task is not None
    return task


async def test_the_statements_refuse_a_move_the_table_does_not_hold(store: SqlStore) -> None:
    """Even without the worker's fence, the SQL that ends a task will not move a success
    (the contract tests show the fenced moves on every store)."""
    key, task_id = await submitted(store)
    claimed = await store.queue.claim("w", [MODEL], 30)
    assert claimed is not None
    assert await store.queue.complete(claimed, "outputs/x.png", "dry")
    async with transaction(store.engine) as conn:
        assert not await end_with_refund(
            conn, queued(claimed), claimed, Status.CANCELLED, None, None
        )
    assert (await current(store, task_id)).status is Status.SUCCESS
    balance, _ = await store.accounts.balance_of_key(key)
    assert (balance.balance, balance.frozen) == (95, 0)
